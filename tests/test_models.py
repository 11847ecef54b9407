"""Every fer_* backbone builds through timm at 1x48x48, trains, and keeps a spatial map."""
import pytest
import timm
import torch

import fer_kaggle  # noqa: F401  (registers the backbones)

FER_MODELS = timm.list_models("fer_*")


def test_fer_backbones_are_registered():
    assert {"fer_vgg13", "fer_resnet18", "fer_vgg_tiny", "fer_resnet_tiny"} <= set(FER_MODELS)


@pytest.mark.parametrize("name", FER_MODELS)
def test_forward_backward_at_48px(name):
    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=1, num_classes=7)
    images = torch.randn(4, 1, 48, 48)
    features = model.forward_features(images)
    assert features.shape[-2] > 1 and features.shape[-1] > 1, "final feature map collapsed to 1x1"
    logits = model(images)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_no_pretrained_weights():
    with pytest.raises(Exception, match="no pretrained weights"):
        timm.create_model("fer_vgg_tiny", pretrained=True, in_chans=1, num_classes=7)
