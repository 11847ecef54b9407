"""TTA: shapes, probabilities, and the views themselves."""
import pytest
import torch

from fer_kaggle.models.backbones import build_model
from fer_kaggle.models.tta import average, predict_views, view, views


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
