"""`python -m fer_kaggle.export ...` is `fer-kaggle export ...` (the code: fer_kaggle/serve/export.py)."""
from fer_kaggle.cli import run_program

if __name__ == "__main__":
    run_program("export")
