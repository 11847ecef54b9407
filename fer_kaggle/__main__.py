"""`python -m fer_kaggle ...` (what run.sh runs) is `fer-kaggle ...`."""
from fer_kaggle.cli import run_program

if __name__ == "__main__":  # guarded: a spawned unit worker (run/executor.py's LocalPool) imports this module too
    run_program()
