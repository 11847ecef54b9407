"""What a GPU machine needs from us that a CPU test can still see: an EMA built without timm's newer
`dtype=` argument, cuDNN's autotuner on CUDA, and no network call from albumentations on import."""
import os
import subprocess
import sys

import pytest
import torch

from fer_kaggle import cli
from fer_kaggle.training import recipe, train
from fer_kaggle.models.backbones import build_model


def test_ema_works_with_a_timm_that_has_no_dtype_argument(monkeypatch):
    """timm 1.0.9-1.0.28's ModelEmaV3 has no `dtype`: `full`'s first unit raised TypeError there."""
    real = recipe.ModelEmaV3

    class OldModelEmaV3(real):
        def __init__(self, model, decay=0.9999, min_decay=0.0, update_after_step=0, use_warmup=False,
                     warmup_gamma=1.0, warmup_power=2 / 3, device=None, foreach=True, exclude_buffers=False):
            super().__init__(model, decay=decay, min_decay=min_decay, update_after_step=update_after_step,
                             use_warmup=use_warmup, warmup_gamma=warmup_gamma, warmup_power=warmup_power,
                             device=device, foreach=foreach, exclude_buffers=exclude_buffers)

    monkeypatch.setattr(recipe, "ModelEmaV3", OldModelEmaV3)
    model = build_model("fer_vgg_tiny", torch.device("cpu"))
    ema = recipe.make_ema(model, 0.9)
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())


def test_cudnn_autotuner_is_on_for_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    train.configure_backend(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    assert train.configure_backend(torch.device("cuda")).type == "cuda"  # no GPU needed to set the flag
    assert torch.backends.cudnn.benchmark is True


@pytest.mark.slow
def test_importing_the_package_makes_no_network_call():
    """albumentations asks PyPI for its latest version on import unless told not to: on an offline machine
    that is a timeout. Counted in a fresh interpreter, with the variable unset in its environment."""
    code = ("import urllib.request as u\n"
            "calls = []\n"
            "real = u.build_opener\n"
            "u.build_opener = lambda *a: calls.append(a) or real(*a)\n"
            "import fer_kaggle.training.train, fer_kaggle.training.augment\n"
            "print('openers', len(calls))\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "openers 0" in result.stdout


def test_self_check_says_it_needs_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["bench", "gpu"]) == 2
    assert "bench gpu needs a CUDA device" in capsys.readouterr().err


@pytest.mark.slow  # a short pipeline run and the speed table
def test_self_check_runs_its_checks_on_a_cpu(capsys):
    """Everything but the sync count (CUDA only) runs here, small: both augmentation paths agree, the short
    run of the fast recipe stops at its time limit and resumes to a submission, and speeds are printed."""
    code = cli.main(["bench", "gpu", "--device", "cpu", "--rows", "600", "--steps", "1",
                       "--backbones", "fer_vgg_tiny,fer_resnet_tiny"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "augmentation: host mean" in printed and ": agree" in printed
    assert "syncs: n/a on a CPU" in printed
    assert "stopped and resumed" in printed and "400 submission rows" in printed
    assert "fer_resnet_tiny" in printed and "extrapolated: preset fast" in printed


def test_extrapolated_time_scales_with_speed():
    from fer_kaggle.core.config import PRESETS
    from fer_kaggle.bench.selfcheck import extrapolate_minutes
    fast = PRESETS["fast"]
    slow = {b: {"train": 1000.0, "infer": 5000.0} for b in fast.backbones}
    quick = {b: {"train": 2000.0, "infer": 10000.0} for b in fast.backbones}
    assert extrapolate_minutes(fast, slow) == 2 * extrapolate_minutes(fast, quick)
    epochs_only = len(fast.backbones) * fast.folds * fast.epochs * 28_709 * (fast.folds - 1) / fast.folds / 1000 / 60
    assert epochs_only < extrapolate_minutes(fast, slow) < 1.2 * epochs_only * (2 if fast.pseudo else 1)
