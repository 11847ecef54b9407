"""How units run: a unit's rows, the local process pool (the same files as one at a time, errors reach the
caller), the choice of executor, and the pipeline's schedule of pseudo-labelling students. Ray: test_ray.py."""
import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from fer_kaggle.blend import pseudo
from fer_kaggle.core import runfolder
from fer_kaggle.core.atomic import save_npz
from fer_kaggle.core.config import PRESETS
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.core.errors import TimeLimitReached
from fer_kaggle.core.runfolder import RunFolder
from fer_kaggle.run.executor import (DevicePool, Done, Executor, Job, LocalPool, PseudoRows, RunArrays, Sequential,
                                     Slots)
from fer_kaggle.run import pipeline
from fer_kaggle.run.pipeline import Rounds, make_executor
from fer_kaggle.training.train import Unit, monitor_rows

CFG = PRESETS["demo"].replace(backbones=("fer_resnet_tiny",), epochs=1, batch_size=32, device="cpu")


def _arrays_of(demo_train, demo_test):
    """600 train rows: 300-399 are fold 0, 400-499 fold 1, the rest in no held-out fold; 50 test images."""
    images, labels = demo_train
    ids, test_images = demo_test
    folds = np.full(600, -1)
    folds[300:400], folds[400:500] = 0, 1
    return RunArrays(images[:600], labels[:600], folds, ids[:50], test_images[:50])


def _jobs(workdir, cfg=CFG):
    return [Job(cfg, Unit(0, "fer_resnet_tiny", fold), workdir, "cpu") for fold in range(2)]


def test_a_units_rows_come_from_its_fold_and_its_pseudo_labels(demo_train, demo_test):
    arrays = _arrays_of(demo_train, demo_test)
    data = arrays.unit_data(1)
    assert data.valid_rows.tolist() == list(range(400, 500))
    assert len(data.train_images) == 500 and np.array_equal(data.train_images[300:400], arrays.train_images[300:400])
    student = arrays.unit_data(1, PseudoRows(np.array([4, 2]), np.array([6, 0])))
    assert len(student.train_images) == 502 and student.train_labels[-2:].tolist() == [6, 0]
    assert np.array_equal(student.train_images[-2:], arrays.test_images[[4, 2]])
    soft = arrays.unit_data(1, PseudoRows(np.array([4]), np.full((1, 7), 1 / 7, np.float32)))
    assert soft.train_labels.shape == (501, 7) and soft.train_labels[:500].max(1).min() == 1.0


def _arrays(workdir, fold):
    unit_dir = workdir / f"round0/fer_resnet_tiny/fold{fold}"
    with np.load(unit_dir / "oof.npz") as oof, np.load(unit_dir / "test.npz") as test:
        return {k: oof[k] for k in oof.files} | {f"test_{k}": test[k] for k in test.files}


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory, demo_train, demo_test):
    """The sequential loop's files for the two units of `_jobs`, one thread each: what the pools must write."""
    workdir = tmp_path_factory.mktemp("sequential")
    threads = torch.get_num_threads()
    done = [d.job.unit.fold for d in Sequential(1).run(_jobs(workdir), _arrays_of(demo_train, demo_test), None)]
    assert done == [0, 1]
    assert torch.get_num_threads() == threads, "the sequential loop gives its threads back"
    return workdir


@pytest.mark.slow  # spawned worker processes
def test_pool_writes_what_one_at_a_time_writes(tmp_path, demo_train, demo_test, one_at_a_time):
    """Each unit gets its own arrays and seeds in its worker: with the same thread count (one), the pool's
    files equal the sequential loop's, byte for byte, whatever order the units finish in."""
    arrays = _arrays_of(demo_train, demo_test)
    finished = [d.job.unit.fold for d in LocalPool(2, 1).run(_jobs(tmp_path / "pool"), arrays, None)]
    assert sorted(finished) == [0, 1]
    for fold in range(2):
        sequential, pooled = _arrays(one_at_a_time, fold), _arrays(tmp_path / "pool", fold)
        assert sequential.keys() == pooled.keys()
        for key in sequential:
            assert np.array_equal(sequential[key], pooled[key]), (fold, key)


@pytest.mark.slow  # spawned worker processes
def test_several_devices_train_one_unit_each_at_a_time(tmp_path, demo_train, demo_test, one_at_a_time):
    """Kaggle's two T4s without Ray: each running unit has a device of its own. Two CPU device names
    stand in for two GPUs here; the files equal one at a time's, as the pool's do."""
    arrays = _arrays_of(demo_train, demo_test)
    jobs = _jobs(tmp_path / "devices") + [Job(CFG, Unit(0, "fer_resnet_tiny", 0), tmp_path / "third", "cpu")]
    done = list(DevicePool(["cpu", "cpu:0"], 1).run(jobs, arrays, None))
    first_two = sorted(d.where.rsplit(" on ", 1)[1] for d in done[:2])
    assert first_two == ["cpu", "cpu:0"], [d.where for d in done]
    assert len(done) == 3 and done[2].where.rsplit(" on ", 1)[1] in first_two
    for fold in range(2):
        sequential, pooled = _arrays(one_at_a_time, fold), _arrays(tmp_path / "devices", fold)
        assert all(np.array_equal(sequential[key], pooled[key]) for key in sequential), fold


@pytest.mark.slow
def test_an_error_in_a_worker_stops_the_round_with_its_message(tmp_path, demo_train, demo_test):
    cfg = CFG.replace(lr=1e30, optimizer="sgd", amp="off")  # the loss overflows in the first steps
    with pytest.raises(FerKaggleError, match="the training loss became non-finite"):
        list(LocalPool(2, 1).run(_jobs(tmp_path, cfg), _arrays_of(demo_train, demo_test), None))
    assert not list(tmp_path.glob("round0/*/*/metrics.json"))


def test_make_executor(tmp_path, monkeypatch):
    cpu = CFG.replace(device="cpu")
    assert isinstance(make_executor(cpu, tmp_path), Sequential)
    monkeypatch.setattr(pipeline, "resolve_device", lambda name: torch.device(name))
    assert isinstance(make_executor(cpu.replace(parallel_units=2, device="cuda"), tmp_path), Sequential), \
        "one GPU: units would queue for it"
    monkeypatch.setattr(pipeline, "cuda_devices", lambda: ["cuda:0", "cuda:1"])
    gpus = make_executor(cpu.replace(device="cuda"), tmp_path)
    assert isinstance(gpus, DevicePool) and gpus.devices == ["cuda:0", "cuda:1"] and gpus.processes == 2
    assert isinstance(make_executor(cpu.replace(device="cuda:1"), tmp_path), Sequential), "--device names one GPU"
    pool = make_executor(cpu.replace(parallel_units=2), tmp_path)
    assert isinstance(pool, LocalPool) and pool.processes == 2 and pool.threads >= 1
    assert make_executor(cpu.replace(parallel_units=2, unit_threads=3), tmp_path).threads == 3
    assert make_executor(cpu.replace(unit_threads=1), tmp_path).threads == 1


def test_monitor_rows_is_a_fixed_sample_or_everything():
    assert monitor_rows(100, 0, 1).tolist() == list(range(100))
    assert monitor_rows(100, 500, 1).tolist() == list(range(100))
    sample = monitor_rows(9570, 2000, 7)
    assert len(sample) == len(set(sample.tolist())) == 2000 and sample.tolist() == sorted(sample.tolist())
    assert torch.equal(sample, monitor_rows(9570, 2000, 7)) and not torch.equal(sample, monitor_rows(9570, 2000, 8))


class Scripted(Executor):
    """Finishes submitted units in the order `pick` prefers, writing made-up predictions for them: how
    the pipeline schedules, without training."""

    def __init__(self, pick):
        self.pick, self.log, self.device, self.description = pick, [], torch.device("cpu"), "scripted"

    def start(self, arrays, deadline):
        self.arrays, self.pending = arrays, []
        return self

    def submit(self, job):
        self.log.append(("submit", job.unit.name))
        self.pending.append(job)

    def finished(self):
        while self.pending:
            job = min(self.pending, key=self.pick)
            self.pending.remove(job)
            unit_dir, rng = job.unit.dir(job.workdir), np.random.default_rng(job.unit.fold)
            valid = np.flatnonzero(self.arrays.folds == job.unit.fold)
            save_npz(unit_dir / "oof.npz", rows=valid, probs=rng.dirichlet(np.ones(7) * 0.3, len(valid)))
            save_npz(unit_dir / "test.npz", ids=self.arrays.test_ids,
                     probs=rng.dirichlet(np.ones(7) * 0.3, len(self.arrays.test_ids)))
            (unit_dir / "config.json").write_text(json.dumps({"key_settings": job.key_settings}))
            (unit_dir / "metrics.json").write_text('{"valid_acc": 0.5, "train_rows": 1}')
            self.log.append(("done", job.unit.name))
            yield Done(job, {"valid_acc": 0.5, "train_rows": 1}, "here", 0.0)

    def close(self, stopped):
        pass


def _scripted_rounds(workdir, demo_train, demo_test, pick=lambda job: job.unit.round):
    images, labels = demo_train
    ids, test_images = demo_test
    arrays = RunArrays(images[:400], labels[:400], np.arange(400) % 2, ids[:80], test_images[:80])
    cfg = CFG.replace(backbones=("fer_vgg_tiny", "fer_resnet_tiny"), folds=2, pseudo=True, pseudo_threshold=0.5)
    executor = Scripted(pick)
    return Rounds(cfg, RunFolder(workdir), executor, torch.device("cpu"), ("a", "b"), arrays), executor


def test_a_folds_students_start_as_soon_as_its_teachers_are_done(tmp_path, demo_train, demo_test):
    """Fold 1's teachers finish first: fold 1's students are submitted before fold 0's last teacher is done,
    each with its own fold's pseudo-labelled rows; fold 0's students wait for both of fold 0's teachers."""
    ids = demo_test[0]
    rounds, executor = _scripted_rounds(tmp_path, demo_train, demo_test,
                                        pick=lambda job: (job.unit.round, job.unit.fold != 1))  # round 0's fold 1 first
    submitted = {}
    executor.submit = lambda job, submit=executor.submit: (submitted.setdefault(job.unit.name, job), submit(job))
    rounds.train(None)
    log = [f"{what} {name.split('/')[0]}/{runfolder.backbone_of(name.rsplit('/', 1)[0])}/{name[-5:]}"
           for what, name in executor.log]
    assert log.index("submit round1/fer_vgg_tiny/fold1") < log.index("done round0/fer_resnet_tiny/fold0"), log
    assert log.index("submit round1/fer_vgg_tiny/fold0") > log.index("done round0/fer_resnet_tiny/fold0"), log
    assert log.count("done round1/fer_vgg_tiny/fold0") == 1 and len(log) == 16
    for fold in range(2):  # each student learns its own fold's teachers' confident test images
        table = pseudo.fold_table(fold, *pseudo.teacher_probs(tmp_path, rounds.teachers, fold), rounds.cut)
        job = submitted[f"{rounds.students[0]}/fold{fold}"]
        assert len(table) and job.pseudo.rows.tolist() == [list(ids[:80]).index(i) for i in table["id"]]
        assert job.key_settings["pseudo_rows"] == pseudo.table_hash(table)
    assert json.loads((tmp_path / "shift.json").read_text())["folds"].keys() == {"0", "1"}
    [saved] = (tmp_path / "round1").glob("pseudo_labels-*.csv")
    assert sorted(pd.read_csv(saved)["fold"].unique()) == [0, 1]


def test_a_finished_student_whose_teachers_now_say_otherwise_is_refused(tmp_path, demo_train, demo_test):
    """A student's key names its teachers: if a teacher's predictions changed since (deleted and retrained
    on a GPU), the finished student is not blended as if it had learned them."""
    _scripted_rounds(tmp_path, demo_train, demo_test)[0].train(None)
    rounds, executor = _scripted_rounds(tmp_path, demo_train, demo_test)
    rounds.train(None)
    assert not [what for what, _ in executor.log if what == "submit"], "everything was finished"
    teacher = tmp_path / rounds.teachers[0] / "fold1" / "test.npz"
    with np.load(teacher) as saved:
        save_npz(teacher, ids=saved["ids"], probs=np.eye(7)[np.zeros(len(saved["ids"]), int)])
    with pytest.raises(FerKaggleError, match=rf"{rounds.students[0]}/fold1 learned from other pseudo-labels"):
        _scripted_rounds(tmp_path, demo_train, demo_test)[0].train(None)


class Instant(Slots):
    """Slots whose units end as soon as they are waited for: what starts when, without training."""
    description = "instant"

    def __init__(self, slots):
        self.slots, self.most_running, self.started = slots, 0, []

    def open(self, arrays):
        pass

    def launch(self, job):
        self.started.append(job.unit.fold)
        self.most_running = max(self.most_running, len(self.running) + 1)
        return job.unit.fold

    def wait_one(self, handles):
        return handles[0]

    def result(self, handle, job):
        return {"valid_acc": 0.5}, 0.0, "nowhere"

    def close(self, stopped):
        pass


def _fold_jobs(n):
    return [Job(CFG, Unit(0, "fer_resnet_tiny", fold), "unused", "cpu") for fold in range(n)]


def test_at_most_slots_units_run_at_once():
    executor = Instant(slots=2)
    assert [d.job.unit.fold for d in executor.run(_fold_jobs(5), None, None)] == [0, 1, 2, 3, 4]
    assert executor.most_running == 2


class Growing(Instant):
    """Instant slots on a cluster where a second slot appears (a node joins) while the first unit runs, and
    that unit ends only after one empty wait: the new slot is used before it ends."""

    def __init__(self):
        super().__init__(slots=1)
        self.waits = 0

    def refresh(self):
        self.slots = 2 if self.waits else 1

    def wait_one(self, handles):
        self.waits += 1
        return None if self.waits == 1 else handles[0]


def test_slots_added_while_units_run_are_used_before_any_unit_ends():
    executor = Growing()
    assert [d.job.unit.fold for d in executor.run(_fold_jobs(4), None, None)] == [0, 1, 2, 3]
    assert executor.started[:2] == [0, 1] and executor.most_running == 2


def test_past_the_time_limit_one_unit_starts_and_the_rest_wait_for_the_next_run():
    """Like one unit at a time: the first unit always starts (and trains an epoch: a repeated run with a
    short --time-limit moves on); no other starts after the limit, and the run says so."""
    executor = Instant(slots=2)
    finished = []
    with pytest.raises(TimeLimitReached, match="fold1 and 3 more units not started"):
        for done in executor.run(_fold_jobs(5), None, time.monotonic() - 1):
            finished.append(done.job.unit.fold)
    assert executor.started == finished == [0]
