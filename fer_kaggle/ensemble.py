"""`python -m fer_kaggle.ensemble ...` is `fer-kaggle ensemble ...` (the code: fer_kaggle/blend/ensemble.py)."""
from fer_kaggle.cli import run_program

if __name__ == "__main__":
    run_program("ensemble")
