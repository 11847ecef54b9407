"""The whole run on the other input forms: fer2013.csv (held-out accuracy printed once, labels never
used for a choice) and image folders (submission ids are paths). Tiny settings: seconds per run."""
import json
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import TINY
from fer_kaggle import cli
from fer_kaggle.blend import heldout
from fer_kaggle.analysis import report
from fer_kaggle.data.competition import CLASS_NAMES

pytestmark = pytest.mark.slow  # every test here runs a whole pipeline or reads one

N_TRAIN, N_PUBLIC, N_PRIVATE = 240, 30, 30


@pytest.fixture(scope="module")
def rows(demo_train):
    images, labels = demo_train
    n = N_TRAIN + N_PUBLIC + N_PRIVATE
    return images[:n], labels[:n]


def _write_fer2013(path, images, labels):
    usage = ["Training"] * N_TRAIN + ["PublicTest"] * N_PUBLIC + ["PrivateTest"] * N_PRIVATE
    lines = ["emotion,pixels,Usage"] + [f"{label},{' '.join(map(str, image.ravel()))},{use}"
                                        for image, label, use in zip(images, labels, usage)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(capsys, *args):
    code = cli.main([*map(str, args), *TINY])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out


@pytest.fixture(scope="module")
def fer2013_runs(tmp_path_factory, rows):
    """The files of two runs on fer2013.csv files that differ only in their test rows' labels."""
    images, labels = rows
    folder = tmp_path_factory.mktemp("fer2013")
    other_labels = labels.copy()
    other_labels[N_TRAIN:] = (labels[N_TRAIN:] + 3) % 7  # every test label changed
    runs = {}
    for name, file_labels in (("true", labels), ("changed", other_labels)):
        data = _write_fer2013(folder / f"{name}.csv", images, file_labels)
        out = folder / f"{name}_out.csv"
        runs[name] = {"data": data, "out": out, "workdir": folder / f"w_{name}", "labels": file_labels}
    return runs


def test_fer2013_run_scores_public_and_private_once(fer2013_runs, capsys):
    run = fer2013_runs["true"]
    stdout = _run(capsys, run["data"], run["out"], "--workdir", run["workdir"],
                  "--submissions", run["workdir"] / "subs")
    submission = pd.read_csv(run["out"])
    assert submission["id"].tolist() == list(range(N_TRAIN, N_TRAIN + N_PUBLIC + N_PRIVATE))
    lines = stdout.splitlines()
    scored = [i for i, line in enumerate(lines) if line.startswith("held-out test accuracy")]
    assert len(scored) == 1, "the held-out accuracy is printed exactly once"
    assert scored[0] > next(i for i, line in enumerate(lines) if line.startswith("submission:"))
    correct = submission["label"].to_numpy() == run["labels"][N_TRAIN:]
    public, private = correct[:N_PUBLIC].mean(), correct[N_PUBLIC:].mean()
    assert re.search(rf"PublicTest {public:.4f} \({N_PUBLIC} images\), PrivateTest {private:.4f} "
                     rf"\({N_PRIVATE} images\)", lines[scored[0]]), lines[scored[0]]
    splits = {s["split"]: s for s in heldout.load_scores(run["workdir"])["splits"]}
    assert splits["PublicTest"]["accuracy"] == pytest.approx(public)
    assert splits["all"]["accuracy"] == pytest.approx(correct.mean())
    section = report.heldout_section(report.Run(run["workdir"], *[None] * 7))
    assert "Not used for any choice" in section.blocks[0]
    table = section.blocks[1]
    assert table["split"].tolist() == ["PublicTest", "PrivateTest", "all"]
    assert table["accuracy"].tolist() == [round(public, 4), round(private, 4), round(correct.mean(), 4)]


def test_test_labels_change_nothing_but_the_heldout_score(fer2013_runs, capsys):
    """Every test label changed: the same models, blend and submission; only heldout.json differs."""
    first, second = fer2013_runs["true"], fer2013_runs["changed"]
    if not first["out"].exists():
        _run(capsys, first["data"], first["out"], "--workdir", first["workdir"],
             "--submissions", first["workdir"] / "subs")
    _run(capsys, second["data"], second["out"], "--workdir", second["workdir"],
         "--submissions", second["workdir"] / "subs")
    assert first["out"].read_bytes() == second["out"].read_bytes()
    summary = [json.loads((run["workdir"] / "ensemble.json").read_text()) for run in (first, second)]
    assert summary[0]["blends"] == summary[1]["blends"] and summary[0]["models"] == summary[1]["models"]
    for unit in sorted(first["workdir"].glob("round0/*/fold*/test.npz")):
        twin = second["workdir"] / unit.relative_to(first["workdir"])
        with np.load(unit) as a, np.load(twin) as b:
            np.testing.assert_array_equal(a["probs"], b["probs"])
    scores = [heldout.load_scores(run["workdir"])["splits"][-1]["accuracy"] for run in (first, second)]
    assert scores[0] != scores[1]


def _save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def test_image_folder_run_writes_path_ids_and_scores_a_labelled_test(tmp_path, rows, capsys):
    images, labels = rows
    root = tmp_path / "fer2013_images"
    for i in range(N_TRAIN):
        _save(root / "train" / CLASS_NAMES[labels[i]] / f"im{i}.jpg", images[i])
    test_ids = []
    for i in range(N_TRAIN, len(labels)):
        test_ids.append(f"{CLASS_NAMES[labels[i]]}/PrivateTest_{i}.jpg")
        _save(root / "test" / test_ids[-1], images[i])
    out = tmp_path / "out.csv"
    stdout = _run(capsys, root, out, "--workdir", tmp_path / "w", "--submissions", tmp_path / "subs")
    submission = pd.read_csv(out)
    assert submission["id"].tolist() == sorted(test_ids)
    assert f"{root / 'train'}: {N_TRAIN} images" in stdout
    truth = np.array([CLASS_NAMES.index(i.split("/")[0]) for i in submission["id"]])
    accuracy = (submission["label"].to_numpy() == truth).mean()
    assert "held-out test accuracy" in stdout and f"test {accuracy:.4f} ({N_PUBLIC + N_PRIVATE} images)" in stdout
