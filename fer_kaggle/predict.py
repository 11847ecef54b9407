"""`python -m fer_kaggle.predict ...` is `fer-kaggle predict ...` (the code: fer_kaggle/serve/predict.py)."""
from fer_kaggle.cli import run_program

if __name__ == "__main__":
    run_program("predict")
