"""Bad inputs through the real command line: exit status 2, one `error:` line, no traceback, nothing written.

Each case runs `python -m fer_kaggle TRAIN TEST OUT --workdir W --preset demo` in a subprocess, in its
own folder. Starting the CLI imports torch and timm (about 5 s of CPU), so the fixture `cli` runs the
selected cases a few at a time in parallel, then each test checks its own case's result.
"""
import concurrent.futures
import lzma
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import DEMO, ROOT

N_ROWS = 6
TIMEOUT_S = 180  # a case that wrongly starts training takes minutes: the timeout makes that a failure


def _bundled_lines(name, n=N_ROWS):
    with lzma.open(DEMO / name) as f:
        lines = f.read(200_000).decode().splitlines()
    return lines[: n + 1]


TRAIN_LINES = _bundled_lines("train.csv.xz")
TEST_LINES = _bundled_lines("test.csv.xz")
PIXELS = TRAIN_LINES[1].split(",")[1]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _with_row(lines, index, row):
    """`lines` with data row `index` (0 = first data row, on line 2) replaced by `row`."""
    out = list(lines)
    out[index + 1] = row
    return out


def _valid_files(folder):
    return _write(folder / "train.csv", TRAIN_LINES), _write(folder / "test.csv", TEST_LINES), folder / "out.csv"


# ---------------------------------------------------------------- the cases: folder -> (positional args, paths)

CASES = {}


def case(function):
    CASES[function.__name__] = function
    return function


@case
def bad_train_row(folder):
    train, test, out = _valid_files(folder)
    _write(train, _with_row(TRAIN_LINES, 1, f"7,{PIXELS}"))
    return [train, test, out], dict(train=train, test=test, out=out)


@case
def bad_test_row(folder):
    train, test, out = _valid_files(folder)
    values = PIXELS.split()
    values[10] = "256"
    _write(test, _with_row(TEST_LINES, 2, "17," + " ".join(values)))
    return [train, test, out], dict(train=train, test=test, out=out)


@case
def swapped(folder):
    train, test, out = _valid_files(folder)
    return [test, train, out], dict(train=train, test=test, out=out)


@case
def out_folder_missing(folder):
    train, test, _ = _valid_files(folder)
    out = folder / "no_such_folder" / "out.csv"
    return [train, test, out], dict(out=out)


@case
def out_is_a_folder(folder):
    train, test, _ = _valid_files(folder)
    out = folder / "results"
    out.mkdir()
    return [train, test, out], dict(out=out)


@case
def two_positional(folder):
    """`run.sh train.csv test.csv`, OUT forgotten: test.csv must not be taken for OUT and overwritten."""
    train, test, out = _valid_files(folder)
    return [train, test], dict(out=out, test=test)


@case
def four_positional(folder):
    train, test, out = _valid_files(folder)
    return [train, test, out, out], dict(out=out)


@case
def missing_train_file(folder):
    _, test, out = _valid_files(folder)
    train = folder / "train.csv.xz"
    return [train, test, out], dict(train=train, out=out)


@dataclass
class Run:
    folder: Path
    paths: dict
    returncode: int
    stdout: str
    stderr: str


def _run(name, folder):
    args, paths = CASES[name](folder)
    env = dict(os.environ)
    # The package is not necessarily installed: run this checkout's copy.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["FER_KAGGLE_HOME"] = str(folder)
    command = [sys.executable, "-m", "fer_kaggle", *map(str, args),
               "--workdir", str(folder / "w"), "--preset", "demo", "--device", "cpu"]
    try:
        result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        return Run(folder, paths, None, str(exc.stdout), f"timed out after {TIMEOUT_S} s: training started?")
    return Run(folder, paths, result.returncode, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def cli(request, tmp_path_factory):
    """{case name: Run} for the cases whose tests were selected, run in parallel."""
    selected = {item.name.removeprefix("test_") for item in request.session.items
                if item.module is request.module} & set(CASES)
    workers = max(2, min(4, os.cpu_count() or 2))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(_run, name, tmp_path_factory.mktemp(name)) for name in sorted(selected)}
        return {name: future.result() for name, future in futures.items()}


# ---------------------------------------------------------------- checks

def _line(n):
    return re.compile(rf"\bline {n}\b")


def _assert_refused(run, *fragments):
    """Exit 2, exactly one `error:` line on stderr naming every fragment, and no traceback."""
    assert run.returncode == 2, (run.returncode, run.stdout[-2000:], run.stderr[-3000:])
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    for fragment in fragments:
        if isinstance(fragment, re.Pattern):
            assert fragment.search(errors[0]), (fragment.pattern, errors[0])
        else:
            assert fragment in errors[0], (fragment, errors[0])
    assert not run.paths["out"].is_file(), "the output file was written"
    return errors[0]


def _nothing_trained(run):
    workdir = run.folder / "w"
    assert not (workdir / "round0").exists(), "training started before both inputs were validated"
    assert not (workdir / "folds.csv").exists()
    submissions = run.folder / "submissions"
    assert not submissions.exists() or not any(submissions.iterdir())


def _no_work_started(run):
    assert not (run.folder / "w").exists(), "the command line must be checked before any work starts"
    _nothing_trained(run)


@pytest.mark.slow  # a subprocess per case (torch and timm imported in each)
def test_bad_train_row(cli):
    run = cli["bad_train_row"]
    _assert_refused(run, str(run.paths["train"]), _line(3), "label 7 is outside 0-6")
    _nothing_trained(run)


@pytest.mark.slow  # a subprocess per case (torch and timm imported in each)
def test_bad_test_row(cli):
    """Both inputs are validated before training: a bad test file stops the run before round 0."""
    run = cli["bad_test_row"]
    _assert_refused(run, str(run.paths["test"]), _line(4), "'256'", "0 to 255")
    _nothing_trained(run)


@pytest.mark.slow  # a subprocess per case (torch and timm imported in each)
def test_swapped(cli):
    run = cli["swapped"]
    message = _assert_refused(run, str(run.paths["test"]), _line(1), "'id,feature'", "swapped")
    assert str(run.paths["train"]) not in message
    _nothing_trained(run)


@pytest.mark.slow  # a subprocess per case (torch and timm imported in each)
def test_out_folder_missing(cli):
    run = cli["out_folder_missing"]
    _assert_refused(run, str(run.paths["out"]), "does not exist")
    assert not run.paths["out"].parent.exists()
    _no_work_started(run)


@pytest.mark.slow  # a subprocess per case (torch and timm imported in each)
def test_out_is_a_folder(cli):
    run = cli["out_is_a_folder"]
    _assert_refused(run, str(run.paths["out"]), "is a folder")
    assert run.paths["out"].is_dir() and not any(run.paths["out"].iterdir())
    _no_work_started(run)


@pytest.mark.slow  # a subprocess per case (torch and timm imported in each)
def test_two_positional(cli):
    run = cli["two_positional"]
    _assert_refused(run, str(run.paths["test"]), "is not a submission", "refusing to overwrite", "TRAIN TEST OUT")
    assert run.paths["test"].read_text() == "\n".join(TEST_LINES) + "\n"
    _no_work_started(run)


@pytest.mark.slow  # a subprocess per case (torch and timm imported in each)
def test_four_positional(cli):
    run = cli["four_positional"]
    _assert_refused(run, "got 4 paths", "TRAIN TEST OUT", "DATA OUT")
    _no_work_started(run)


@pytest.mark.slow  # a subprocess per case (torch and timm imported in each)
def test_missing_train_file(cli):
    run = cli["missing_train_file"]
    _assert_refused(run, str(run.paths["train"]), "no such file")
    _nothing_trained(run)


def test_unknown_backbone_is_refused_before_any_work(tmp_path, capsys):
    from fer_kaggle.cli import main
    code = main([str(DEMO / "train.csv.xz"), str(DEMO / "test.csv.xz"), str(tmp_path / "out.csv"),
                 "--backbones", "fer_vgg_tiny,no_such_net", "--workdir", str(tmp_path / "w")])
    assert code == 2
    assert "unknown backbone(s) no_such_net" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "out.csv").exists()


@pytest.mark.slow  # times real steps of the full preset's models
def test_gpu_preset_on_a_cpu_says_how_long_and_stops(tmp_path, capsys, monkeypatch):
    import torch
    from fer_kaggle.cli import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main([str(DEMO / "train.csv.xz"), str(DEMO / "test.csv.xz"), str(tmp_path / "out.csv"),
                 "--preset", "full", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2
    assert "preset 'full' trains" in err and "hours" in err and "--preset cpu" in err
    assert not (tmp_path / "w" / "round0").exists() and not (tmp_path / "out.csv").exists()
