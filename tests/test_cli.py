"""One command line: `fer-kaggle COMMAND`, `python -m fer_kaggle[.COMMAND]` and `bash run.sh` agree."""
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO, ROOT, TINY

from fer_kaggle import cli
from fer_kaggle.core.config import PRESETS
from fer_kaggle.data.inputs import demo_head



def _help(capsys, *argv):
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    printed = capsys.readouterr().out
    for word in ("run", "ensemble", "report", "predict", "export", "bench"):
        assert f"\n    {word} " in printed, word


def test_run_help_shows_each_presets_values(capsys):
    """The help shows each preset's value of an option (not None before the preset resolves), and only the
    presets that exist."""
    printed = " ".join(_help(capsys, "run").split())
    epochs = ", ".join(f"{name} {cfg.epochs}" for name, cfg in PRESETS.items())
    assert f"({epochs})" in printed
    assert "(default 2013)" in printed  # --seed: the same in every preset
    assert "gpu" not in printed.lower().replace("gpu_augment", "")
    for name in PRESETS:
        assert name in printed


@pytest.mark.parametrize("argv, command", [
    (["report", "--out", "r"], "report"),
    (["ensemble"], "ensemble"),
    (["./report", "out.csv"], "run"),
    (["train.csv", "test.csv", "out.csv"], "run"),
    (["run", "report", "out.csv"], "run"),
    ([], "run"),
])
def test_a_command_word_wins_over_data(argv, command):
    assert cli.split_command(argv)[0] == command


def test_a_word_is_a_command_even_where_a_folder_has_its_name(tmp_path, monkeypatch, capsys):
    (tmp_path / "report").mkdir()
    monkeypatch.chdir(tmp_path)
    assert "--per-class" in _help(capsys, "report")


@pytest.mark.parametrize("command", ["ensemble", "report", "export", "predict"])
def test_every_command_reports_errors_the_same_way(command, tmp_path, capsys):
    extra = {"report": ["--out", str(tmp_path / "r")], "export": ["--out", str(tmp_path / "m.onnx")],
             "predict": [str(DEMO)]}.get(command, [])
    code = cli.main([command, "--workdir", str(tmp_path / "nothing"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'nothing'}: no run here (no folds.json); run run.sh first or pass --workdir"]
    assert "Traceback" not in err


@pytest.mark.slow
def test_fer_kaggle_is_an_installed_command():
    """The environment running the tests (run.sh's .venv) has the `fer-kaggle` command, and it works."""
    script = Path(sys.executable).parent / "fer-kaggle"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ensemble" in result.stdout and "--epochs" in result.stdout


@pytest.mark.slow
def test_run_sh_test_is_the_test_suite_even_beside_a_test_folder(tmp_path):
    """`bash run.sh test` is the test suite, also where the current folder holds a folder named test/."""
    (tmp_path / "test").mkdir()
    result = subprocess.run(["bash", str(ROOT / "run.sh"), "test", "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pytest" in result.stdout + result.stderr


def test_the_options_page_is_the_parsers_own():
    page = (ROOT / "docs" / "options.md").read_text()
    assert page == cli.options_markdown(), "docs/options.md is stale: regenerate it with the command at its top"
    assert "`--budget` MINUTES" in page and "`--pseudo`, `--no-pseudo`" in page


@pytest.mark.parametrize("command, module, extra", [("report", "captum", "report"), ("export", "onnxruntime", "serve"),
                                                    ("run", "matplotlib", "report")])
def test_a_missing_extra_is_one_line_with_the_pip_command(command, module, extra, tmp_path, monkeypatch, capsys):
    for name in [name for name in sys.modules if name.startswith(f"{module}.")]:
        monkeypatch.setitem(sys.modules, name, None)  # an earlier test imported it: each part is refused too
    monkeypatch.setitem(sys.modules, module, None)  # `import module` fails as if it were not installed
    for name in [name for name in sys.modules if name.startswith(("fer_kaggle.analysis", "fer_kaggle.serve"))]:
        monkeypatch.delitem(sys.modules, name)  # imported again, as in a fresh process
    argv = {"report": ["report", "--out", str(tmp_path / "r")], "export": ["export", "--out", str(tmp_path / "m.onnx")],
            "run": [str(DEMO / "train.csv.xz"), str(DEMO / "test.csv.xz"), str(tmp_path / "out.csv"),
                    "--report", str(tmp_path / "r"), *TINY]}[command]
    assert cli.main([*argv, "--workdir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {command} needs {module}, part of the optional extra [{extra}]: pip install 'fer_kaggle[{extra}]' "
        f"(bash run.sh installs it)"]
    assert not (tmp_path / "run").exists(), "refused before anything was read or trained"


@pytest.mark.parametrize("command", ["ensemble", "report", "predict", "export", "bench"])
def test_python_m_fer_kaggle_command_is_that_command(command, monkeypatch, capsys):
    """`python -m fer_kaggle.<command> ARGS` (README's form) runs `fer-kaggle <command> ARGS`."""
    monkeypatch.setattr(sys, "argv", [f"fer_kaggle.{command}", "--help"])
    with pytest.raises(SystemExit) as stopped:  # --help: argparse prints and exits 0
        runpy.run_module(f"fer_kaggle.{command}", run_name="__main__")
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: fer-kaggle {command} ")


@pytest.mark.slow
def test_the_base_install_trains_and_submits_without_the_extras(tmp_path, monkeypatch, capsys):
    """A run with none of the optional extras importable (as after `pip install fer_kaggle` alone)."""
    extras = [module for module, extra in cli.optional_modules().items() if extra in ("report", "serve")]
    assert {"captum", "onnxruntime"} <= set(extras)
    for name in [name for name in sys.modules if name.partition(".")[0] in extras]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in extras:
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "out.csv"
    train = demo_head("train.csv.xz", 300, tmp_path / "train.csv")
    test = demo_head("test.csv.xz", 40, tmp_path / "test.csv")
    code = cli.main([str(train), str(test), str(out), "--workdir", str(tmp_path / "run"),
                     "--submissions", str(tmp_path / "subs"), *TINY, "--budget", "0"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert out.read_text().startswith("id,label\n")

