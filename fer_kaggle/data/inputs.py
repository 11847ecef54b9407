"""Every form FER2013 comes in -> the run's train and test arrays, cached.

    bash run.sh TRAIN TEST OUT   train and test CSVs (competition `label,feature`/`id,feature` or
                                 Kaggle `emotion,pixels`/`pixels`), or two image folders
    bash run.sh DATA OUT         one fer2013.csv / icml_face_data.csv (Usage picks the rows),
                                 or one folder holding train/ and test/ image folders

The form is recognised from each CSV's header or the folder's layout (`--format` insists on one).
`resolve` looks only at headers and folder names, so a wrong path stops the run before any work;
`load` parses, and caches the arrays in `<workdir>/cache/` under each input's sha256 (runfolder.py).

Test labels (fer2013.csv's PublicTest/PrivateTest rows, a test folder of class folders) travel
in `Inputs.test_labels`; only `heldout.py` reads them, once, after the submission is written.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_kaggle.data import competition as data, folders
from fer_kaggle.core import runfolder
from fer_kaggle.core.errors import DamagedFile, FerKaggleError

FORMATS = ("competition", "kaggle", "fer2013", "icml", "folders")
DEMO_DATA = Path(__file__).parent / "demo_data"  # the bundled sample: 2,400 train and 400 test rows
DEMO_TRAIN, DEMO_TEST = DEMO_DATA / "train.csv.xz", DEMO_DATA / "test.csv.xz"


def demo_head(name, rows, path):
    """Write the first `rows` rows of the bundled sample's `name` (train.csv.xz or test.csv.xz) to `path`, a
    plain CSV: the small real inputs of the tests and of `bench chaos`."""
    import lzma
    path.write_text("\n".join(lzma.open(DEMO_DATA / name, "rt").read().splitlines()[:rows + 1]) + "\n")
    return path


@dataclass(frozen=True)
class Source:
    """Where a run's data comes from, checked but not yet parsed."""
    kind: str        # "csv" (a train and a test file), "combined" (one file with Usage) or "folders"
    train: Path
    test: Path       # the same file as `train` for "combined"
    option: str = None  # --format, if given

    def describe(self):
        if self.kind == "combined":
            return f"{self.train} (Training rows to train on, PublicTest and PrivateTest rows to predict)"
        return f"{self.train} and {self.test}"


@dataclass
class Inputs:
    train_images: np.ndarray   # uint8 (N, 48, 48)
    train_labels: np.ndarray   # int64 0-6
    test_ids: np.ndarray       # int64, or str (image paths relative to the test folder)
    test_images: np.ndarray
    test_labels: np.ndarray    # None unless the input carries them: final held-out accuracy only
    test_usage: np.ndarray     # the held-out split of each test row (PublicTest, PrivateTest, test)
    train_fingerprint: str     # ties the run folder's folds to this train data


ONE_PATH_FORMS = ("with two paths (DATA OUT), DATA must be fer2013.csv, icml_face_data.csv or a folder holding "
                  "train/ and test/ image folders; for separate train and test files give TRAIN TEST OUT")


def _not_a_folder(path):
    return "is a file, not a folder" if path.exists() else "no such folder"


def resolve(paths, option=None):
    """A checked Source for the positional data paths (one: DATA, two: TRAIN TEST)."""
    if option not in (None, *FORMATS):
        raise FerKaggleError(f"--format {option}: choose one of {', '.join(FORMATS)}")
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return _resolve_one(paths[0], option)
    train, test = paths
    if option == "folders" or (option is None and train.is_dir()):
        if not train.is_dir():
            raise FerKaggleError(f"{train}: {_not_a_folder(train)}; --format folders needs two image folders")
        if not test.is_dir():
            raise FerKaggleError(f"{test}: {_not_a_folder(test)}; the train data {train} is an image folder, "
                                 f"so the test images must be a folder too")
        return Source("folders", train, test, option)
    if option in ("fer2013", "icml"):
        raise FerKaggleError(f"--format {option}: that form is one file; give it alone: bash run.sh "
                             f"{train.name} OUT")
    data.detect_form(train, "train", option)
    data.detect_form(test, "test", option)
    return Source("csv", train, test, option)


def _resolve_one(path, option):
    if path.is_dir() and option in (None, "folders"):
        split = folders.find_split_folders(path)
        if split is None:
            raise FerKaggleError(f"{path}: a data folder needs train/ and test/ subfolders "
                                 f"(train/<class>/*.png and test/*.png); found "
                                 f"{', '.join(sorted(p.name + '/' for p in path.iterdir() if p.is_dir())) or 'none'}")
        return Source("folders", *split, option)
    if option in ("competition", "kaggle", "folders"):
        raise FerKaggleError(f"{path}: --format {option}: {ONE_PATH_FORMS}")
    form = data.detect_form(path, "any", option)
    if form.role != "both":
        raise FerKaggleError(f"{path}: a {form.name} file ('{form.header()}'); {ONE_PATH_FORMS}")
    return Source("combined", path, path, option)


# ---------------------------------------------------------------- parse, with a cache

def load(source, cache_dir):
    """Parse `source` (or read its cache): returns (Inputs, log lines)."""
    fingerprint = folders.fingerprint if source.kind == "folders" else data.fingerprint
    train_fp = fingerprint(source.train)
    test_fp = train_fp if source.kind == "combined" else fingerprint(source.test)  # one file: hashed once
    train_cache = runfolder.cache_path(cache_dir, "train", train_fp)
    test_cache = runfolder.cache_path(cache_dir, "test", test_fp)
    damaged = []
    train = _cached(train_cache, runfolder.TRAIN_ARRAYS, damaged)
    test = _cached(test_cache, runfolder.TEST_ARRAYS, damaged)
    if train is not None and test is not None:
        log = [f"read {source.describe()} from the cache ({cache_dir})"]
    else:
        train, test, log = _parse(source)
        log = damaged + log
        runfolder.save_cache(train_cache, train)
        runfolder.save_cache(test_cache, test)
    return Inputs(train["images"], train["labels"], test["ids"], test["images"], test["labels"], test["usage"],
                  train_fingerprint=train_fp), log


def _cached(path, names, damaged):
    """The cached arrays, or None; a damaged cache is noted in `damaged` and parsed again."""
    try:
        return runfolder.load_cache(path, names)
    except DamagedFile as exc:
        damaged.append(f"{path} is damaged ({exc.problem}): parsing the input again")
        return None


def _parse(source):
    """({images, labels}, {ids, images, labels, usage: None where the input has none}, log lines)."""
    if source.kind == "combined":
        train_x, train_y, ids, test_x, test_y, usage = data.read_combined(source.train, source.option)
        log = [f"{source.train}: {len(train_y)} Training rows; {np.sum(usage == 'PublicTest')} PublicTest and "
               f"{np.sum(usage == 'PrivateTest')} PrivateTest rows to predict (their labels are used "
               f"only for the final held-out accuracy, printed once at the end)"]
        return _named(train_x, train_y, ids, test_x, test_y, usage) + (log,)
    if source.kind == "folders":
        train_x, train_y, train_log = folders.read_train_folder(source.train)
        ids, test_x, test_y, test_log = folders.read_test_folder(source.test)
        usage = None if test_y is None else np.full(len(ids), "test")
        return _named(train_x, train_y, ids, test_x, test_y, usage) + ([train_log, test_log],)
    train_x, train_y = data.read_train(source.train, source.option)
    ids, test_x = data.read_test(source.test, source.option)
    return _named(train_x, train_y, ids, test_x) + ([],)


def _named(train_x, train_y, ids, test_x, test_y=None, usage=None):
    return ({"images": train_x, "labels": train_y},
            {"ids": ids, "images": test_x, "labels": test_y, "usage": usage})
