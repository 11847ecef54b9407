"""One unit: its files, resume after an interruption, and a clear stop on a diverging loss."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from fer_kaggle.training import train
from fer_kaggle.core.config import PRESETS
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.training.train import Unit, UnitData, train_unit

CFG = PRESETS["demo"].replace(backbones=("fer_vgg_tiny",), epochs=2, batch_size=32, tta="flip_shift")
UNIT = Unit(0, "fer_vgg_tiny", 0)
CPU = torch.device("cpu")


def _outputs(unit_dir):
    history = pd.read_csv(unit_dir / "history.csv").drop(columns="seconds")
    with np.load(unit_dir / "oof.npz") as oof, np.load(unit_dir / "test.npz") as test:
        arrays = {f"oof_{k}": oof[k] for k in oof.files} | {f"test_{k}": test[k] for k in test.files}
    weights = torch.load(unit_dir / "checkpoint.pt", weights_only=True)["model"]
    return history, arrays, weights


def test_unit_writes_its_files(tmp_path, small_unit_data):
    metrics = train_unit(CFG, UNIT, tmp_path, small_unit_data, CPU)
    unit_dir = UNIT.dir(tmp_path)
    for name in ("config.json", "train_pipeline.json", "eval_pipeline.json", "checkpoint.pt", "history.csv",
                 "oof.npz", "test.npz", "metrics.json"):
        assert (unit_dir / name).exists(), name
    assert not list(unit_dir.glob("*.tmp-*"))
    with np.load(unit_dir / "oof.npz") as oof:
        assert oof["probs"].shape == (100, 7) and (oof["rows"] == small_unit_data.valid_rows).all()
    with np.load(unit_dir / "test.npz") as test:
        assert test["probs"].shape == (60, 7) and (test["ids"] == small_unit_data.test_ids).all()
        assert np.allclose(test["probs"].sum(1), 1, atol=1e-4)
    assert len(pd.read_csv(unit_dir / "history.csv")) == 2 and metrics["epochs"] == 2
    config = json.loads((unit_dir / "config.json").read_text())
    assert config["backbone"] == "fer_vgg_tiny" and 0 < config["mean"] < 1
    import albumentations as A
    pipeline = A.load(str(unit_dir / "train_pipeline.json"), data_format="json")
    assert [type(t).__name__ for t in pipeline.transforms][-2:] == ["Normalize", "ToTensorV2"]


def test_interrupted_unit_resumes_to_the_same_files(tmp_path, small_unit_data, interrupt_then_resume):
    train_unit(CFG, UNIT, tmp_path / "straight", small_unit_data, CPU)
    interrupt_then_resume(CFG, UNIT, tmp_path / "resumed", small_unit_data, CPU)
    resumed_dir = UNIT.dir(tmp_path / "resumed")

    history, arrays, weights = _outputs(UNIT.dir(tmp_path / "straight"))
    history2, arrays2, weights2 = _outputs(resumed_dir)
    pd.testing.assert_frame_equal(history, history2)
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], arrays2[name], err_msg=name)
    for name in weights:
        assert torch.equal(weights[name], weights2[name]), name


def test_checkpoints_every_n_epochs_and_resumes_from_the_last(tmp_path, small_unit_data, interrupt_then_resume):
    """--checkpoint-every 2 over 3 epochs: a stop in epoch 3 resumes from epoch 2's checkpoint, to the same
    files as a run never stopped."""
    cfg = CFG.replace(epochs=3, checkpoint_every=2)
    train_unit(cfg, UNIT, tmp_path / "straight", small_unit_data, CPU)
    interrupt_then_resume(cfg, UNIT, tmp_path / "resumed", small_unit_data, CPU, stop_at=3, checkpoint=2)
    _, arrays, weights = _outputs(UNIT.dir(tmp_path / "straight"))
    _, arrays2, weights2 = _outputs(UNIT.dir(tmp_path / "resumed"))
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], arrays2[name], err_msg=name)
    assert all(torch.equal(weights[name], weights2[name]) for name in weights)


def test_finished_unit_is_skipped(tmp_path, small_unit_data, monkeypatch):
    first = train_unit(CFG, UNIT, tmp_path, small_unit_data, CPU)
    monkeypatch.setattr(train, "build_model", lambda *a: pytest.fail("a finished unit was retrained"))
    assert train_unit(CFG, UNIT, tmp_path, small_unit_data, CPU) == first


def test_a_finished_unit_is_not_handed_back_for_other_settings(tmp_path, small_unit_data):
    """A finished unit's folder trained with other settings is refused, not handed back as finished."""
    train_unit(CFG, UNIT, tmp_path, small_unit_data, CPU)
    with pytest.raises(FerKaggleError, match=r"was trained with tta=flip_shift \(now none\)"):
        train_unit(CFG.replace(tta="none"), UNIT, tmp_path, small_unit_data, CPU)


def test_a_student_is_not_handed_back_for_other_pseudo_label_rows(tmp_path, small_unit_data):
    """A student's key names its teachers, not their table: the rows it learned from are checked apart."""
    student = Unit(1, "fer_vgg_tiny", 0, key="0123abcd")
    first = train_unit(CFG.replace(epochs=1), student, tmp_path, small_unit_data, CPU, key_settings={"pseudo_rows": "aa"})
    assert train_unit(CFG.replace(epochs=1), student, tmp_path, small_unit_data, CPU,
                      key_settings={"pseudo_rows": "aa"}) == first
    with pytest.raises(FerKaggleError, match=r"learned from other pseudo-labels \(rows aa\) than its teachers give "
                                             r"now \(rows bb\): a teacher was retrained; delete .*fold0 to retrain"):
        train_unit(CFG.replace(epochs=1), student, tmp_path, small_unit_data, CPU, key_settings={"pseudo_rows": "bb"})


def test_resume_with_other_options_is_refused(tmp_path, small_unit_data, monkeypatch):
    monkeypatch.setattr(train, "_train_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train_unit(CFG, UNIT, tmp_path, small_unit_data, CPU)
    with pytest.raises(FerKaggleError, match=r"was trained with epochs=2 \(now 5\)"):
        train_unit(CFG.replace(epochs=5), UNIT, tmp_path, small_unit_data, CPU)


def test_diverging_loss_stops_with_a_clear_error(tmp_path, small_unit_data):
    exploding = CFG.replace(optimizer="sgd", lr=1e30, warmup_epochs=0.0)
    with pytest.raises(FerKaggleError, match="training loss became non-finite"):
        train_unit(exploding, UNIT, tmp_path, small_unit_data, CPU)
    assert not (UNIT.dir(tmp_path) / "metrics.json").exists()


def test_a_non_finite_loss_mid_run_saves_no_update_made_from_it(tmp_path, small_unit_data, monkeypatch):
    """The check lives on the device (no host sync per step) and is read at the epoch's end: epoch 2's
    NaN stops the unit, and its checkpoint still holds epoch 1's finite weights."""
    from fer_kaggle.training import recipe
    real_loss, calls = recipe.loss, []
    steps_per_epoch = len(small_unit_data.train_images) // CFG.batch_size

    def nan_in_epoch_two(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == steps_per_epoch + 3 else loss

    monkeypatch.setattr(recipe, "loss", nan_in_epoch_two)
    with pytest.raises(FerKaggleError, match=r"non-finite at .*epoch 2/2, step 3; nothing from this epoch"):
        train_unit(CFG, UNIT, tmp_path, small_unit_data, CPU)
    state = torch.load(UNIT.dir(tmp_path) / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


def test_image_size_resizes_in_both_pipelines():
    from fer_kaggle.training import augment
    image = np.zeros((48, 48), dtype=np.uint8)
    for pipeline in (augment.train_pipeline(0.5, 0.25, "full", 64), augment.eval_pipeline(0.5, 0.25, 64)):
        assert pipeline(image=image)["image"].shape == (1, 64, 64)
    assert augment.eval_pipeline(0.5, 0.25)(image=image)["image"].shape == (1, 48, 48)


@pytest.mark.slow
def test_fp16_trains_with_a_gradient_scaler_and_resumes_as_one_never_stopped(tmp_path, small_unit_data,
                                                                              interrupt_then_resume):
    """The path of GPUs without bf16 (Kaggle's P100 and T4): fp16 autocast with torch's gradient scaler,
    whose scale is saved with the checkpoint so a resumed unit steps as one never stopped."""
    cfg = PRESETS["demo"].replace(amp="fp16", epochs=2, batch_size=16, tta="none")
    device = torch.device("cpu")
    data = small_unit_data
    # CPUs run fp16 convolutions slowly (no native kernels): a few rows suffice for the scaler's path
    small_unit_data = UnitData(data.train_images[:32], data.train_labels[:32], data.valid_rows[:16],
                               data.valid_images[:16], data.valid_labels[:16], data.test_ids[:4], data.test_images[:4])
    unit = Unit(0, "fer_resnet_tiny", 0)
    straight = train_unit(cfg, unit, tmp_path / "a", small_unit_data, device)
    state = torch.load(unit.dir(tmp_path / "a") / "checkpoint.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0
    resumed = interrupt_then_resume(cfg, unit, tmp_path / "b", small_unit_data, device)
    assert straight["valid_acc"] == resumed["valid_acc"]
    for name in ("oof.npz", "test.npz"):
        assert (unit.dir(tmp_path / "a") / name).read_bytes() == (unit.dir(tmp_path / "b") / name).read_bytes()


def test_a_gpu_without_bf16_trains_in_fp16_and_one_with_it_in_bf16(monkeypatch):
    from fer_kaggle.training.train import autocast_dtype
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert autocast_dtype("auto", cuda) == torch.float16 and autocast_dtype("bf16", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert autocast_dtype("auto", cuda) == torch.bfloat16 and autocast_dtype("off", cuda) is None
