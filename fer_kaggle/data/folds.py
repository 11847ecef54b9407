"""Stratified k-fold assignment, made once per train file and reused by every backbone.

Reads  the train images and labels.
Writes `<workdir>/folds.csv` (row, label, group, fold) and `<workdir>/folds.json`
       (seed, folds, the train file's fingerprint, duplicate counts).

FER2013 holds exact duplicate images; rows with identical pixels share a group and
StratifiedGroupKFold keeps a group in one fold, so no validation face is also trained on.
"""
import hashlib

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from fer_kaggle.core.atomic import save_csv, write_json
from fer_kaggle.core.errors import DamagedFile, FerKaggleError
from fer_kaggle.core.runfolder import RunFolder


def image_digests(images):
    """A 16-byte digest per image: equal exactly when the pixels are byte for byte equal."""
    return [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]


def duplicate_groups(images):
    """Group id per row: rows with byte-identical pixels share one id (first occurrence order)."""
    return pd.factorize(pd.Series(image_digests(images)))[0]


def assign_folds(labels, groups, n_folds, seed):
    """Fold index per row, stratified by label, each duplicate group inside one fold."""
    folds = np.full(len(labels), -1, dtype=np.int64)
    if len(np.unique(groups)) < n_folds:
        raise FerKaggleError(f"{n_folds} folds need at least {n_folds} distinct images; "
                             f"the train file has {len(np.unique(groups))}")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[valid] = fold
    return folds


def make_or_load_folds(workdir, images, labels, train_fingerprint, n_folds, seed):
    """Return the run's fold per row, creating `folds.csv` on the first call.

    A later call with another train file, fold count or seed is refused: mixing
    units trained on different splits would make the OOF accuracy meaningless.
    """
    folder = RunFolder(workdir)
    meta_path, csv_path = folder.folds_json, folder.folds_csv
    try:
        meta = folder.folds_meta(keys=("seed", "folds", "train_fingerprint"))
        if meta is not None:
            _check_same_run(workdir, meta, train_fingerprint, n_folds, seed)
            return folder.folds_table(len(labels))["fold"].to_numpy(), meta
    except DamagedFile as exc:
        _rebuild_or_stop(folder, exc)
    groups = duplicate_groups(images)
    folds = assign_folds(labels, groups, n_folds, seed)
    sizes = np.bincount(groups)
    meta = {
        "seed": seed,
        "folds": n_folds,
        "train_fingerprint": train_fingerprint,
        "rows": int(len(labels)),
        "duplicate_groups": int((sizes > 1).sum()),
        "rows_in_duplicate_groups": int(sizes[sizes > 1].sum()),
    }
    save_csv(csv_path, pd.DataFrame({"row": np.arange(len(labels)), "label": labels,
                                     "group": groups, "fold": folds}))
    write_json(meta_path, meta)  # written last: folds exist once this file does
    return folds, meta


def _rebuild_or_stop(folder, damage):
    """Damaged folds: made again where no unit depends on them yet; else the run stops, naming the file."""
    if folder.all_unit_dirs():
        raise FerKaggleError(
            f"{damage}: the {len(folder.all_unit_dirs())} units in {folder} were trained on its split, which "
            f"cannot be checked now; restore the file from a backup, or start again in another --workdir "
            f"(or delete {folder})") from None
    print(f"{damage.path} is damaged ({damage.problem}): making the folds again (no unit was trained on them yet)")


def _check_same_run(workdir, meta, train_fingerprint, n_folds, seed):
    start_over = f"use another --workdir, or delete {workdir} to start over"
    if meta["train_fingerprint"] != train_fingerprint:
        raise FerKaggleError(
            f"{workdir} holds a run on a different train file (fingerprint {meta['train_fingerprint'][:12]}, "
            f"this one is {train_fingerprint[:12]}); {start_over}")
    if (meta["folds"], meta["seed"]) != (n_folds, seed):
        raise FerKaggleError(
            f"{workdir} was split with --folds {meta['folds']} --seed {meta['seed']}, "
            f"not --folds {n_folds} --seed {seed}; {start_over}")
