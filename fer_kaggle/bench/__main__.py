"""`python -m fer_kaggle.bench ...` is `fer-kaggle bench ...`."""
from fer_kaggle.cli import run_program

if __name__ == "__main__":
    run_program("bench")
