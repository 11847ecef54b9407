"""TTA: shapes, probabilities, and the views themselves."""
import pytest
import torch

from fer_kaggle.train import build_model
from fer_kaggle.tta import VIEWS, predict_views, view


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
    assert len(VIEWS["flip_shift"]) == len(set(VIEWS["flip_shift"])) == 10


def test_unknown_tta_is_refused():
    model = build_model("fer_vgg_tiny", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown TTA"):
        predict_views(model, torch.zeros(1, 1, 48, 48), "ten_crop", torch.device("cpu"))
