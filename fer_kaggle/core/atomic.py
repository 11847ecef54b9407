"""The run's files: written atomically, read back checked.

Writes: a kill at any moment leaves either the old file or the new one. Each writer writes
`<name>.tmp-<pid>` in the target's folder, flushes it, then `os.replace`s it over the target (atomic on
POSIX and Windows). A write the disk refuses is an OSError naming the target (errors.machine_fault).

Reads: every reader of a file the run wrote raises errors.DamagedFile when it does not read back as such a
file (truncated, emptied, garbage bytes, the wrong keys or shape), never a library's traceback. Its caller
decides what to do: train a unit again, parse again, or stop with the file's name and what to do.
"""
import contextlib
import errno
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fer_kaggle.core.errors import MACHINE_FAULTS, DamagedFile, FerKaggleError


def require_folder(path):
    """Stop before any work when the folder that `path` is to be written into does not exist."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FerKaggleError(f"{path}: the folder {path.parent} does not exist; create it first")


@contextlib.contextmanager
def atomic_path(path, keep_suffix=False):
    """Yield a temporary path beside `path`; move it over `path` only if the block succeeds.

    keep_suffix: the temporary name ends as `path` does (`clip.tmp-<pid>.mp4`), for writers that choose
    the format by the suffix (OpenCV's VideoWriter, matplotlib's savefig).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = (path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}") if keep_suffix
           else path.with_name(f"{path.name}.tmp-{os.getpid()}"))
    try:
        yield tmp
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _commit(tmp, path):
    """Flush the finished temporary file to the disk and move it over the target (one place for both, where
    the tests inject a full disk)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npy(path, array):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_npz(path, **arrays):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def save_torch(path, obj):
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's writer reports a refused write as a RuntimeError, not an OSError
            if "write" not in str(exc):
                raise
            full = shutil.disk_usage(tmp.parent).free < 2**20
            raise OSError(errno.ENOSPC if full else errno.EIO, str(exc), str(tmp)) from exc


def save_csv(path, frame):
    """Write a pandas DataFrame without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


# ---------------------------------------------------------------- reading back, checked

# what numpy, pandas, json and torch raise for a damaged file (an unreadable one: OSError, e.g. EIO)
_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError,
               RuntimeError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError)


@contextlib.contextmanager
def _reading(path, remedy):
    """Within the block, what a library raises for a damaged `path` becomes DamagedFile (a missing file stays
    FileNotFoundError: its caller knows whether that is normal)."""
    try:
        yield
    except (FileNotFoundError, DamagedFile):
        raise
    except _UNREADABLE as exc:
        raise _damaged(path, exc, remedy) from None


def read_json(path, keys=(), remedy=""):
    """A JSON object file, with `keys` in it."""
    with _reading(path, remedy):
        value = json.loads(Path(path).read_text())
    if not isinstance(value, dict):
        raise DamagedFile(path, f"a JSON {type(value).__name__}, not an object", remedy)
    _require(path, keys, value, remedy)
    return value


def load_npz(path, keys, remedy=""):
    """{key: array} of an .npz file holding `keys` (and whatever else it holds)."""
    with _reading(path, remedy), np.load(path, allow_pickle=False) as saved:
        _require(path, keys, saved.files, remedy)
        return {name: saved[name] for name in saved.files}


def read_csv(path, columns=(), remedy=""):
    """A CSV table with `columns`."""
    with _reading(path, remedy):
        frame = pd.read_csv(path)
    _require(path, columns, frame.columns, remedy)
    return frame


def load_torch(path, device="cpu", keys=(), remedy=""):
    """A torch checkpoint (tensors and plain containers only: weights_only) with `keys`."""
    with _reading(path, remedy):
        state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, dict):
        raise DamagedFile(path, f"holds a {type(state).__name__}, not a checkpoint", remedy)
    _require(path, keys, state, remedy)
    return state


def _require(path, keys, present, remedy):
    missing = [k for k in keys if k not in present]
    if missing:
        raise DamagedFile(path, f"no {', '.join(repr(k) for k in missing)} in it", remedy)


def _damaged(path, exc, remedy):
    """The DamagedFile of a read that failed; a machine's refusal (permission denied) stays an OSError."""
    if isinstance(exc, OSError) and exc.errno in MACHINE_FAULTS and exc.errno != errno.EIO:
        return exc
    return DamagedFile(path, _why(exc), remedy)


_REASONS = (("pickled", "not a NumPy archive"), ("Weights only load failed", "not a torch checkpoint"),
            ("central directory", "cut short"), ("not a zip file", "cut short or not an archive"),
            ("No data left", "empty"), ("No columns to parse", "empty"), ("codec can't decode", "not text"),
            ("Expecting value: line 1 column 1 (char 0)", "empty or not JSON"))


def _why(exc):
    """A library's error as a short reason."""
    if isinstance(exc, EOFError):
        return "empty or cut short"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return next((reason for pattern, reason in _REASONS if pattern.lower() in text.lower()), text[:100])
