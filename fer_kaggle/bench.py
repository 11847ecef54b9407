"""Benchmarks that print figures (never timed tests).

    python -m fer_kaggle.bench parse TRAIN_CSV [--repeats 3]

parse: our reader against the obvious pandas + per-row `np.fromstring`, and the
cached load that a resumed run uses instead (with the bundled 400-row test file as its test).
"""
import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from . import inputs
from .data import read_train


def naive_read_train(path):
    """The obvious reader: pandas, then one np.fromstring per row."""
    frame = pd.read_csv(path)
    images = np.stack([np.fromstring(row, dtype=np.uint8, sep=" ") for row in frame["feature"]])
    return images.reshape(-1, 48, 48), frame["label"].to_numpy()


def _median_seconds(function, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), max(times), result


def bench_parse(path, repeats):
    rows = []
    naive = _median_seconds(lambda: naive_read_train(path), repeats)
    ours = _median_seconds(lambda: read_train(path), repeats)
    assert np.array_equal(naive[3][0], ours[3][0]) and np.array_equal(naive[3][1], ours[3][1])
    source = inputs.resolve([path, inputs.DEMO_TEST])
    with tempfile.TemporaryDirectory() as cache:
        inputs.load(source, cache)  # fills the cache
        cached = _median_seconds(lambda: inputs.load(source, cache), repeats)
    n_rows = len(ours[3][1])
    for name, (median, low, high, _) in (("pandas + per-row np.fromstring", naive),
                                         ("fer_kaggle.read_train", ours),
                                         ("inputs.load, cached (+ demo test)", cached)):
        rows.append((name, median, low, high, n_rows / median))
    print(f"parse {path} ({n_rows} rows), {repeats} runs each")
    print(f"{'reader':<34} {'median s':>9} {'min':>7} {'max':>7} {'rows/s':>9} {'vs naive':>9}")
    for name, median, low, high, rate in rows:
        print(f"{name:<34} {median:>9.2f} {low:>7.2f} {high:>7.2f} {rate:>9.0f} {naive[0] / median:>8.2f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fer_kaggle.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    parse = sub.add_parser("parse", help="CSV parsing speed")
    parse.add_argument("train", help="a label,feature train CSV (.csv, .gz or .xz)")
    parse.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    bench_parse(args.train, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
