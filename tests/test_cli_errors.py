"""Bad inputs through the command line: exit status 2, one `error:` line, no traceback, nothing written.

Each case is `fer-kaggle TRAIN TEST OUT --workdir W --preset demo` (cli.main, in this process: what
`python -m fer_kaggle` runs after its imports) in its own folder, the project's home for submissions/.
"""
import lzma
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import DEMO
from fer_kaggle import cli

N_ROWS = 6


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


@pytest.fixture
def run_case(tmp_path, capsys, monkeypatch):
    """fn(case name) -> Run: the case's command in tmp_path, its exit status and printed lines."""
    def run(name):
        args, paths = CASES[name](tmp_path)
        monkeypatch.setattr(cli, "HOME", tmp_path)  # submissions/ defaults to the project's home
        monkeypatch.chdir(tmp_path)
        code = cli.main([*map(str, args), "--workdir", str(tmp_path / "w"), "--preset", "demo", "--device", "cpu"])
        printed = capsys.readouterr()
        return Run(tmp_path, paths, code, printed.out, printed.err)
    return run


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


def test_bad_train_row(run_case):
    run = run_case("bad_train_row")
    _assert_refused(run, str(run.paths["train"]), _line(3), "label 7 is outside 0-6")
    _nothing_trained(run)


def test_bad_test_row(run_case):
    """Both inputs are validated before training: a bad test file stops the run before round 0."""
    run = run_case("bad_test_row")
    _assert_refused(run, str(run.paths["test"]), _line(4), "'256'", "0 to 255")
    _nothing_trained(run)


def test_swapped(run_case):
    run = run_case("swapped")
    message = _assert_refused(run, str(run.paths["test"]), _line(1), "'id,feature'", "swapped")
    assert str(run.paths["train"]) not in message
    _nothing_trained(run)


def test_out_folder_missing(run_case):
    run = run_case("out_folder_missing")
    _assert_refused(run, str(run.paths["out"]), "does not exist")
    assert not run.paths["out"].parent.exists()
    _no_work_started(run)


def test_out_is_a_folder(run_case):
    run = run_case("out_is_a_folder")
    _assert_refused(run, str(run.paths["out"]), "is a folder")
    assert run.paths["out"].is_dir() and not any(run.paths["out"].iterdir())
    _no_work_started(run)


def test_two_positional(run_case):
    run = run_case("two_positional")
    _assert_refused(run, str(run.paths["test"]), "is not a submission", "refusing to overwrite", "TRAIN TEST OUT")
    assert run.paths["test"].read_text() == "\n".join(TEST_LINES) + "\n"
    _no_work_started(run)


def test_four_positional(run_case):
    run = run_case("four_positional")
    _assert_refused(run, "got 4 paths", "TRAIN TEST OUT", "DATA OUT")
    _no_work_started(run)


def test_missing_train_file(run_case):
    run = run_case("missing_train_file")
    _assert_refused(run, str(run.paths["train"]), "no such file")
    _nothing_trained(run)


def test_unknown_backbone_is_refused_before_any_work(tmp_path, capsys):
    code = cli.main([str(DEMO / "train.csv.xz"), str(DEMO / "test.csv.xz"), str(tmp_path / "out.csv"),
                 "--backbones", "fer_vgg_tiny,no_such_net", "--workdir", str(tmp_path / "w")])
    assert code == 2
    assert "unknown backbone(s) no_such_net" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "out.csv").exists()


@pytest.mark.slow  # times real steps of the full preset's models
def test_gpu_preset_on_a_cpu_says_how_long_and_stops(tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = cli.main([str(DEMO / "train.csv.xz"), str(DEMO / "test.csv.xz"), str(tmp_path / "out.csv"),
                 "--preset", "full", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2
    assert "preset 'full' trains" in err and "hours" in err and "--preset cpu" in err
    assert not (tmp_path / "w" / "round0").exists() and not (tmp_path / "out.csv").exists()
