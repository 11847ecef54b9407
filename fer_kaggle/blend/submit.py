"""The `id,label` CSV the user uploads, validated before it is written."""
import os

import numpy as np
import pandas as pd

from fer_kaggle.core.atomic import require_folder, save_csv
from fer_kaggle.data.competition import NUM_CLASSES
from fer_kaggle.core.errors import FerKaggleError


def check_out_path(path):
    """Refuse an output path that cannot be written, before any work starts."""
    if path.is_dir():
        raise FerKaggleError(f"{path}: is a folder; give the path of the CSV file to write")
    require_folder(path)
    if not os.access(path.parent, os.W_OK):
        raise FerKaggleError(f"{path}: the folder {path.parent} is not writable")
    if path.is_file():  # e.g. `run.sh fer2013.csv test.csv` would otherwise overwrite the user's test.csv
        with open(path, "rb") as f:
            first = f.readline(100).strip()
        if first not in (b"id,label", b""):
            shown = first.decode("utf-8", "replace")[:40]
            raise FerKaggleError(f"{path}: exists and is not a submission (its first line is '{shown}'); "
                                 f"refusing to overwrite it; the last path is where the submission goes (TRAIN TEST OUT or DATA OUT)")


def submission_frame(ids, labels):
    """One row per test id, in the test file's order, integer labels 0-6.

    Ids are integers (CSV inputs) or strings (image paths relative to the test folder).
    """
    ids, labels = np.asarray(ids), np.asarray(labels)
    if ids.shape != labels.shape or ids.ndim != 1:
        raise ValueError(f"submission has {ids.shape} ids but {labels.shape} labels")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("submission ids are not unique")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"submission labels must be integers 0-{NUM_CLASSES - 1}")
    ids = ids.astype(np.int64) if np.issubdtype(ids.dtype, np.integer) else ids.astype(str)
    return pd.DataFrame({"id": ids, "label": labels.astype(np.int64)})


def write_submission(path, ids, labels):
    save_csv(path, submission_frame(ids, labels))


def read_submission(path):
    """Read back an `id,label` file (for checks); raises FerKaggleError if it is not one."""
    frame = pd.read_csv(path)
    if list(frame.columns) != ["id", "label"]:
        raise FerKaggleError(f"{path}: columns {list(frame.columns)}, expected ['id', 'label']")
    return submission_frame(frame["id"].to_numpy(), frame["label"].to_numpy())
