"""The recipe's switchable parts: targets, class weights, mixing, loss, schedules, EMA; and a unit
trained with all of them on (crops, ten-crop TTA, mixup + cutmix, EMA, one-cycle, class weights,
soft labels) resumes to the same files as an uninterrupted run."""
import numpy as np
import pandas as pd
import pytest
import torch

from fer_kaggle.training import recipe, train
from fer_kaggle.core.config import PRESETS
from fer_kaggle.core.errors import TimeLimitReached
from fer_kaggle.training.train import Unit, UnitData, train_unit

CPU = torch.device("cpu")


def test_targets_one_hot_and_soft_rows():
    assert recipe.targets(np.array([2, 0])).tolist() == [[0, 0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]]
    soft = np.full((1, 7), 1 / 7)
    np.testing.assert_allclose(recipe.targets(soft), soft)


def test_loss_equals_torch_cross_entropy_with_label_smoothing():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 7), torch.randint(0, 7, (16,))
    ours = recipe.loss(logits, torch.as_tensor(recipe.targets(labels.numpy())), smoothing=0.1)
    torch.testing.assert_close(ours, torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1))


def test_class_weights_favour_the_rare_class_and_average_one(demo_train):
    _, labels = demo_train
    weights = recipe.class_weights(labels, power=0.5)
    counts = np.bincount(labels, minlength=7)
    assert weights.argmax().item() == counts.argmin() == 1, "disgust, the rarest class, weighs most"
    assert float((weights.numpy() * counts).sum() / counts.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(recipe.class_weights(labels, power=0.0), torch.ones(7))
    torch.manual_seed(0)
    logits = torch.randn(len(labels), 7)
    targets = torch.as_tensor(recipe.targets(labels))
    weighted = recipe.loss(logits, targets, weights=weights)
    by_hand = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels), weight=weights)
    torch.testing.assert_close(weighted, by_hand)


@pytest.mark.parametrize("mixup, cutmix", [(1.0, 0.0), (0.0, 1.0)])
def test_mix_batch_mixes_images_and_targets_alike(mixup, cutmix):
    torch.manual_seed(3)
    images = torch.stack([torch.full((1, 48, 48), 1.0), torch.zeros(1, 48, 48)])
    targets = torch.eye(7)[[0, 1]]
    mixed, mixed_targets = recipe.mix_batch(images, targets, mixup, cutmix, prob=1.0)
    share = mixed[0].mean().item()  # the first image's own share of its pixels
    assert 0 < share < 1
    torch.testing.assert_close(mixed_targets[0, 0], torch.tensor(share), atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed_targets.sum(1), torch.ones(2))
    same, same_targets = recipe.mix_batch(images, targets, mixup, cutmix, prob=0.0)
    assert same is images and same_targets is targets


def test_schedules_warm_up_then_decay_to_zero():
    for schedule in recipe.SCHEDULES:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
        scheduler = recipe.make_scheduler(schedule, optimizer, epochs=4, steps_per_epoch=10, warmup_epochs=1,
                                          peak_lr=0.1)
        lrs = []
        for _ in range(40):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        peak = int(np.argmax(lrs))
        assert 5 <= peak <= 12, (schedule, peak)
        # at 0 after the last planned step (one-cycle: all but 0 at that step itself)
        last = min(optimizer.param_groups[0]["lr"], lrs[-1])
        assert max(lrs) == pytest.approx(0.1, rel=1e-3) and last < 1e-3 * max(lrs) and lrs[-1] < 0.05 * max(lrs), schedule
        assert all(a <= b + 1e-12 for a, b in zip(lrs[:peak], lrs[1:peak + 1])), schedule


def test_ema_follows_the_weights_slowly():
    model = torch.nn.Linear(2, 2)
    ema = recipe.make_ema(model, 0.9)
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    for step in range(1, 200):
        ema.update(model, step=step)
    moved = (ema.module.weight - start).mean().item()
    assert 0.5 < moved <= 1.0 + 1e-6
    assert recipe.make_ema(model, 0.0) is None


EVERYTHING = PRESETS["demo"].replace(
    backbones=("fer_vgg_tiny",), epochs=2, batch_size=32, crop=40, tta="ten_crop", mixup=0.4, cutmix=1.0,
    mix_prob=1.0, ema=0.9, schedule="onecycle", class_balance=0.5, augment="full")


@pytest.fixture(scope="module")
def soft_unit_data(small_unit_data):
    """The small unit's data with its last 50 training rows given soft (pseudo-label-like) targets."""
    targets = recipe.targets(small_unit_data.train_labels)
    targets[-50:] = 0.6 * targets[-50:] + 0.4 / 7
    d = small_unit_data
    return UnitData(d.train_images, targets, d.valid_rows, d.valid_images, d.valid_labels, d.test_ids, d.test_images)


def _files(unit_dir):
    history = pd.read_csv(unit_dir / "history.csv").drop(columns="seconds")
    with np.load(unit_dir / "oof.npz") as oof, np.load(unit_dir / "test.npz") as test:
        arrays = {f"oof_{k}": oof[k] for k in oof.files} | {f"test_{k}": test[k] for k in test.files}
    return history, arrays


def test_unit_with_every_recipe_element_resumes_identically(tmp_path, soft_unit_data, interrupt_then_resume):
    unit = Unit(0, "fer_vgg_tiny", 0)
    metrics = train_unit(EVERYTHING, unit, tmp_path / "straight", soft_unit_data, CPU)
    assert metrics["tta"] == "ten_crop" and {"valid_acc", "valid_acc_logit", "valid_acc_plain"} <= set(metrics)
    state = torch.load(unit.dir(tmp_path / "straight") / "checkpoint.pt", weights_only=True)
    assert "ema" in state and state["crop"] == 40

    interrupt_then_resume(EVERYTHING, unit, tmp_path / "resumed", soft_unit_data, CPU)
    history, arrays = _files(unit.dir(tmp_path / "straight"))
    history2, arrays2 = _files(unit.dir(tmp_path / "resumed"))
    pd.testing.assert_frame_equal(history, history2)
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], arrays2[name], err_msg=name)
    assert arrays["oof_probs"].shape == arrays["oof_probs_logit"].shape == (100, 7)
    assert not np.allclose(arrays["oof_probs"], arrays["oof_probs_logit"]), "two TTA averages, both saved"


def test_time_limit_stops_after_an_epoch_and_a_rerun_finishes(tmp_path, small_unit_data):
    import time
    cfg = PRESETS["demo"].replace(backbones=("fer_vgg_tiny",), epochs=3, batch_size=32)
    unit = Unit(0, "fer_vgg_tiny", 0)
    with pytest.raises(TimeLimitReached, match="stopped after epoch 1 of 3"):
        train_unit(cfg, unit, tmp_path, small_unit_data, CPU, deadline=time.monotonic())
    assert torch.load(unit.dir(tmp_path) / "checkpoint.pt", weights_only=True)["epoch"] == 1
    metrics = train_unit(cfg, unit, tmp_path, small_unit_data, CPU)
    assert metrics["epochs"] == 3


def test_device_augmentation_path_trains_and_resumes_identically(tmp_path, small_unit_data, interrupt_then_resume):
    """--augment-on device (the GPU path, here on the CPU): same order of rows as the host path, and a
    resumed unit gives the same files as an uninterrupted one."""
    cfg = PRESETS["demo"].replace(backbones=("fer_vgg_tiny",), epochs=2, batch_size=32, augment="full",
                                  crop=44, augment_on="device")
    host = train.make_batches(cfg.replace(augment_on="host"), small_unit_data.train_images,
                              recipe.targets(small_unit_data.train_labels), _pipeline(cfg), CPU)
    device = train.make_batches(cfg, small_unit_data.train_images, recipe.targets(small_unit_data.train_labels),
                                _pipeline(cfg), CPU)
    assert isinstance(device, train.DeviceBatches) and len(device) == len(host)
    for batches in (host, device):
        batches.set_epoch_seed(5)
    for (_, host_targets), (images, device_targets) in zip(host, device):
        assert images.shape == (32, 1, 44, 44) and images.dtype == torch.float32
        torch.testing.assert_close(host_targets, device_targets)

    unit = Unit(0, "fer_vgg_tiny", 0)
    train_unit(cfg, unit, tmp_path / "straight", small_unit_data, CPU)
    interrupt_then_resume(cfg, unit, tmp_path / "resumed", small_unit_data, CPU)
    _, arrays = _files(unit.dir(tmp_path / "straight"))
    _, arrays2 = _files(unit.dir(tmp_path / "resumed"))
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], arrays2[name], err_msg=name)


def _pipeline(cfg):
    from fer_kaggle.training import augment
    return augment.train_pipeline(0.5, 0.25, cfg.augment, cfg.image_size, cfg.crop, cfg.erase)


def test_compiled_step_trains_the_model_it_saves(monkeypatch):
    """--compile (on in the GPU presets): the compiled forward updates the very weights that are saved.

    Compiled with dynamo and AOTAutograd but without inductor's code generation: on a CPU inductor writes and
    builds C++ kernels, most of the suite's extra time on a fresh machine (BENCHMARKS.md), and what is tested
    here is how the step holds the compiled module, whatever the backend."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: compile_(model, backend="aot_eager", **options))
    cfg = PRESETS["demo"].replace(compile=True, amp="off")
    torch.manual_seed(0)
    step = train.make_step(cfg, "fer_resnet_tiny", CPU, steps_per_epoch=4, hard_labels=np.arange(7))
    assert step.forward is not None
    before = {k: v.clone() for k, v in step.model.state_dict().items()}
    images, targets = torch.randn(8, 1, 48, 48), torch.eye(7)[torch.arange(8) % 7]
    for _ in range(2):
        loss, logits = step(images, targets)
        assert torch.isfinite(loss) and logits.shape == (8, 7)
    changed = [k for k, v in step.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "the saved model's weights did not move"
