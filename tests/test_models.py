"""Every fer_* backbone builds through timm at 1x48x48, trains, and keeps a spatial map."""
import pytest
import timm
import torch

import fer_kaggle  # noqa: F401  (registers the backbones)

from fer_kaggle.models.backbones import DNN_COUNTERPARTS

FER_MODELS = timm.list_models("fer_*")
FER_CNNS = [name for name in FER_MODELS if name not in DNN_COUNTERPARTS]


def test_fer_backbones_are_registered():
    assert {"fer_vgg13", "fer_resnet18", "fer_vgg_tiny", "fer_resnet_tiny", "fer_convnext", "fer_convnext_tiny",
            "fer_dnn", "fer_dnn_tiny"} <= set(FER_MODELS)


@pytest.mark.parametrize("name", FER_MODELS)
def test_forward_backward_at_48px(name):
    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=1, num_classes=7)
    images = torch.randn(4, 1, 48, 48)
    if name in FER_CNNS:
        features = model.forward_features(images)
        assert features.shape[-2] > 1 and features.shape[-1] > 1, "final feature map collapsed to 1x1"
    logits = model(images)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_no_pretrained_weights():
    with pytest.raises(Exception, match="no pretrained weights"):
        timm.create_model("fer_vgg_tiny", pretrained=True, in_chans=1, num_classes=7)


def _parameters(name):
    return sum(p.numel() for p in timm.create_model(name, in_chans=1, num_classes=7).parameters())


@pytest.mark.parametrize("dnn, cnn", DNN_COUNTERPARTS.items())
def test_each_dnn_is_sized_like_its_cnn(dnn, cnn):
    assert abs(_parameters(dnn) / _parameters(cnn) - 1) < 0.10
    model = timm.create_model(dnn, in_chans=1, num_classes=7)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


# ---------------------------------------------------------------- the modern family: ConvNeXt (timm's class)

CONVNEXTS = {  # name: (parameter range, final feature map at 48 px)
    "fer_convnext": ((7e6, 10e6), (512, 6, 6)),
    "fer_convnext_tiny": ((0.15e6, 0.4e6), (128, 3, 3)),
}


@pytest.mark.parametrize("name", CONVNEXTS)
def test_convnext_is_timms_convnext_sized_for_48px(name):
    (low, high), final_map = CONVNEXTS[name]
    model = timm.create_model(name, in_chans=1, num_classes=7, drop_rate=0.1, drop_path_rate=0.05)
    assert isinstance(model, timm.models.convnext.ConvNeXt)
    assert low <= sum(p.numel() for p in model.parameters()) <= high
    assert model.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.05) and model.drop_rate == 0.1
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(2, 1, 48, 48).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer's CPU path: bf16 autocast, channels_last
        features = model.forward_features(images)
        logits = model.forward_head(features)
    assert features.shape[1:] == final_map and logits.shape == (2, 7)
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_convnext_tiny_learns_real_faces(demo_train):
    """A few AdamW steps on 64 bundled rows lower the loss on them (fer_convnext is the same class,
    8.5M parameters at 48 px: too slow for a CPU unit test beyond the forward/backward above)."""
    images, labels = demo_train
    x = (torch.from_numpy(images[:64]).float().div(255).unsqueeze(1) - 0.5) / 0.25
    y = torch.from_numpy(labels[:64])
    torch.manual_seed(0)
    model = timm.create_model("fer_convnext_tiny", in_chans=1, num_classes=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def loss():
        model.eval()
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x), y).item()

    before = loss()
    model.train()
    for _ in range(8):  # about 1 s on 2 CPU threads
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    after = loss()
    assert after < 0.8 * before, (before, after)  # 1.95 -> 1.38 with seed 0


def test_auto_optimizer_is_adamw_for_convnext_and_sgd_for_batch_norm_nets():
    from fer_kaggle.core.config import PRESETS
    from fer_kaggle.models.backbones import unit_config
    cfg = PRESETS["full"]
    assert cfg.optimizer == "auto"
    convnext = unit_config(cfg, "fer_convnext")
    assert (convnext.optimizer, convnext.lr, convnext.weight_decay) == ("adamw", 2e-3, 0.05)
    vgg = unit_config(cfg, "fer_vgg13")
    assert (vgg.optimizer, vgg.lr, vgg.weight_decay) == ("sgd", cfg.lr, cfg.weight_decay)
    assert unit_config(PRESETS["demo"], "fer_convnext_tiny") == PRESETS["demo"], "an explicit optimizer is kept"


# ---------------------------------------------------------------- the cpu preset's backbones

CPU_BACKBONES = {  # name: (parameter range, final feature map at 48 px)
    "fer_resnet_cpu": ((1.1e6, 1.4e6), (256, 3, 3)),
    "fer_resnet_cpu2": ((2.6e6, 3.0e6), (256, 3, 3)),
    "fer_vgg_cpu": ((1.0e6, 1.3e6), (256, 3, 3)),
}


def test_cpu_backbones_are_those_of_the_cpu_preset():
    from fer_kaggle.core.config import PRESETS
    assert set(PRESETS["cpu"].backbones) <= set(CPU_BACKBONES)


@pytest.mark.parametrize("name", CPU_BACKBONES)
def test_cpu_backbone_shape_and_one_training_step(name, demo_train):
    """Size and final map at 48 px; then the cpu preset's own training step (bf16 autocast where native,
    channels-last, AdamW, label smoothing) on 128 real faces: the loss is finite, every weight moves,
    and a few more steps lower the loss on those faces."""
    from fer_kaggle.training import recipe
    from fer_kaggle.core.config import PRESETS
    from fer_kaggle.training.train import make_step
    (low, high), final_map = CPU_BACKBONES[name]
    images, labels = demo_train
    x = ((torch.from_numpy(images[:128]).float().div(255).unsqueeze(1) - 0.5) / 0.25)
    x = x.contiguous(memory_format=torch.channels_last)
    targets = torch.as_tensor(recipe.targets(labels[:128]))
    torch.manual_seed(0)
    step = make_step(PRESETS["cpu"].replace(lr=3e-3), name, torch.device("cpu"), 20, labels[:128])
    assert low <= sum(p.numel() for p in step.model.parameters()) <= high
    assert step.model.forward_features(x[:2]).shape[1:] == final_map
    before = [p.detach().clone() for p in step.model.parameters()]
    loss, logits = step(x, targets)
    assert torch.isfinite(loss) and logits.shape == (128, 7)
    assert all(not torch.equal(b, p) for b, p in zip(before, step.model.parameters()))
    first = loss.item()
    for _ in range(12):
        loss, _ = step(x, targets)
    assert loss.item() < 0.85 * first, (first, loss.item())
