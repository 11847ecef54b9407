"""The bundled sample is the sharp train file's, and a demo folder from an older sample never blocks the demo."""
import json

import cv2
import numpy as np

import pytest

from fer_kaggle import cli
from fer_kaggle.run import pipeline
from fer_kaggle.data.competition import fingerprint
from fer_kaggle.data.inputs import DEMO_TRAIN


def test_bundled_sample_is_sharp_and_stratified(demo_train):
    """Drawn from the replaced train file: sharp faces (the old blurred file's median mean |Laplacian| was
    1.9, the real faces' about 28), each class at its share of the full file within one row."""
    images, labels = demo_train
    sharpness = [np.abs(cv2.Laplacian(face.astype(np.float32), cv2.CV_32F)).mean() for face in images]
    assert np.median(sharpness) > 20
    full_counts = np.array([3995, 436, 4097, 7215, 4830, 3171, 4965])  # the full file's (its README)
    expected = full_counts / full_counts.sum() * len(labels)
    assert np.abs(np.bincount(labels, minlength=7) - expected).max() <= 1


@pytest.mark.slow
def test_an_old_demo_folder_is_moved_aside_and_the_demo_runs(tmp_path, capsys):
    workdir = tmp_path / "demo"
    (workdir / "round0").mkdir(parents=True)
    (workdir / "folds.json").write_text(json.dumps({"train_fingerprint": "0123456789ab" + "f" * 52,
                                                    "folds": 3, "seed": 2013}))
    (workdir / "round0" / "marker").write_text("the old run")
    code = cli.main(["--workdir", str(workdir), "--epochs", "1", "--folds", "2", "--no-pseudo", "--backbones",
                     "fer_vgg_tiny", "--budget", "0", "--submissions", str(tmp_path / "subs")])
    assert code == 0
    aside = tmp_path / "demo-0123456789ab"
    assert (aside / "round0" / "marker").read_text() == "the old run", "the old run is kept"
    assert json.loads((workdir / "folds.json").read_text())["train_fingerprint"] == fingerprint(DEMO_TRAIN)
    assert "moved to" in capsys.readouterr().out
    assert pipeline.set_aside_old_demo(workdir) is None, "the current sample's folder stays"
