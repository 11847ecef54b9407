"""End to end through run.sh, as a user runs it: the demo, killed with kill -9 and resumed; offline setup."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO, ROOT

from fer_kaggle.data.competition import read_test
from fer_kaggle.blend.submit import read_submission



def run_sh(*args, **kwargs):
    return subprocess.run(["bash", str(ROOT / "run.sh"), *map(str, args)], capture_output=True, text=True,
                          timeout=2400, **kwargs)  # generous: a loaded machine is slow, not hung


def fake_commands(tmp_path, **scripts):
    """A bin folder of shell scripts standing in for commands (name: body); the PATH that puts it first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


@pytest.mark.slow
def test_run_sh_help_lists_the_commands_and_the_options():
    result = run_sh("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    for word in ("ensemble", "report", "predict", "export", "bench", "--epochs", "--strict-shift"):
        assert word in result.stdout, word


@pytest.mark.slow
def test_demo_killed_with_kill_9_resumes_and_writes_a_submission_that_beats_the_majority_class(tmp_path, demo_train):
    """The demo through run.sh, made small (one backbone, a few epochs; the whole demo's time and accuracy are
    benchmarks: BENCHMARKS.md), killed with kill -9 in its second unit: the same command again keeps what was
    finished, resumes the killed unit after its last epoch, and goes on through both rounds to the submission."""
    options = ["--workdir", tmp_path / "run", "--submissions", tmp_path / "subs", "--backbones", "fer_resnet_tiny",
               "--folds", "2", "--epochs", "3", "--budget", "0"]
    round0 = tmp_path / "run" / "round0"
    process = subprocess.Popen(["bash", ROOT / "run.sh", *options], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 1200
    while not list(round0.glob("fer_resnet_tiny-*/fold1/history.csv")):  # written just after the checkpoint
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    [model] = round0.glob("fer_resnet_tiny-*")  # the folder names a hash of the unit's settings
    unit0, unit1 = model / "fold0", model / "fold1"
    assert not (unit1 / "metrics.json").exists(), "killed too late: fold 1 had already finished"
    assert not list((tmp_path / "subs").glob("*.csv"))
    folds_before = (tmp_path / "run" / "folds.csv").read_bytes()
    finished_before = (unit0 / "metrics.json").stat().st_mtime_ns
    epochs_done = len(pd.read_csv(unit1 / "history.csv"))

    result = run_sh(*options, cwd=tmp_path)  # the same command again
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round0: 1 of 2 units already finished" in result.stdout
    assert (tmp_path / "run" / "folds.csv").read_bytes() == folds_before
    assert (unit0 / "metrics.json").stat().st_mtime_ns == finished_before, "a finished unit was retrained"
    assert pd.read_csv(unit1 / "history.csv")["epoch"].tolist() == [1, 2, 3]
    resumed = f"round0/{model.name}/fold1"
    assert f"{resumed} epoch {epochs_done}/3:" not in result.stdout, "finished epochs were trained again"
    assert f"{resumed} epoch 3/3:" in result.stdout
    assert not list((tmp_path / "run").rglob("*.tmp-*"))

    submissions = list((tmp_path / "subs").glob("*.csv"))
    assert len(submissions) == 1 and f"submission: {submissions[0]}" in result.stdout
    ids, _ = read_test(DEMO / "test.csv.xz")
    submission = read_submission(submissions[0])
    assert submission["id"].tolist() == ids.tolist()

    summary = json.loads((tmp_path / "run" / "ensemble.json").read_text())
    oof_acc = summary["blends"][summary["kept"]]["oof_acc"]
    _, labels = demo_train
    majority = np.bincount(labels).max() / len(labels)
    assert oof_acc > majority + 0.02, f"ensemble OOF accuracy {oof_acc:.3f} vs majority class {majority:.3f}"
    assert f"ensemble OOF accuracy: {oof_acc:.4f}" in result.stdout
    trained = {name.rsplit("-", 1)[0] for name in summary["models"]}
    assert {"round0/fer_resnet_tiny", "round1/fer_resnet_tiny"} <= trained
    assert "pseudo-labelling: ensemble OOF accuracy" in result.stdout
    assert len(list((tmp_path / "run" / "round1").glob("pseudo_labels-*.csv"))) == 1

    # re-ensembling what is on disk gives the same submission
    again = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "fer_kaggle.ensemble", "--workdir",
                            str(tmp_path / "run"), "--submissions", str(tmp_path / "again"), "--out",
                            str(tmp_path / "out.csv")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out.csv").read_text() == submissions[0].read_text()


@pytest.mark.slow
def test_offline_setup_reuses_the_pythons_packages(tmp_path):
    """A fresh copy of the project on a machine whose python3 is a venv that already has torch and the rest
    (as on the GPU images), and no package index (PIP_NO_INDEX): run.sh sets up a venv that reuses them,
    installs only the package, and runs."""
    import shutil
    import sys
    import sysconfig
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".venv", ".git", "folds", "submissions", ".gpu",
                                                                "__pycache__", "*.egg-info", ".pytest_cache"))
    path = fake_commands(tmp_path, python3=f'exec {sys.executable} "$@"')  # this venv's python
    env = {**os.environ, "PATH": path, "PIP_NO_INDEX": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", str(clone / "run.sh"), "--help"], capture_output=True, text=True,
                            timeout=900, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing the packages of" in result.stderr and "--epochs" in result.stdout
    [reused] = (clone / ".venv").rglob("_reused_python3.pth")
    assert sysconfig.get_paths()["purelib"] in reused.read_text().split()
    assert not list((clone / ".venv").rglob("torch/__init__.py")), "torch was installed again"
    where = subprocess.run([str(clone / ".venv/bin/python"), "-c",  # found, not imported: torch loads in seconds
                            "import importlib.util as u; print(u.find_spec('fer_kaggle').origin)"],
                           capture_output=True, text=True, env=env, cwd="/", timeout=300)
    assert where.stdout.startswith(str(clone)), where.stdout + where.stderr


def test_a_torch_install_without_the_disk_for_it_is_refused_before_anything_is_written(tmp_path):
    """A fresh copy, a python3 without torch (so run.sh would install PyPI's, several GB) and a disk with 3 GB
    free: run.sh says how much it needs and where, exits 1, and leaves no half-made .venv behind."""
    import shutil
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(ROOT / "run.sh", clone / "run.sh")
    path = fake_commands(tmp_path, python3="exit 1",  # no torch here, nor anything else
                         df='echo "Filesystem 1024-blocks Used Available Capacity Mounted"; '
                            'echo "/dev/x 100000000 96854272 3145728 97% /"')  # 3 GiB free
    env = {**os.environ, "PATH": path}
    result = subprocess.run(["bash", str(clone / "run.sh"), "--help"], capture_output=True, text=True,
                            timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert f"needs about 7 GB free on its disk; {clone} has 3 GB" in result.stderr, result.stderr
    assert not (clone / ".venv").exists()
