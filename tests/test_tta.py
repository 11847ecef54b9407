"""TTA: shapes, probabilities, and the views themselves."""
import pytest
import torch

from fer_kaggle.models.backbones import build_model
from fer_kaggle.models.tta import average, fold_batch_norms, predict_views, view, views


@pytest.mark.parametrize("tta, count", [("none", 1), ("flip", 2), ("flip_shift", 10)])
def test_predict_views_shapes(tta, count):
    torch.manual_seed(0)
    model = build_model("fer_vgg_tiny", torch.device("cpu"))
    images = torch.randn(70, 1, 48, 48)
    probs = predict_views(model, images, tta, torch.device("cpu"), batch_size=32)
    assert probs.shape == (count, 70, 7)
    assert torch.allclose(probs.sum(-1), torch.ones(count, 70), atol=1e-5)
    plain = predict_views(model, images, "none", torch.device("cpu"))[0]
    assert torch.allclose(probs[0], plain, atol=1e-6), "view 0 must be the plain image"


def test_views_flip_and_shift():
    batch = torch.arange(2 * 48 * 48, dtype=torch.float32).reshape(2, 1, 48, 48)
    assert torch.equal(view(batch, True, (0, 0)), batch.flip(-1))
    shifted = view(batch, False, (0, 2))
    assert shifted.shape == batch.shape
    assert torch.equal(shifted[..., :, :46], batch[..., :, 2:])  # content moves left by 2 px
    assert len(views("flip_shift")) == len(set(views("flip_shift"))) == 10


def test_unknown_tta_is_refused():
    model = build_model("fer_vgg_tiny", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown TTA"):
        predict_views(model, torch.zeros(1, 1, 48, 48), "twelve_crop", torch.device("cpu"))
    with pytest.raises(ValueError, match="needs a model trained on crops"):
        predict_views(model, torch.zeros(1, 1, 48, 48), "ten_crop", torch.device("cpu"))


def test_ten_crop_views_are_the_centre_and_four_corners_each_flipped():
    batch = torch.arange(48 * 48, dtype=torch.float32).reshape(1, 1, 48, 48)
    chosen = views("ten_crop", crop=44)
    crops = [view(batch, flip, offset, crop=44, ten_crop=True) for flip, offset in chosen]
    assert len(crops) == 10 and all(c.shape == (1, 1, 44, 44) for c in crops)
    assert torch.equal(crops[0], batch[..., 2:46, 2:46]), "view 0: the centre crop"
    corners = {(0, 0), (0, 4), (4, 0), (4, 4)}
    found = {(top, left) for top in range(5) for left in range(5) for c in crops[1:5]
             if torch.equal(c, batch[..., top:top + 44, left:left + 44])}
    assert found == corners
    assert torch.equal(crops[5], batch.flip(-1)[..., 2:46, 2:46])
    assert len({c.sum().item() + c[..., 0, 0].item() for c in crops}) == 10, "ten different views"


def test_crop_model_predicts_on_the_centre_crop():
    torch.manual_seed(0)
    model = build_model("fer_vgg_tiny", torch.device("cpu"))
    images = torch.randn(5, 1, 48, 48)
    plain = predict_views(model, images, "none", torch.device("cpu"), crop=40)[0]
    model.eval()
    with torch.no_grad():
        expected = model(images[..., 4:44, 4:44]).softmax(-1)
    torch.testing.assert_close(plain, expected)


def test_logit_and_probability_averages():
    logits = torch.tensor([[[4.0, 0.0]], [[0.0, 1.0]]])  # two views of one image, two classes
    prob = average(logits, "prob")
    logit = average(logits, "logit")
    torch.testing.assert_close(prob, logits.softmax(-1).mean(0))
    torch.testing.assert_close(logit, torch.tensor([[2.0, 0.5]]).softmax(-1))
    assert prob.argmax().item() == logit.argmax().item() == 0 and not torch.allclose(prob, logit)


def _trained_batch_norms(model):
    """Running statistics and affine weights far from their initial ones, as after training."""
    generator = torch.Generator().manual_seed(1)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator) * 0.5)
        norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
        norm.weight.data.copy_(torch.randn(norm.num_features, generator=generator) * 0.2 + 1)
        norm.bias.data.copy_(torch.randn(norm.num_features, generator=generator) * 0.1)
    return model


@pytest.mark.parametrize("backbone", ["fer_vgg_tiny", "fer_resnet_tiny"])
def test_predictions_fold_batch_norms_and_leave_the_training_model_as_it_was(backbone):
    torch.manual_seed(0)
    model = _trained_batch_norms(build_model(backbone, torch.device("cpu"))).train()
    images = torch.randn(20, 1, 48, 48)
    folded = fold_batch_norms(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    left = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # VGG: every norm follows its conv in a Sequential; ResNet keeps its blocks' second norms (bn2)
    assert len(left) == sum(hasattr(m, "bn2") for m in model.modules()) < len(norms)
    assert model.training and all(n.training for n in norms), "the caller's model keeps training"
    with torch.no_grad():
        expected = model.eval()(images).softmax(-1)
    torch.testing.assert_close(predict_views(model, images, "none", torch.device("cpu"))[0], expected,
                               atol=1e-5, rtol=1e-4)
