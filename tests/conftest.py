"""Shared fixtures: real FER2013 rows from the bundled demo sample."""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_kaggle.data.competition import read_test, read_train
from fer_kaggle.data.inputs import DEMO_DATA

ROOT = Path(__file__).resolve().parents[1]

def _one_share_of_the_cores_per_worker():
    """Under pytest-xdist (setup.cfg: one worker per core), each worker and every process it starts keep to
    their own cores, and torch uses just those: two workers never fight over one core (on two cores, runs
    side by side on the same cores were 3.5 times slower per step: BENCHMARKS.md)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = cores[int(worker[2:]) % len(cores)::workers] or cores
    os.sched_setaffinity(0, share)
    torch.set_num_threads(len(share))


_one_share_of_the_cores_per_worker()

# The files that take longest, longest first (`pytest --durations=0`). Each file runs on one worker (setup.cfg's
# --dist loadfile), in this order (--no-loadscope-reorder): a long file started last would be the suite's tail
# while the other worker idles. The Ray file (a cluster on one core) alone takes most of a worker's time.
LONGEST_FIRST = ["test_ray.py", "test_run_sh.py", "test_faults.py", "test_executor.py", "test_budget.py",
                 "test_gpu_ready.py", "test_runfolder.py", "test_report.py", "test_train.py", "test_presets.py",
                 "test_export.py"]


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected

# Budgeted runs cache this machine's measured speeds (budget.cache_file): the suite's own cache, shared by
# its runs and subprocesses, never the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="fer_kaggle-tests-cache-")
# A run in seconds on the demo sample: one tiny backbone, two folds, one epoch, no pseudo-labelling round
TINY = ["--preset", "demo", "--backbones", "fer_vgg_tiny", "--folds", "2", "--epochs", "1", "--no-pseudo",
        "--device", "cpu"]
DEMO = DEMO_DATA  # the bundled sample: real rows of the competition files


@pytest.fixture(scope="session")
def demo_train():
    """(images, labels) of the bundled 2,400-row train sample."""
    return read_train(DEMO / "train.csv.xz")


@pytest.fixture(scope="session")
def demo_test():
    """(ids, images) of the bundled 400-row test sample."""
    return read_test(DEMO / "test.csv.xz")


@pytest.fixture(scope="session")
def small_unit_data(demo_train, demo_test):
    """A unit's arrays, small enough to train in seconds on a CPU."""
    from fer_kaggle.training.train import UnitData
    images, labels = demo_train
    ids, test_images = demo_test
    valid = np.arange(300, 400)
    return UnitData(images[:300], labels[:300], valid, images[valid], labels[valid], ids[:60], test_images[:60])


# ---------------------------------------------------------------- a finished run (inference, export, predict)

def _suite_folder(tmp_path_factory):
    """A folder shared by the suite's workers (their own temporary folders are inside it), or this session's."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, demo_train, demo_test):
    """(workdir, test images) of a tiny finished run: 2 models x 2 folds and its ensemble.json. Built once for
    the whole suite: the first worker that needs it builds it under a lock, the other reads it (tests that
    change a run change a copy).

    round0/fer_vgg_tiny predicts with flip TTA; round0/fer_resnet_tiny is trained on 44 px crops
    with an EMA of its weights and predicts with ten-crop TTA, so every way a unit can predict is
    in the run. 300 train and 40 test rows of the demo sample; amp off, so the saved test.npz
    probabilities are float32 like the inference module's. 4 epochs at a high learning rate overfit
    the 150 rows of a fold: the probabilities are far from uniform (mean top probability 0.56-0.89,
    flip changes them by up to 0.27), so a preprocessing slip is seen (after 1 epoch every face got
    about 1/7 of each class, and a missing flip changed them by 5e-5).
    """
    from filelock import FileLock

    shared = _suite_folder(tmp_path_factory)
    tmp, ids, test_images = shared / "finished_run", demo_test[0][:40], demo_test[1][:40]
    with FileLock(str(shared / "finished_run.lock")):
        if not (tmp / "built").exists():
            _build_finished_run(tmp, demo_train[0][:300], demo_train[1][:300], ids, test_images)
            (tmp / "built").touch()
    return tmp / "run", test_images


def _build_finished_run(tmp, images, labels, ids, test_images):
    from fer_kaggle.blend import ensemble
    from fer_kaggle.core.config import PRESETS
    from fer_kaggle.data.folds import make_or_load_folds
    from fer_kaggle.training.train import Unit, UnitData, train_unit

    workdir = tmp / "run"
    cfg = PRESETS["demo"].replace(folds=2, epochs=4, lr=2e-2, warmup_epochs=0.3, amp="off", tta="flip",
                                  device="cpu")
    configs = {"fer_vgg_tiny": cfg, "fer_resnet_tiny": cfg.replace(crop=44, tta="ten_crop", ema=0.9)}
    folds, _ = make_or_load_folds(workdir, images, labels, "finished-run-fixture", cfg.folds, cfg.seed)
    for backbone, unit_cfg in configs.items():
        for fold in range(cfg.folds):
            valid = np.flatnonzero(folds == fold)
            data = UnitData(images[folds != fold], labels[folds != fold], valid, images[valid], labels[valid],
                            ids, test_images)
            train_unit(unit_cfg, Unit(0, backbone, fold), workdir, data, torch.device("cpu"))
    ensemble.run(workdir, tmp / "submissions")


@pytest.fixture(scope="session")
def finished_run_blend(finished_run):
    """The run's kept blend of its test probabilities, computed from its files alone: each model's mean
    over folds of test.npz "probs" or "probs_logit" (its kept TTA space), weighted as ensemble.json says."""
    import json

    workdir, _ = finished_run
    summary = json.loads((workdir / "ensemble.json").read_text())
    n_folds = json.loads((workdir / "folds.json").read_text())["folds"]
    models = []
    for name, scores in summary["models"].items():
        key = {"prob": "probs", "logit": "probs_logit"}[scores["tta_space"]]
        folds = []
        for k in range(n_folds):
            with np.load(workdir / name / f"fold{k}" / "test.npz") as saved:
                folds.append(saved[key])
        models.append(np.mean(folds, axis=0))
    return np.tensordot(np.asarray(summary["blends"][summary["kept"]]["weights"]), np.stack(models), axes=1)


@pytest.fixture
def interrupt_then_resume(monkeypatch):
    """fn(cfg, unit, workdir, data, device, stop_at=2, checkpoint=1): train a unit with a Ctrl-C in epoch
    `stop_at` (checked to leave it unfinished, its checkpoint at epoch `checkpoint`), then the same call
    again, to the end."""
    from fer_kaggle.training import train

    def run(cfg, unit, workdir, data, device, stop_at=2, checkpoint=1, pace=None):
        real_epoch, calls = train._train_epoch, []

        def interrupt(*args, **kwargs):
            calls.append(1)
            if len(calls) == stop_at:
                raise KeyboardInterrupt
            return real_epoch(*args, **kwargs)

        monkeypatch.setattr(train, "_train_epoch", interrupt)
        with pytest.raises(KeyboardInterrupt):
            train.train_unit(cfg, unit, workdir, data, device, pace=pace)
        assert not (unit.dir(workdir) / "metrics.json").exists()
        assert torch.load(unit.dir(workdir) / "checkpoint.pt", weights_only=True)["epoch"] == checkpoint
        monkeypatch.setattr(train, "_train_epoch", real_epoch)
        return train.train_unit(cfg, unit, workdir, data, device, pace=pace)
    return run
