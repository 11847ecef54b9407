"""The run folder: the one owner of every path in it, its units, its checkpoints and its parse cache.

This docstring is the layout's one description (docs/outputs.md points here):

    <workdir>/                         --workdir: folds/ by default, folds/demo/ for the demo
      run.lock                         held (flock) by the run that trains here; names its host and process
      .probe-*                         (ray_executor.py, for a moment) the check that every Ray node sees the folder
      run.json                         the latest run: its settings, models, ablations, pseudo-label table, when it
                                       finished
      plan.json                        (budget.py) a budgeted run's plan, each unit's epochs and refits, minutes spent
      folds.csv, folds.json            (folds.py) row, label, duplicate group, fold; the seed and train fingerprint
      cache/train-<fp>.npz, test-<fp>.npz   the parsed arrays, named (images, labels; ids, images, labels, usage)
      round0/<backbone>-<key>/fold<k>/ one unit (train.py writes it):
        config.json                    every setting, what the key stands for (key_settings), the normalisation
        train_pipeline.json, eval_pipeline.json   albumentations' own serialisation (A.load reads them)
        checkpoint.pt                  model, optimizer, scheduler, EMA after the last finished epoch
        history.csv                    per epoch: lr, train/valid loss and accuracy (valid: --monitor-rows), seconds
        oof.npz                        the held-out fold: rows, probs (TTA, probability average), probs_logit,
                                       probs_plain
        test.npz                       ids, probs, probs_logit, probs_plain
        metrics.json                   written last: the unit is finished once it exists
      round1/<backbone>-<key>/fold<k>/ a pseudo-labelling student, the same files
      round1/pseudo_labels-<key>.csv   (pseudo.py) every fold's pseudo-labels; fold k's students learned its rows
      ablation/<variant>/<backbone>-<key>/fold<k>/   (--ablation) no_normalize, no_augment, dnn
      shift.json                       (shift.py) train against test: statistics, copies, AUC, class shares
      ensemble.json                    (ensemble.py) per-model and blended OOF accuracy, the weights, the submission
      heldout_labels.npz, heldout.json (heldout.py) test labels an input carried, and their score
      student/<backbone>-<key>/fold<k>/   (distill.py) a student learning the kept ensemble's probabilities
      student/targets-<key>-fold<k>.npz  its teachers' probabilities (train rows outside fold k, test images)
      student.json                     (distill.py) the students: backbone, TTA, OOF accuracy beside the ensemble's

Everything here is written atomically and read back checked (atomic.py's readers): `unit_damage` says
what is wrong with a unit's files, `repair_units` removes the damaged units so the run trains them again.

A unit's folder name carries `key`: a short hash of everything that changes its weights or its saved
predictions (unit_key). A run with other settings trains new units beside the old ones, and changing
back reuses them; the run's ensemble blends exactly its own units (run.json), never a stale one.
"""
import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_kaggle.core.atomic import load_npz, load_torch, read_csv, read_json, save_npz, save_torch, write_json
from fer_kaggle.core.config import STUDENT, UNIT, fields_with
from fer_kaggle.core.errors import DamagedFile, FerKaggleError

HOME = Path(os.environ.get("FER_KAGGLE_HOME", "."))  # where folds/ and submissions/ go; run.sh sets the project root
RUN_FILE, LOCK_FILE, FOLDS_META = "run.json", "run.lock", "folds.json"
RERUN = "run run.sh again with the same options: it repairs what it can and says what it cannot"
# a unit's files (train.py writes them; see there for what each holds)
CONFIG_FILE, HISTORY_FILE, CHECKPOINT_FILE = "config.json", "history.csv", "checkpoint.pt"
TRAIN_PIPELINE_FILE, EVAL_PIPELINE_FILE = "train_pipeline.json", "eval_pipeline.json"
OOF_FILE, TEST_FILE = "oof.npz", "test.npz"
FINISHED_FILE = "metrics.json"  # a unit is finished once it exists (written last)

# What a unit's key holds, besides the backbone, its round and the data: every setting that changes the weights
# it learns or the probabilities it saves (config.py's roles say which).
KEY_FIELDS = fields_with(UNIT)
PSEUDO_KEY_FIELDS = fields_with(STUDENT)  # round 1 only: round 0 ignores them


def short_hash(payload):
    """8 hex digits of sha256 over a JSON-able value (keys sorted): names a unit's settings."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def arrays_fingerprint(*arrays):
    """16 hex digits of sha256 over arrays' bytes: names the data a unit learned from or predicted,
    whatever file form carried it (CSV, .xz, image folders) and whatever test labels came along."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def unit_settings(cfg, round_, augment_on, amp, data_fingerprints, teachers=None):
    """The settings a unit's key is made of (also saved in its config.json as "key_settings").

    `cfg` is the unit's config with per-backbone choices resolved (models.unit_config); `augment_on`
    and `amp` as resolved on the device ("device"/"host", "bf16"/"off"): where "auto" lands changes
    the augmentation's random draws and the arithmetic. Round 1 adds the pseudo-label settings and its
    teachers (round-0 model folders, each named by its own key), not the table itself: so a fold's students
    can start while other folds' teachers still train. Each student's config.json also records a hash of
    the rows it learned from ("pseudo_rows"), checked before it is handed back (train._check_config).
    """
    settings = {name: getattr(cfg, name) for name in KEY_FIELDS}
    settings.update(augment_on=augment_on, amp=amp, data=list(data_fingerprints))
    if round_ == 1:
        settings.update({name: getattr(cfg, name) for name in PSEUDO_KEY_FIELDS}, teachers=list(teachers))
    return {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}


DISTILL_ROUND = 2  # distill.py's students: a folder of their own, outside the ensemble's rounds


def round_name(round_):
    """`round0`: the folder of a round's models (round 1: the pseudo-labelling students; distilled ones:
    `student`)."""
    return "student" if round_ == DISTILL_ROUND else f"round{round_}"


def fold_name(fold):
    """`fold3`: a unit's folder inside its model's folder."""
    return f"fold{fold}"


def model_folder(round_, backbone, key="", variant=""):
    """`round0/fer_vgg_cpu-1a2b3c4d`: a model's folder (all its folds); ablations: `ablation/<variant>/...`."""
    stage = f"ablation/{variant}" if variant else round_name(round_)
    return f"{stage}/{model_dir_name(backbone, key)}"


def model_dir_name(backbone, key=""):
    """`fer_vgg_cpu-1a2b3c4d`, or the bare backbone for a unit without a key (tests, bench recipe)."""
    return f"{backbone}-{key}" if key else backbone


def backbone_of(model_name):
    """The backbone of a model name such as `round0/fer_vgg_cpu-1a2b3c4d` (or `fer_vgg_cpu-1a2b3c4d`)."""
    last = model_name.rstrip("/").rsplit("/", 1)[-1]
    base, _, key = last.rpartition("-")
    return base if base and len(key) == 8 and all(c in "0123456789abcdef" for c in key) else last


def is_finished(unit_dir):
    return (Path(unit_dir) / FINISHED_FILE).exists()


# ---------------------------------------------------------------- checkpoints: one save, one load

def save_checkpoint(unit_dir, state):
    save_torch(Path(unit_dir) / CHECKPOINT_FILE, state)


def load_checkpoint(unit_dir, device="cpu"):
    """A unit's checkpoint, or None before its first epoch; a damaged one raises DamagedFile."""
    path = Path(unit_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    return load_torch(path, device, keys=("model",), remedy=RERUN)


# ---------------------------------------------------------------- a unit's files, checked on read

def read_metrics(unit_dir, remedy=""):
    """A finished unit's metrics.json."""
    return read_json(Path(unit_dir) / FINISHED_FILE, ("valid_acc", "epochs", "train_seconds"), remedy)


def load_probs(path, remedy=""):
    """A unit's oof.npz or test.npz: its rows (or ids) and (N, 7) probabilities in each TTA space."""
    index = "rows" if Path(path).name == OOF_FILE else "ids"
    arrays = load_npz(path, (index, "probs"), remedy=remedy)  # the other TTA spaces: not in older units
    n = len(arrays[index])
    for key in [k for k in ("probs", "probs_logit", "probs_plain") if k in arrays]:
        if arrays[key].shape != (n, 7):
            raise DamagedFile(path, f"'{key}' has shape {arrays[key].shape}, not ({n}, 7)", remedy)
        if not np.isfinite(arrays[key]).all():
            raise DamagedFile(path, f"'{key}' holds values that are not finite", remedy)
    return arrays


def unit_damage(unit_dir):
    """Why a unit's folder cannot be used as it is (its file and the problem), or None when it reads back.
    A finished unit: every file the run, the ensemble, the report and predict read; an unfinished one: its
    config and checkpoint."""
    unit_dir = Path(unit_dir)
    checks = [(CONFIG_FILE, lambda p: read_json(p, ("unit_key",)))]
    if is_finished(unit_dir):
        checks += [(FINISHED_FILE, lambda p: read_metrics(p.parent)), (OOF_FILE, load_probs), (TEST_FILE, load_probs),
                   (HISTORY_FILE, lambda p: read_csv(p, ("epoch", "valid_acc"))),
                   (CHECKPOINT_FILE, lambda p: load_checkpoint(p.parent))]
    else:
        checks.append((CHECKPOINT_FILE, lambda p: load_checkpoint(p.parent)))
    optional = (CONFIG_FILE, HISTORY_FILE, CHECKPOINT_FILE)  # may be absent (older units, a unit just begun)
    for name, read in checks:
        path = unit_dir / name
        if name in optional and not path.exists():
            continue
        try:
            read(path)
        except FileNotFoundError:
            return name, "missing"
        except DamagedFile as exc:
            return name, exc.problem
    return None


def repair_units(folder):
    """Check every unit of the run folder; a damaged one is removed, so the run trains it again."""
    for unit_dir in folder.all_unit_dirs():
        damage = unit_damage(unit_dir)
        if damage is not None:
            print(f"{unit_dir.relative_to(folder.path).as_posix()}: {damage[0]} is damaged ({damage[1]}): "
                  f"training it again")
            shutil.rmtree(unit_dir)


def predicting_weights(state):
    """The weights a unit predicts with: its EMA copy when it kept one (--ema), else the model's."""
    if "ema" not in state:
        return state["model"]
    return {key.removeprefix("module."): value for key, value in state["ema"].items()}  # timm ModelEmaV3


# ---------------------------------------------------------------- the parse cache, named arrays

TRAIN_ARRAYS = ("images", "labels")
TEST_ARRAYS = ("ids", "images", "labels", "usage")  # labels and usage only where the input carries them


def cache_path(cache_dir, kind, file_fingerprint):
    """Where the parsed arrays of a `kind` ("train" or "test") input with this fingerprint are cached."""
    return Path(cache_dir) / f"{kind}-{file_fingerprint[:16]}.npz"


def save_cache(path, arrays):
    """{name: array or None}: the arrays that are not None, under their names."""
    save_npz(path, **{name: array for name, array in arrays.items() if array is not None})


def load_cache(path, names):
    """{name: array or None} for `names`; None when there is no cache, or one from before named arrays.
    A damaged cache raises DamagedFile (the run parses its input again)."""
    path = Path(path)
    if not path.exists():
        return None
    arrays = load_npz(path, ())
    if names[0] not in arrays:
        return None  # an older cache (arr_0, arr_1, ...): parsed again
    if "images" in names and "images" not in arrays:
        raise DamagedFile(path, "no 'images' in it")
    uneven = [name for name in names if name in arrays and len(arrays[name]) != len(arrays[names[0]])]
    if uneven:
        raise DamagedFile(path, f"'{uneven[0]}' has not as many rows as '{names[0]}'")
    return {name: arrays.get(name) for name in names}


# ---------------------------------------------------------------- the run folder

@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self):
        return str(self.path)

    @property
    def cache_dir(self):
        return self.path / "cache"

    def unit_dir(self, unit_name):
        return self.path / unit_name

    def pseudo_table_path(self, key):
        return self.path / "round1" / f"pseudo_labels-{key}.csv"

    @property
    def folds_csv(self):
        return self.path / "folds.csv"

    @property
    def folds_json(self):
        return self.path / FOLDS_META

    @property
    def plan_json(self):
        """(budget.py) a budgeted run's plan, what it decided for each unit, and the minutes spent."""
        return self.path / "plan.json"

    @property
    def student_json(self):
        return self.path / "student.json"

    @property
    def ensemble_json(self):
        return self.path / "ensemble.json"

    @property
    def heldout_labels(self):
        return self.path / "heldout_labels.npz"

    @property
    def heldout_scores(self):
        return self.path / "heldout.json"

    def folds_meta(self, keys=("folds",)):
        """`folds.json` (seed, folds, train fingerprint, duplicate counts), or None before the folds; checked
        to hold `keys`."""
        path = self.path / FOLDS_META
        return read_json(path, keys) if path.exists() else None

    def folds_table(self, rows):
        """folds.csv (row, label, group, fold per train row), checked to hold `rows` rows."""
        table = read_csv(self.folds_csv, ("row", "label", "fold"))
        if len(table) != rows or table["fold"].isna().any():
            raise DamagedFile(self.folds_csv, f"{len(table)} rows, not the {rows} of the train file")
        return table

    def require_run(self):
        """The folds' metadata, or an error saying there is no run here (and where the demo's is)."""
        meta = self.folds_meta()
        if meta is None:
            demo = RunFolder(self.path / "demo")
            hint = f"; the demo run is in {demo}: pass --workdir {demo}" if demo.folds_meta() else ""
            raise FerKaggleError(f"{self}: no run here (no {FOLDS_META}); run run.sh first or pass --workdir{hint}")
        return meta

    def train_images(self):
        """The parsed train images of this run (from its cache)."""
        path = cache_path(self.cache_dir, "train", self.require_run()["train_fingerprint"])
        try:
            arrays = load_cache(path, TRAIN_ARRAYS)
        except DamagedFile as exc:
            raise DamagedFile(path, exc.problem, "run run.sh again to parse the input again") from None
        if arrays is None:
            raise FerKaggleError(f"{path}: the run's parsed train images are gone; run run.sh again to rebuild them")
        return arrays["images"]

    def test_images(self):
        """The test images of the latest parse here (the newest test cache), or None."""
        caches = sorted(self.cache_dir.glob("test-*.npz"), key=lambda p: p.stat().st_mtime)
        try:
            arrays = load_cache(caches[-1], TEST_ARRAYS) if caches else None
        except DamagedFile as exc:
            raise DamagedFile(caches[-1], exc.problem, "run run.sh again to parse the input again") from None
        return (arrays["images"], caches[-1]) if arrays is not None else None

    # ---- models and units

    def unit_dirs(self, model):
        """The fold folders of a model (e.g. round0/fer_vgg_cpu-1a2b3c4d), in fold order."""
        return sorted((self.path / model).glob("fold*/"), key=lambda p: int(p.name[4:]))

    def ablation_models(self):
        """{variant: model folder} of the ablations found here (an older run, without run.json's record)."""
        return {p.parent.name: f"ablation/{p.parent.name}/{p.name}" for p in sorted(self.path.glob("ablation/*/*/"))}

    def model_names(self):
        """Every model of the ensemble rounds here, as round<r>/<name>, sorted."""
        return sorted(f"{p.parent.name}/{p.name}" for p in self.path.glob("round*/*/") if p.is_dir())

    def all_unit_dirs(self):
        """Every unit folder here, finished or not (ensemble rounds and ablations)."""
        return sorted([*self.path.glob("round*/*/fold*/"), *self.path.glob("ablation/*/*/fold*/"),
                       *self.path.glob("student/*/fold*/")])

    def finished_units(self):
        """Names of every finished unit (ensemble rounds, ablations, distilled students), sorted."""
        found = [*self.path.glob(f"round*/*/fold*/{FINISHED_FILE}"),
                 *self.path.glob(f"ablation/*/*/fold*/{FINISHED_FILE}"),
                 *self.path.glob(f"student/*/fold*/{FINISHED_FILE}")]
        return sorted(p.parent.relative_to(self.path).as_posix() for p in found)

    # ---- the latest run's record

    def record(self):
        """run.json: the latest run's settings, models and ablations; None before a run wrote it."""
        path = self.path / RUN_FILE
        return read_json(path, remedy=RERUN) if path.exists() else None

    @property
    def shift_json(self):
        return self.path / "shift.json"

    def shift_figures(self):
        """shift.json: the train/test shift check's figures (inputs, and per fold after round 0), or None."""
        return read_json(self.shift_json, remedy=RERUN) if self.shift_json.exists() else None

    def write_shift(self, **fields):
        write_json(self.shift_json, {**(self._readable(self.shift_figures) or {}), **fields})

    def write_record(self, **fields):
        """Update run.json with `fields` (the pipeline writes it as a run goes: start, round 1, end)."""
        record = {**(self._readable(self.record) or {}), **fields}
        write_json(self.path / RUN_FILE, record)
        return record

    @staticmethod
    def _readable(read):
        """What `read` returns, or None (said in one line) when its file is damaged: the run writes it anew."""
        try:
            return read()
        except DamagedFile as exc:
            print(f"{exc.path} is damaged ({exc.problem}): writing it anew")
            return None

    def current_models(self):
        """The latest run's ensemble models (round<r>/<name>), or None when no run recorded them."""
        record = self.record()
        if record is None or "models" not in record:
            return None
        return list(record["models"])

    def finished_at(self):
        """When the latest run here finished (seconds since the epoch), or None."""
        record = self.record() or {}
        return record.get("finished")

    # ---- the lock

    @contextlib.contextmanager
    def lock(self):
        """Hold this folder for one run: a second run here is refused at once, naming the holder.

        An flock: the kernel releases it when its process ends, however it ends (kill -9 included), so a
        stopped run's lock is simply taken over. A run's own workers (units side by side) never take it.
        """
        import fcntl  # POSIX; run.sh runs on Linux and macOS (and WSL)
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_FILE, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise FerKaggleError(f"{self} is in use by a run still going ({holder}); wait for it to end, "
                                     f"or give this run another --workdir") from None
            handle.seek(0)
            previous = handle.read().strip()
            if previous:
                print(f"{self}: took over the lock of a run that stopped without releasing it ({previous})")
            handle.seek(0)
            handle.truncate()
            handle.write(f"host {socket.gethostname()}, process {os.getpid()}, since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            try:
                yield self
            finally:
                handle.seek(0)
                handle.truncate()  # empty: released cleanly (a later run has nothing to take over)
                handle.flush()
        finally:
            handle.close()  # closing releases the flock


def find_default_run(home):
    """(RunFolder, why) for commands that read a run when none is named: `folds` or `folds/demo`.

    Where both hold a run, the most recently finished one wins (an unfinished one counts as oldest).
    """
    home = Path(home)
    candidates = [RunFolder(home / "folds"), RunFolder(home / "folds" / "demo")]
    runs = [run for run in candidates if run.folds_meta() is not None]
    if not runs:
        return candidates[0], "the default"
    if len(runs) == 1:
        return runs[0], "the only run here"
    newest = max(runs, key=lambda run: run.finished_at() or 0.0)
    return newest, "the most recently finished of folds and folds/demo; --workdir chooses"
