"""Bad inputs through the real command line: exit status 2, one `error:` line, no traceback, nothing written."""
import lzma
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fer_kaggle" / "demo_data"
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
    out = list(lines)
    out[index + 1] = row
    return out


def _run(tmp_path, *files):
    """Run `python -m fer_kaggle FILES... --workdir W --preset demo` in tmp_path, on this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["FER_KAGGLE_HOME"] = str(tmp_path)
    command = [sys.executable, "-m", "fer_kaggle", *map(str, files),
               "--workdir", str(tmp_path / "w"), "--preset", "demo", "--device", "cpu"]
    # A run that wrongly starts training would take minutes: the timeout turns that into a failure.
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def _assert_refused(result, *fragments):
    """Exit 2, exactly one `error:` line on stderr naming every fragment, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        if isinstance(fragment, re.Pattern):
            assert fragment.search(errors[0]), (fragment.pattern, errors[0])
        else:
            assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _line(n):
    return re.compile(rf"\bline {n}\b")


@pytest.fixture
def files(tmp_path):
    """A valid small train and test file, and an output path beside them."""
    train = _write(tmp_path / "train.csv", TRAIN_LINES)
    test = _write(tmp_path / "test.csv", TEST_LINES)
    return train, test, tmp_path / "out.csv"


def _nothing_trained(tmp_path):
    workdir = tmp_path / "w"
    assert not (workdir / "round0").exists()
    assert not (workdir / "folds.csv").exists()
    assert not (tmp_path / "submissions").exists() or not any((tmp_path / "submissions").iterdir())


def test_bad_train_row(tmp_path, files):
    train, test, out = files
    _write(train, _with_row(TRAIN_LINES, 1, f"7,{PIXELS}"))
    _assert_refused(_run(tmp_path, train, test, out), str(train), _line(3), "label 7 is outside 0-6")
    assert not out.exists()
    _nothing_trained(tmp_path)


def test_bad_test_row_is_found_before_training(tmp_path, files):
    train, test, out = files
    values = PIXELS.split()
    values[10] = "256"
    _write(test, _with_row(TEST_LINES, 2, "17," + " ".join(values)))
    _assert_refused(_run(tmp_path, train, test, out), str(test), _line(4), "'256'", "0 to 255")
    assert not out.exists()
    _nothing_trained(tmp_path)


def test_swapped_train_and_test(tmp_path, files):
    train, test, out = files
    message = _assert_refused(_run(tmp_path, test, train, out), str(test), _line(1), "swapped")
    assert "'id,feature'" in message
    assert not out.exists()
    _nothing_trained(tmp_path)


def test_output_folder_does_not_exist(tmp_path, files):
    train, test, _ = files
    out = tmp_path / "no_such_folder" / "out.csv"
    _assert_refused(_run(tmp_path, train, test, out), str(out), "does not exist")
    assert not out.parent.exists()
    assert not (tmp_path / "w").exists(), "the output path must be checked before any work starts"


def test_output_path_is_a_folder(tmp_path, files):
    train, test, _ = files
    out = tmp_path / "results"
    out.mkdir()
    _assert_refused(_run(tmp_path, train, test, out), str(out), "is a folder")
    assert out.is_dir() and not any(out.iterdir())
    assert not (tmp_path / "w").exists(), "the output path must be checked before any work starts"


def test_only_two_positional_files(tmp_path, files):
    train, test, out = files
    _assert_refused(_run(tmp_path, train, test), "TRAIN TEST OUT")
    assert not out.exists()
    assert not (tmp_path / "w").exists()


def test_missing_train_file(tmp_path, files):
    _, test, out = files
    train = tmp_path / "train.csv.xz"
    _assert_refused(_run(tmp_path, train, test, out), str(train), "no such file")
    assert not out.exists()
    _nothing_trained(tmp_path)


def test_truncated_test_file(tmp_path, files):
    train, _, out = files
    whole = (DEMO / "test.csv.xz").read_bytes()
    test = tmp_path / "test.csv.xz"
    test.write_bytes(whole[: len(whole) // 2])
    _assert_refused(_run(tmp_path, train, test, out), str(test), "corrupt or truncated xz")
    assert not out.exists()
    _nothing_trained(tmp_path)
