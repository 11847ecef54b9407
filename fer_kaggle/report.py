"""`python -m fer_kaggle.report ...` is `fer-kaggle report ...` (the code: fer_kaggle/analysis/report.py)."""
from fer_kaggle.cli import run_program

if __name__ == "__main__":
    run_program("report")
