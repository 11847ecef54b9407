"""The analysis report of a small real run: every section, every figure, numbers equal to the run's files."""
import json
import os
import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pandas as pd
import pytest



from fer_kaggle import cli
from fer_kaggle.data import inputs
from fer_kaggle.run import pipeline
from fer_kaggle.analysis import report
from fer_kaggle.core.config import PRESETS
from fer_kaggle.data.competition import CLASS_NAMES
from fer_kaggle.data.inputs import demo_head as _head

pytestmark = pytest.mark.slow  # every test here runs a whole pipeline or reads one

SECTIONS = ["1. Models", "2. Training curves", "3. Confusion matrix", "4. Saliency maps", "5. Filters",
            "6. A plain DNN against the CNN", "7. Ablations", "8. Pseudo-labelling", "9. Ensemble",
            "10. Held-out test accuracy", "11. Train against test: the shift check", "12. Time budget"]




@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A finished two-fold run with pseudo-labels and ablations, and its report."""
    tmp = tmp_path_factory.mktemp("report")
    train, test = _head("train.csv.xz", 600, tmp / "train.csv"), _head("test.csv.xz", 80, tmp / "test.csv")
    cfg = PRESETS["demo"].replace(backbones=("fer_vgg_tiny",), folds=2, epochs=2, pseudo_threshold=0.25,
                                  ablation=True)
    pipeline.run(cfg, inputs.resolve([train, test]), None, tmp / "run", tmp / "subs")
    report.build(tmp / "run", tmp / "report")
    return tmp / "run", tmp / "report"


def test_every_section_is_in_both_pages(built):
    _, out = built
    markdown, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    for title in SECTIONS:
        assert f"## {title}" in markdown and f"<h2>{title}</h2>" in page
    assert "Not in this run" not in markdown


def test_shift_section_shows_the_runs_figures(built):
    run_dir, out = built
    figures = json.loads((run_dir / "shift.json").read_text())
    markdown = (out / "report.md").read_text()
    section = markdown.split("## 11. Train against test")[1]
    assert f"test image: {figures['inputs']['adversarial_auc']:.3f}" in section
    sharp = figures["inputs"]["stats"]["sharpness"]
    assert f"| sharpness (mean |Laplacian|) | {sharp['train_median']} | {sharp['test_median']} |" in section
    assert "shift.png" in section and (out / "shift.png").exists()
    assert section.count("\n| 0 | ") + section.count("\n| 1 | ") == 2  # one row per fold after round 0


def test_every_named_image_exists_and_is_not_blank(built):
    _, out = built
    page = (out / "index.html").read_text()
    names = re.findall(r'<img src="([^"]+)"', page)
    assert len(names) >= 8
    assert sorted(names) == sorted(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text()))
    for name in names:
        pixels = matplotlib.image.imread(out / name)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200, name
        assert pixels[..., :3].std() > 0.02, f"{name} is blank"


def test_numbers_equal_those_computed_from_the_run_files(built):
    run_dir, out = built
    markdown = (out / "report.md").read_text()
    labels = pd.read_csv(run_dir / "folds.csv")["label"].to_numpy()
    oofs = {}
    for model_dir in sorted(run_dir.glob("round*/*/")):
        oof = np.zeros((len(labels), 7))
        for unit in model_dir.glob("fold*/"):
            with np.load(unit / "oof.npz") as saved:
                oof[saved["rows"]] = saved["probs"]
        oofs[f"{model_dir.parent.name}/{model_dir.name}"] = oof
        assert f"| {model_dir.parent.name}/{model_dir.name} | {round((oof.argmax(1) == labels).mean(), 4)} |" \
            in markdown
    mean_acc = (np.mean(list(oofs.values()), axis=0).argmax(1) == labels).mean()
    assert f"Ensemble mean: OOF accuracy {mean_acc:.4f}." in markdown
    saved = json.loads((run_dir / "ensemble.json").read_text())
    assert f"Ensemble weighted: OOF accuracy {saved['blends']['weighted']['oof_acc']:.4f}." in markdown
    # pseudo-labels per class: the table equals the CSV the run wrote
    [table_path] = (run_dir / "round1").glob("pseudo_labels-*.csv")
    table = pd.read_csv(table_path)
    for label, name in enumerate(CLASS_NAMES):
        counts = [int(((table["label"] == label) & (table["fold"] == k)).sum()) for k in range(2)]
        assert f"| {name} | {counts[0]} | {counts[1]} |" in markdown


def test_confusion_sentence_and_class_table(built):
    run_dir, out = built
    markdown = (out / "report.md").read_text()
    assert re.search(r"Most confused: (\w+ is taken for \w+ in \d+\.\d% of cases; ){2}\w+ is taken for", markdown)
    for name in CLASS_NAMES:
        assert re.search(rf"\| {name} \| [\d.]+ \| [\d.]+ \| [\d.]+ \| \d+ \|", markdown), name


def test_dnn_and_ablation_tables(built):
    _, out = built
    markdown = (out / "report.md").read_text()
    assert re.search(r"\| fer_vgg_tiny \| CNN \| 294,615 \|", markdown)
    assert re.search(r"\| fer_dnn_tiny \| DNN \| 284,647 \|", markdown)
    for variant in ("baseline (as configured)", "without normalisation (pixels / 255)", "without augmentation"):
        assert f"| {variant} | " in markdown
    assert "**fer_vgg_tiny**: 294,615 parameters" in markdown


def test_missing_parts_are_named(tmp_path):
    train, test = _head("train.csv.xz", 300, tmp_path / "train.csv"), _head("test.csv.xz", 40, tmp_path / "t.csv")
    cfg = PRESETS["demo"].replace(backbones=("fer_resnet_tiny",), folds=2, epochs=1, pseudo=False)
    pipeline.run(cfg, inputs.resolve([train, test]), None, tmp_path / "run", tmp_path / "subs")
    assert cli.main(["report", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown.count("Not in this run") == 3  # DNN, ablations, pseudo-labelling
    assert "## 9. Ensemble" in markdown
    assert "## 10. Held-out test accuracy\n\nNone: this run's test data carried no labels" in markdown


def test_no_run_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", "--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "no run here" in capsys.readouterr().err


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not _chromium() and not os.environ.get("CI"), reason="chromium is not installed (.ci/run installs it)")
def test_page_renders_in_headless_chromium_with_every_image(built, tmp_path):
    _, out = built
    assert _chromium(), "CI must have chromium: .ci/run installs it"
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
         (out / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    dom = result.stdout
    images = len(re.findall(r"<img ", (out / "index.html").read_text()))
    assert f'data-images-loaded="{images}"' in dom, result.stderr[-2000:]
    assert 'data-broken-images=""' in dom


def test_unfinished_run_leaves_no_report(tmp_path, built):
    run_dir, _ = built
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    for metrics in partial.glob("round*/*/fold1/metrics.json"):
        metrics.unlink()  # no model has all its folds any more
    assert cli.main(["report", "--workdir", str(partial), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob("r.tmp-*"))


def test_failing_step_leaves_no_half_written_report(tmp_path, built, capsys):
    run_dir, _ = built
    assert cli.main(["report", "--workdir", str(run_dir), "--out", str(tmp_path / "r"), "--layer", "no.such"]) == 2
    assert "--layer no.such: no such convolution" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob("r.tmp-*"))


def test_per_unit_accuracies_equal_the_unit_files(built):
    run_dir, out = built
    markdown = (out / "report.md").read_text()
    for path in run_dir.glob("round*/*/fold*/metrics.json"):
        metrics = json.loads(path.read_text())
        assert f"| {metrics['unit']} | {round(metrics['valid_acc'], 4)} | {metrics['train_rows']} |" in markdown


def test_budget_section_compares_the_plan_with_what_happened(built):
    run_dir, out = built
    saved = json.loads((run_dir / "plan.json").read_text())
    section = (out / "report.md").read_text().split("## 12. Time budget")[1]
    assert f"Budget {saved['plan']['budget']:g} minutes" in section and f"spent {saved['spent_seconds'] / 60:.1f}" in section
    assert "budget.png" in section and (out / "budget.png").exists()
