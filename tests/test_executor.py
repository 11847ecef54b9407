"""Units side by side in a local process pool: the same files as one at a time, errors reach the caller."""
import numpy as np
import pandas as pd
import pytest
import torch

from fer_kaggle.config import PRESETS
from fer_kaggle.errors import FerKaggleError
from fer_kaggle.executor import Job, LocalPool, Sequential, make_executor
from fer_kaggle.train import Unit, UnitData, monitor_rows

CFG = PRESETS["demo"].replace(backbones=("fer_resnet_tiny",), epochs=1, batch_size=32, device="cpu")


def _jobs(workdir, demo_train, demo_test, cfg=CFG):
    images, labels = demo_train
    ids, test_images = demo_test
    jobs = []
    for fold in range(2):
        valid = np.arange(300 + 100 * fold, 400 + 100 * fold)
        train_rows = np.setdiff1d(np.arange(600), valid)
        data = UnitData(images[train_rows], labels[train_rows], valid, images[valid], labels[valid], ids[:50],
                        test_images[:50])
        jobs.append(Job(cfg, Unit(0, "fer_resnet_tiny", fold), workdir, data, "cpu"))
    return jobs


def _arrays(workdir, fold):
    unit_dir = workdir / f"round0/fer_resnet_tiny/fold{fold}"
    with np.load(unit_dir / "oof.npz") as oof, np.load(unit_dir / "test.npz") as test:
        return {k: oof[k] for k in oof.files} | {f"test_{k}": test[k] for k in test.files}


@pytest.mark.slow  # spawned worker processes
def test_pool_writes_what_one_at_a_time_writes(tmp_path, demo_train, demo_test, monkeypatch):
    """Each unit gets its own arrays and seeds in its worker: with the same thread count (one), the pool's
    files equal the sequential loop's, byte for byte, whatever order the units finish in."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        done = [job.unit.fold for job, _ in Sequential().run(_jobs(tmp_path / "seq", demo_train, demo_test), None)]
    finally:
        torch.set_num_threads(threads)
    finished = [job.unit.fold for job, _ in LocalPool(2, 1).run(_jobs(tmp_path / "pool", demo_train, demo_test),
                                                                 None)]
    assert done == [0, 1] and sorted(finished) == [0, 1]
    for fold in range(2):
        sequential, pooled = _arrays(tmp_path / "seq", fold), _arrays(tmp_path / "pool", fold)
        assert sequential.keys() == pooled.keys()
        for key in sequential:
            assert np.array_equal(sequential[key], pooled[key]), (fold, key)


@pytest.mark.slow
def test_an_error_in_a_worker_stops_the_round_with_its_message(tmp_path, demo_train, demo_test):
    cfg = CFG.replace(lr=1e30, optimizer="sgd", amp="off")  # the loss overflows in the first steps
    with pytest.raises(FerKaggleError, match="the training loss became non-finite"):
        list(LocalPool(2, 1).run(_jobs(tmp_path, demo_train, demo_test, cfg), None))
    assert not list(tmp_path.glob("round0/*/*/metrics.json"))


def test_make_executor():
    assert isinstance(make_executor(1, torch.device("cpu")), Sequential)
    assert isinstance(make_executor(2, torch.device("cuda")), Sequential), "one GPU: units would queue for it"
    pool = make_executor(2, torch.device("cpu"))
    assert isinstance(pool, LocalPool) and pool.processes == 2 and pool.threads >= 1


def test_monitor_rows_is_a_fixed_sample_or_everything():
    assert monitor_rows(100, 0, 1).tolist() == list(range(100))
    assert monitor_rows(100, 500, 1).tolist() == list(range(100))
    sample = monitor_rows(9570, 2000, 7)
    assert len(sample) == len(set(sample.tolist())) == 2000 and sample.tolist() == sorted(sample.tolist())
    assert torch.equal(sample, monitor_rows(9570, 2000, 7)) and not torch.equal(sample, monitor_rows(9570, 2000, 8))
