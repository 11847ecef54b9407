"""The automatic preset choice (by a seam, not a GPU) and the cpu preset's own settings."""
import pytest

from fer_kaggle import cli
from fer_kaggle.run import pipeline
from fer_kaggle.core.config import PRESETS
from fer_kaggle.data.inputs import DEMO_TEST, DEMO_TRAIN, demo_head


@pytest.mark.parametrize("asked, demo, cuda, chosen", [
    (None, False, False, "cpu"),
    (None, False, True, "full"),
    (None, True, False, "demo"),
    (None, True, True, "demo"),
    ("fast", False, False, "fast"),
    ("cpu", False, True, "cpu"),
    ("demo", False, False, "demo"),
])
def test_choose_preset(asked, demo, cuda, chosen):
    assert pipeline.choose_preset(asked, demo, cuda)[0] == chosen


@pytest.mark.parametrize("cuda, chosen, why", [(False, "cpu", "no CUDA device"),
                                               (True, "full", "a CUDA device is present")])
def test_files_without_preset_run_the_machines_preset_and_say_so(cuda, chosen, why, tmp_path, monkeypatch,
                                                                 capsys):
    """`bash run.sh TRAIN TEST OUT` with no --preset: the preset is picked from the machine and printed
    before any work; an explicit --preset still wins."""
    ran = []
    monkeypatch.setattr(pipeline, "cuda_available", lambda: cuda)
    monkeypatch.setattr(pipeline, "run", lambda cfg, *rest, **kw: ran.append(cfg))
    paths = [str(DEMO_TRAIN), str(DEMO_TEST), str(tmp_path / "out.csv"), "--workdir", str(tmp_path / "w")]
    assert cli.main(paths) == 0
    assert ran[-1] == PRESETS[chosen].replace(preset=chosen)
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith(f"preset {chosen} (chosen automatically") and why in first_line
    assert cli.main(paths + ["--preset", "demo"]) == 0
    assert ran[-1].preset == "demo" and capsys.readouterr().out.startswith("preset demo (--preset)")


def test_cpu_preset_is_cpu_sized():
    """No GPU-only setting in the cpu preset: no compile, batched augmentation on the CPU itself, bf16 where
    native; its backbones are the CPU ones."""
    cfg = PRESETS["cpu"]
    assert not cfg.compile and cfg.device == "auto" and cfg.amp == "auto"
    assert all(name.endswith("_cpu") or name.endswith("_cpu2") for name in cfg.backbones)


@pytest.mark.slow
def test_cpu_preset_runs_end_to_end_on_the_bundled_sample(tmp_path, capsys):
    """The preset's whole pipeline (one epoch, two folds, on 600 rows of the sample): folds, units two side by
    side in the local process pool (one at a time is every other run's way), ten-crop TTA, ensemble, submission."""
    out = tmp_path / "out.csv"
    train = demo_head("train.csv.xz", 600, tmp_path / "train.csv")
    test = demo_head("test.csv.xz", 100, tmp_path / "test.csv")
    code = cli.main([str(train), str(test), str(out), "--preset", "cpu", "--epochs", "1", "--folds", "2",
                     "--budget", "0", "--parallel-units", "2", "--workdir", str(tmp_path / "w"),
                     "--submissions", str(tmp_path / "subs")])
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 101
    printed = capsys.readouterr().out
    assert "ensemble OOF accuracy" in printed
    assert "2 units side by side" in printed
    workdir = tmp_path / "w"
    units = sorted(p.parent.relative_to(workdir).as_posix() for p in workdir.glob("round*/*/*/metrics.json"))
    cfg = PRESETS["cpu"]
    rounds = (0, 1) if cfg.pseudo else (0,)
    unkeyed = sorted(unit.rsplit("-", 1)[0] + "/" + unit.rsplit("/", 1)[1] for unit in units)  # <backbone>-<key>
    assert unkeyed == sorted(f"round{r}/{b}/fold{k}" for r in rounds for b in cfg.backbones for k in range(2))
