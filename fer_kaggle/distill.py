"""`python -m fer_kaggle.distill ...` is `fer-kaggle distill ...` (the code: fer_kaggle/student/distill.py)."""
from fer_kaggle.cli import run_program

if __name__ == "__main__":
    run_program("distill")
