"""Draw the bundled demo sample from the real FER2013 train file (the command that made train.csv.xz).

    python fer_kaggle/data/demo_data/draw.py ../shared/fer2013/train.csv.xz [--rows 2400] [--seed 2013]

A stratified sample: each class keeps its share of the full file (within a row), rows in the
file's own order, the file's columns untouched. test.csv.xz (400 rows of the real test file,
ids kept) is unchanged since the first release: the test file never changed.
"""
import argparse
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

HERE = Path(__file__).parent


def draw(train_csv, rows, seed):
    table = pd.read_csv(train_csv, dtype={"label": "int64", "feature": "string"})
    chosen, _ = train_test_split(table.index.to_numpy(), train_size=rows, stratify=table["label"],
                                 random_state=seed)
    return table.loc[sorted(chosen)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_csv", type=Path)
    parser.add_argument("--rows", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=2013)
    parser.add_argument("--out", type=Path, default=HERE / "train.csv.xz")
    args = parser.parse_args()
    sample = draw(args.train_csv, args.rows, args.seed)
    tmp = args.out.with_name(args.out.name + ".tmp-draw")
    sample.to_csv(tmp, index=False, compression={"method": "xz", "preset": 9})
    tmp.replace(args.out)
    counts = sample["label"].value_counts().sort_index().tolist()
    print(f"{args.out}: {len(sample)} rows drawn from {args.train_csv} (seed {args.seed}), per class {counts}")


if __name__ == "__main__":
    main()
