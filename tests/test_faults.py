"""Faults a user's machine causes: damaged files in the run folder, a full disk. Each ends in a repair or in
one `error:` line naming the file, never a traceback, and the same command then ends as an undisturbed run.

One tiny real run (300 train and 40 test rows of the bundled sample, one backbone, 2 folds, an epoch) is
trained once; each test damages a copy of its folder and runs the same command again.
"""
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import conftest
from fer_kaggle.core import atomic
from fer_kaggle import cli
from fer_kaggle.core.atomic import save_npz
from fer_kaggle.data.inputs import demo_head as _head

pytestmark = pytest.mark.slow  # every test here runs a whole pipeline or reads one

TINY = [*conftest.TINY, "--amp", "off", "--budget", "0"]
UNIT = "round0/fer_vgg_tiny-*/fold0"




class Run:
    """The tiny run's command line in a folder of its own: `.go(*extra)` -> (exit code, stdout, stderr)."""

    def __init__(self, files, folder, capsys):
        self.files, self.folder, self.capsys = files, folder, capsys
        self.out = folder.parent / f"{folder.name}.csv"

    def go(self, *extra, command=()):
        args = [*command, *extra] if command else [str(self.files[0]), str(self.files[1]), str(self.out),
                                                   "--workdir", str(self.folder), "--submissions",
                                                   str(self.folder.parent / "subs"), *TINY, *extra]
        code = cli.main(args)
        printed = self.capsys.readouterr()
        assert "Traceback" not in printed.err
        return code, printed.out, printed.err

    def file(self, pattern):
        [path] = self.folder.glob(pattern)
        return path


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """(the train and test files, the finished run folder, its submission's bytes)."""
    root = tmp_path_factory.mktemp("undisturbed")
    files = _head("train.csv.xz", 300, root / "train.csv"), _head("test.csv.xz", 40, root / "test.csv")
    out = root / "run.csv"
    code = cli.main([str(files[0]), str(files[1]), str(out), "--workdir", str(root / "run"),
                     "--submissions", str(root / "subs"), *TINY])
    assert code == 0
    return files, root / "run", out.read_bytes()


@pytest.fixture
def copy(undisturbed, tmp_path, capsys):
    """A Run on a copy of the finished run folder."""
    files, folder, _ = undisturbed
    shutil.copytree(folder, tmp_path / "run")
    return Run(files, tmp_path / "run", capsys)


DAMAGES = {
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:path.stat().st_size // 2]),
    "emptied": lambda path: path.write_bytes(b""),
    "garbage": lambda path: path.write_bytes(np.random.default_rng(0).bytes(max(64, path.stat().st_size))),
}


def _wrong_shape(path):
    with np.load(path) as saved:
        arrays = dict(saved)
    save_npz(path, **{**arrays, "probs": arrays["probs"][:, :6]})


def _wrong_keys(path):
    save_npz(path, something_else=np.zeros(3))


@pytest.mark.parametrize("name, damage", [
    ("test.npz", "truncated"), ("oof.npz", "garbage"), ("oof.npz", _wrong_shape), ("test.npz", _wrong_keys),
    ("metrics.json", "emptied"), ("config.json", "garbage"), ("checkpoint.pt", "truncated"),
    ("history.csv", "emptied")])
def test_a_damaged_unit_file_is_named_and_the_unit_trained_again(copy, undisturbed, name, damage):
    path = copy.file(f"{UNIT}/{name}")
    (DAMAGES[damage] if isinstance(damage, str) else damage)(path)
    code, out, err = copy.go()
    assert code == 0, err
    unit = path.parent.relative_to(copy.folder).as_posix()
    assert f"{unit}: {name} is damaged (" in out and "training it again" in out
    assert copy.out.read_bytes() == undisturbed[2], "the same submission as the undisturbed run"


def test_an_unfinished_units_damaged_checkpoint_trains_it_from_the_start(copy, undisturbed):
    unit = copy.file(UNIT)
    for name in ("metrics.json", "oof.npz", "test.npz"):
        (unit / name).unlink()
    DAMAGES["garbage"](unit / "checkpoint.pt")
    code, out, err = copy.go()
    assert code == 0 and "checkpoint.pt is damaged (not a torch checkpoint): training it again" in out, out + err
    assert copy.out.read_bytes() == undisturbed[2]


def test_a_damaged_parse_cache_is_parsed_again(copy, undisturbed):
    DAMAGES["truncated"](copy.file("cache/train-*.npz"))
    code, out, err = copy.go()
    assert code == 0 and "is damaged (" in out and "parsing the input again" in out, out + err
    assert copy.out.read_bytes() == undisturbed[2]


@pytest.mark.parametrize("name", ["run.json", "shift.json"])
def test_a_damaged_record_is_written_anew(copy, undisturbed, name):
    DAMAGES["garbage"](copy.folder / name)
    code, out, err = copy.go()
    assert code == 0 and f"{name} is damaged (not text): writing it anew" in out, out + err
    assert copy.out.read_bytes() == undisturbed[2]


def test_damaged_folds_are_made_again_before_any_unit_and_stop_the_run_after(copy, undisturbed):
    DAMAGES["truncated"](copy.folder / "folds.csv")
    code, out, err = copy.go()
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "folds.csv is damaged" in err
    assert "restore the file from a backup, or start again in another --workdir" in err
    for unit in copy.folder.glob("round0"):
        shutil.rmtree(unit)
    code, out, err = copy.go()
    assert code == 0 and "making the folds again (no unit was trained on them yet)" in out, out + err
    assert copy.out.read_bytes() == undisturbed[2]


def test_other_commands_name_a_damaged_file_in_one_line(copy):
    DAMAGES["truncated"](copy.file(f"{UNIT}/test.npz"))
    code, out, err = copy.go(command=["ensemble", "--workdir", str(copy.folder), "--submissions",
                                      str(copy.folder.parent / "subs")])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "test.npz is damaged (cut short or not an archive); run run.sh again with the same options" in err


# ---------------------------------------------------------------- a full disk, injected at the write

class FullDisk:
    """Every atomic write from the `after`-th on fails as a full disk does (ENOSPC)."""

    def __init__(self, after):
        self.after, self.writes, self.refused = after, 0, []

    def __call__(self, tmp, path):
        self.writes += 1
        if self.writes > self.after:
            self.refused.append(Path(path))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        FullDisk.commit(tmp, path)


FullDisk.commit = atomic._commit  # the real one


@pytest.mark.parametrize("after", [0, 5, 12])
def test_a_full_disk_during_a_run_is_one_line_and_the_same_command_then_finishes(
        undisturbed, tmp_path, capsys, monkeypatch, after):
    files, _, expected = undisturbed
    run = Run(files, tmp_path / "run", capsys)
    full = FullDisk(after)
    monkeypatch.setattr(atomic, "_commit", full)
    code, out, err = run.go()
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: no space left on the disk writing {full.refused[0]} (")
    assert "free in" in err and "run the same command again (everything finished is kept)" in err
    assert not list(tmp_path.rglob("*.tmp-*")), "no half-written file left behind"
    assert not run.out.exists()
    monkeypatch.setattr(atomic, "_commit", FullDisk.commit)
    code, out, err = run.go()
    assert code == 0, err
    assert run.out.read_bytes() == expected


def test_a_full_disk_in_the_other_commands_is_one_line(copy, monkeypatch, tmp_path, demo_test):
    import cv2
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), demo_test[1][0])
    monkeypatch.setattr(atomic, "_commit", FullDisk(0))
    subs = ["--submissions", str(tmp_path / "subs2")]
    for command in (["ensemble", "--workdir", str(copy.folder), *subs],
                    ["predict", str(face), "--no-detect", "--workdir", str(copy.folder), "--out", str(tmp_path / "p.csv")],
                    ["export", "--workdir", str(copy.folder), "--out", str(tmp_path / "model.onnx")],
                    ["report", "--workdir", str(copy.folder), "--out", str(tmp_path / "report")]):
        code, out, err = copy.go(command=command)
        assert code == 1 and err.strip().startswith("error: no space left on the disk writing "), (command, err)
        assert not list(tmp_path.rglob("*.tmp-*")), command


def test_a_disk_clearly_too_small_is_refused_before_training(undisturbed, tmp_path, capsys, monkeypatch):
    files, _, _ = undisturbed
    run = Run(files, tmp_path / "run", capsys)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    code, out, err = run.go()
    assert code == 2 and "free, and the units still to train write about" in err, err
    assert not list((tmp_path / "run").glob("round0/*/fold*/checkpoint.pt"))


@pytest.mark.slow
def test_kills_and_damage_at_random_moments_end_in_the_undisturbed_submission():
    from fer_kaggle.bench.chaos import chaos
    # seed 0: a stop three quarters into the run (after the units' first files exist), then a damaged file
    figures = chaos(trials=1, stops=1, seed=0, damage_share=1.0, log=lambda line: None)
    assert figures["stops"] == 1 and figures["damages"] == 1
    assert figures["identical"] == 1 and figures["tracebacks"] == 0, figures["failures"]
