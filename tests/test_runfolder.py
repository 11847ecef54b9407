"""The run folder: a run never hands back units of other settings, the lock, the default run, the cache."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import conftest
from conftest import DEMO, ROOT

from fer_kaggle import cli
from fer_kaggle.core import runfolder
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.core.runfolder import RunFolder
from fer_kaggle.data.inputs import demo_head as _head

TINY = [*conftest.TINY, "--amp", "off"]




@pytest.fixture
def tiny_run(tmp_path, capsys):
    """fn(*options) -> (exit code, stdout, ensemble.json): the real command line on 300 train and 40 test rows."""
    train, test = _head("train.csv.xz", 300, tmp_path / "train.csv"), _head("test.csv.xz", 40, tmp_path / "test.csv")

    def run(*options):
        code = cli.main([str(train), str(test), str(tmp_path / "out.csv"), "--workdir", str(tmp_path / "run"),
                              "--submissions", str(tmp_path / "subs"), *TINY, *options])
        printed = capsys.readouterr()
        assert code == 0, printed.err[-2000:]
        return code, printed.out, json.loads((tmp_path / "run" / "ensemble.json").read_text())
    return run


def _trained(printed):
    return [line.split(":")[0] for line in printed.splitlines() if ": OOF accuracy" in line]


@pytest.mark.slow
def test_changed_settings_train_new_units_and_blend_only_them(tiny_run):
    """--epochs 1, then --epochs 2: the second run trains its own units beside the old ones and blends only
    them; going back to --epochs 1 reuses the first units, training nothing."""
    _, printed, first = tiny_run()
    assert len(_trained(printed)) == 2
    _, printed, second = tiny_run("--epochs", "2")
    assert len(_trained(printed)) == 2, "the changed setting trained no new unit"
    assert set(first["models"]).isdisjoint(second["models"]) and len(second["models"]) == 1
    assert "1 other model(s)" in printed and "--all" in printed
    _, printed, again = tiny_run()
    assert _trained(printed) == [] and "2 of 2 units already finished" in printed
    assert again["models"] == first["models"]


@pytest.mark.slow
def test_other_backbones_leave_the_earlier_ones_out_of_the_blend(tiny_run):
    _, _, first = tiny_run()
    _, printed, second = tiny_run("--backbones", "fer_resnet_tiny")
    assert [runfolder.backbone_of(name) for name in second["models"]] == ["fer_resnet_tiny"]
    assert set(first["models"]).isdisjoint(second["models"])


@pytest.mark.slow
def test_settings_that_change_nothing_learned_reuse_the_units(tiny_run):
    """--time-limit, --workers and --monitor-rows change no weight: no retraining."""
    tiny_run()
    _, printed, _ = tiny_run("--time-limit", "100", "--workers", "0", "--monitor-rows", "50")
    assert _trained(printed) == []


@pytest.mark.slow
def test_a_new_pseudo_threshold_retrains_round1_only(tiny_run, tmp_path):
    """Round 0 ignores the pseudo-label settings; round 1's units are keyed by them and by their teachers,
    and each records the hash of the rows it learned from."""
    _, printed, first = tiny_run("--pseudo", "--pseudo-threshold", "0.15")
    assert len(_trained(printed)) == 4
    _, printed, second = tiny_run("--pseudo", "--pseudo-threshold", "0.2")
    trained = _trained(printed)
    assert trained and all(name.startswith("round1/") for name in trained), trained
    round0 = [m for m in first["models"] if m.startswith("round0/")]
    assert round0 == [m for m in second["models"] if m.startswith("round0/")]
    assert {m for m in first["models"] if m.startswith("round1/")}.isdisjoint(second["models"])
    rows = [json.loads(path.read_text())["key_settings"]["pseudo_rows"]
            for path in (tmp_path / "run" / "round1").glob("*/fold0/config.json")]
    assert len(set(rows)) == 2, "both thresholds admitted the same images: the test shows nothing"
    # each run's table is still on disk, not overwritten by the next threshold's
    assert len(list((tmp_path / "run" / "round1").glob("pseudo_labels-*.csv"))) == 2


# ---------------------------------------------------------------- the lock

def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    with RunFolder(tmp_path / "run").lock():
        code = cli.main([str(DEMO / "train.csv.xz"), str(DEMO / "test.csv.xz"), str(tmp_path / "o.csv"),
                              "--workdir", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "in use by a run still going" in err and f"process {os.getpid()}" in err
    assert not (tmp_path / "run" / "folds.csv").exists()


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fer_kaggle.core.runfolder import RunFolder\n"
         f"with RunFolder({str(tmp_path / 'run')!r}).lock():\n    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FerKaggleError, match=f"process {holder.pid}"):
        with RunFolder(tmp_path / "run").lock():
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with RunFolder(tmp_path / "run").lock():
        assert "took over the lock of a run that stopped without releasing it (host" in capsys.readouterr().out
    with RunFolder(tmp_path / "run").lock():  # released cleanly: nothing to take over
        assert "took over" not in capsys.readouterr().out


# ---------------------------------------------------------------- the default run of the reading commands

def _fake_run(workdir, finished):
    workdir.mkdir(parents=True)
    (workdir / "folds.json").write_text(json.dumps({"folds": 2}))
    RunFolder(workdir).write_record(models=[], finished=finished)


def test_readers_find_the_demo_run_or_the_newest_finished(tmp_path):
    folder, why = runfolder.find_default_run(tmp_path)
    assert folder.path == tmp_path / "folds"
    _fake_run(tmp_path / "folds" / "demo", finished=100.0)
    folder, why = runfolder.find_default_run(tmp_path)
    assert folder.path == tmp_path / "folds" / "demo" and why == "the only run here"
    (tmp_path / "folds" / "folds.json").write_text(json.dumps({"folds": 3}))
    RunFolder(tmp_path / "folds").write_record(models=[], finished=200.0)
    assert runfolder.find_default_run(tmp_path)[0].path == tmp_path / "folds"
    RunFolder(tmp_path / "folds" / "demo").write_record(finished=300.0)
    folder, why = runfolder.find_default_run(tmp_path)
    assert folder.path == tmp_path / "folds" / "demo" and "most recently finished" in why


@pytest.mark.slow
def test_ensemble_with_no_options_after_the_demo(finished_run, tmp_path, monkeypatch, capsys):
    """README's `python -m fer_kaggle.ensemble` from the project root after `bash run.sh` finds the demo run in
    folds/demo."""
    import shutil

    shutil.copytree(finished_run[0], tmp_path / "folds" / "demo")
    monkeypatch.setattr(cli, "HOME", tmp_path)
    assert cli.main(["ensemble"]) == 0
    printed = capsys.readouterr()
    assert f"run folder: {tmp_path / 'folds' / 'demo'}" in printed.err
    assert list((tmp_path / "submissions").glob("*.csv"))


# ---------------------------------------------------------------- checkpoints and the parse cache

def test_checkpoint_round_trip_and_the_predicting_weights(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "ema": {"module.w": torch.zeros(2)}, "epoch": 3}
    runfolder.save_checkpoint(tmp_path, state)
    loaded = runfolder.load_checkpoint(tmp_path)
    assert loaded["epoch"] == 3 and torch.equal(runfolder.predicting_weights(loaded)["w"], torch.zeros(2))
    assert torch.equal(runfolder.predicting_weights({"model": {"w": torch.ones(2)}})["w"], torch.ones(2))
    assert runfolder.load_checkpoint(tmp_path / "none") is None
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FerKaggleError, match=r"checkpoint.pt is damaged \(not a torch checkpoint\)"):
        runfolder.load_checkpoint(tmp_path)


def test_parse_cache_has_named_arrays_and_an_older_one_is_parsed_again(tmp_path):
    path = tmp_path / "train-x.npz"
    runfolder.save_cache(path, {"images": np.zeros((2, 48, 48), np.uint8), "labels": np.arange(2)})
    arrays = runfolder.load_cache(path, runfolder.TRAIN_ARRAYS)
    assert arrays["images"].shape == (2, 48, 48) and arrays["labels"].tolist() == [0, 1]
    test = runfolder.load_cache(path, ("images", "usage"))
    assert test["usage"] is None
    np.savez(tmp_path / "old.npz", arr_0=np.zeros(2), arr_1=np.ones(2))
    assert runfolder.load_cache(tmp_path / "old.npz", runfolder.TRAIN_ARRAYS) is None
