"""Every fer_* backbone builds through timm at 1x48x48, trains, and keeps a spatial map."""
import pytest
import timm
import torch

import fer_kaggle  # noqa: F401  (registers the backbones)

from fer_kaggle.models import DNN_COUNTERPARTS

FER_MODELS = timm.list_models("fer_*")
FER_CNNS = [name for name in FER_MODELS if name not in DNN_COUNTERPARTS]


def test_fer_backbones_are_registered():
    assert {"fer_vgg13", "fer_resnet18", "fer_vgg_tiny", "fer_resnet_tiny", "fer_dnn", "fer_dnn_tiny"} <= set(FER_MODELS)


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
