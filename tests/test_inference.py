"""load_ensemble: a finished run as one module whose output equals the run's own saved probabilities."""
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from fer_kaggle.training import augment
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.serve.inference import UnitModule, load_ensemble, load_unit

pytestmark = pytest.mark.slow  # every test here runs a whole pipeline or reads one

SPACE_KEYS = {"prob": "probs", "logit": "probs_logit"}  # the test.npz key of each TTA average
CROPPED = "round0/fer_resnet_tiny/fold1"  # 44 px crops, EMA weights, ten-crop TTA
PLAIN = "round0/fer_vgg_tiny/fold0"       # whole 48 px faces, flip TTA


def _saved(workdir, unit, key="probs"):
    with np.load(workdir / unit / "test.npz") as saved:
        return saved[key]


def _predict(module, images):
    with torch.inference_mode():
        return module(torch.as_tensor(images)[:, None]).numpy()


def test_ensemble_module_equals_the_runs_saved_blend(finished_run, finished_run_blend):
    workdir, test_images = finished_run
    module = load_ensemble(workdir)
    summary = json.loads((workdir / "ensemble.json").read_text())
    weighted = [name for name, w in zip(summary["models"], summary["blends"][summary["kept"]]["weights"]) if w > 0]
    assert module.names == [f"{name}/fold{k}" for name in weighted for k in range(2)]
    probs = _predict(module, test_images)
    assert probs.dtype == np.float32 and probs.shape == (len(test_images), 7)
    assert np.abs(probs - finished_run_blend).max() < 1e-4
    assert (probs.argmax(1) == finished_run_blend.argmax(1)).all()


@pytest.mark.parametrize("unit", [PLAIN, CROPPED])
@pytest.mark.parametrize("space", ["prob", "logit"])
def test_a_unit_equals_its_test_npz_in_either_tta_space(finished_run, unit, space):
    """Both TTA averages, with the unit's crop, TTA and (for CROPPED) EMA weights from its files."""
    workdir, test_images = finished_run
    probs = _predict(load_unit(workdir, unit, space=space), test_images)
    assert np.abs(probs - _saved(workdir, unit, SPACE_KEYS[space])).max() < 1e-4


def test_one_unit_by_name_and_float_input_equals_uint8(finished_run):
    workdir, test_images = finished_run
    module = load_ensemble(workdir, unit=CROPPED)
    space = json.loads((workdir / "ensemble.json").read_text())["models"]["round0/fer_resnet_tiny"]["tta_space"]
    probs = _predict(module, test_images)
    assert np.abs(probs - _saved(workdir, CROPPED, SPACE_KEYS[space])).max() < 1e-4
    assert np.array_equal(_predict(module, test_images.astype(np.float32)), probs)


@pytest.mark.parametrize("unit", [PLAIN, CROPPED])
def test_tta_override_none_gives_the_plain_view(finished_run, unit):
    workdir, test_images = finished_run
    module = load_ensemble(workdir, unit=unit, tta="none")
    assert np.abs(_predict(module, test_images) - _saved(workdir, unit, "probs_plain")).max() < 1e-4


def test_a_model_of_weight_zero_is_left_out(finished_run, tmp_path):
    workdir, test_images = finished_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    summary = json.loads((copy / "ensemble.json").read_text())
    assert list(summary["models"]) == ["round0/fer_resnet_tiny", "round0/fer_vgg_tiny"]
    summary["blends"]["weighted"]["weights"] = [0.0, 1.0]
    summary["kept"] = "weighted"
    (copy / "ensemble.json").write_text(json.dumps(summary))
    module = load_ensemble(copy)
    assert module.names == ["round0/fer_vgg_tiny/fold0", "round0/fer_vgg_tiny/fold1"]
    key = SPACE_KEYS[summary["models"]["round0/fer_vgg_tiny"]["tta_space"]]
    vgg = np.mean([_saved(copy, f"round0/fer_vgg_tiny/fold{k}", key) for k in range(2)], axis=0)
    assert np.abs(_predict(module, test_images) - vgg).max() < 1e-4


def test_resize_inside_the_module_matches_the_eval_pipeline(demo_test):
    """A run trained at --image-size 64: the module resizes as albumentations' A.Resize did."""
    images = demo_test[1][:20]
    mean, std = 0.5, 0.25
    expected = augment.to_tensor(images, augment.eval_pipeline(mean, std, image_size=64))
    got = UnitModule(nn.Identity(), mean, std, 64, "none").preprocess(torch.as_tensor(images)[:, None])
    assert got.shape == expected.shape == (20, 1, 64, 64)
    one_level = 1 / 255 / std  # cv2's fast fixed-point bilinear rounds some pixels the other way
    assert (got - expected).abs().max() <= one_level + 1e-5
    assert ((got - expected).abs() > 1e-5).float().mean() < 0.2  # 0.12 measured; 0.96 without rounding


def test_no_run_no_ensemble_unknown_and_unfinished_units_are_clear_errors(finished_run, tmp_path):
    workdir, _ = finished_run
    with pytest.raises(FerKaggleError, match=f"{tmp_path}: no run here"):
        load_ensemble(tmp_path)
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    (copy / "ensemble.json").unlink()
    with pytest.raises(FerKaggleError, match="no ensemble.json; run run.sh .*fer_kaggle.ensemble"):
        load_ensemble(copy)
    with pytest.raises(FerKaggleError, match="no unit 'round0/fer_vgg_tiny/fold7'.*round0/fer_resnet_tiny/fold0"):
        load_ensemble(copy, unit="round0/fer_vgg_tiny/fold7")
    with pytest.raises(FerKaggleError, match="TTA 'ten_crop' for round0/fer_vgg_tiny/fold0"):
        load_ensemble(copy, unit=PLAIN, tta="ten_crop")
    (copy / "round0/fer_vgg_tiny/fold1/metrics.json").unlink()
    with pytest.raises(FerKaggleError, match="fold1: the unit is not finished"):
        load_ensemble(copy, unit="round0/fer_vgg_tiny/fold1")
