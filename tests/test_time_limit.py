"""--time-limit: the run stops cleanly after an epoch (exit 3, nothing half-written), and the same
command without it continues where it stopped, to the same submission as a run never stopped."""

import pytest

import conftest
from fer_kaggle import cli
from fer_kaggle.data.inputs import demo_head as _head

pytestmark = pytest.mark.slow  # every test here runs a whole pipeline or reads one

TINY = [*conftest.TINY, "--epochs", "2"]




def test_time_limit_stops_after_an_epoch_and_the_same_command_resumes(tmp_path, capsys):
    train, test = _head("train.csv.xz", 300, tmp_path / "train.csv"), _head("test.csv.xz", 40, tmp_path / "test.csv")

    def run(name, *extra):
        out = tmp_path / f"{name}.csv"
        code = cli.main([str(train), str(test), str(out), "--workdir", str(tmp_path / name),
                              "--submissions", str(tmp_path / "subs"), *TINY, *extra])
        return code, out, capsys.readouterr()

    code, out, captured = run("stopped", "--time-limit", "0.0001")
    assert code == 3, captured.err[-2000:]
    assert "time limit of 0.0001 minutes reached" in captured.err and "run the same command again" in captured.err.lower()
    assert not out.exists(), "no submission from an unfinished run"
    [unit] = (tmp_path / "stopped" / "round0").glob("fer_vgg_tiny-*/fold0")
    assert (unit / "checkpoint.pt").exists() and not (unit / "metrics.json").exists()
    assert not list((tmp_path / "stopped").rglob("*.tmp-*"))

    code, out, captured = run("stopped")
    assert code == 0, captured.err[-2000:]
    assert "0 of 2 units already finished" in captured.out
    code, straight, captured = run("straight")
    assert code == 0
    assert out.read_bytes() == straight.read_bytes()
