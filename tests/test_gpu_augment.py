"""The batched augmentation (fer_kaggle.gpu_augment) against albumentations, on real FER2013 faces.

It runs on the CPU here; the same code runs on CUDA (the last test, skipped without a GPU).
"""

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from scipy.stats import ks_2samp

from conftest import DEMO

from fer_kaggle.training import augment
from fer_kaggle.data.competition import read_train
from fer_kaggle.training.gpu_augment import BatchAugment

TRAIN = DEMO / "train.csv.xz"


@pytest.fixture(scope="module")
def faces():
    """The 2,400 uint8 (48, 48) faces of the demo sample."""
    return read_train(TRAIN)[0]


@pytest.fixture(scope="module")
def stats(faces):
    return augment.normalize_stats(faces)


def albumentations_batch(pipeline, images):
    """albumentations, image by image, stacked: float32 (N, 1, H, W)."""
    return np.stack([pipeline(image=image)["image"].numpy() for image in images])


def batched(pipeline, images, seed=0, image_size=48):
    generator = torch.Generator().manual_seed(seed)
    return BatchAugment.from_pipeline(pipeline, image_size)(torch.from_numpy(images), generator).numpy()


# ---------------------------------------------------------------- 1. fixed parameters: the same pixels

# Each transform with its random parameters pinned (p=1, a range of one value), then Normalize.
# Differences are compared in grey levels (normalised difference * std * 255):
#   exact (0): flips, whole-pixel shifts (0.1 * 48 = 4.8 is truncated to 4 pixels, as albumentations
#     does), brightness/contrast (albucore's uint8 lookup table truncates; so does the batched path),
#     crops, Normalize;
#   rotation/scaling/shear: the batched path computes cv2.warpAffine's source coordinates in its fixed
#     point (1/32 pixel), but blends in float32 where cv2 uses 15-bit integer weights, so a pixel
#     whose value falls on a rounding tie can differ by one grey level. Measured on these 500 faces:
#     0.07-0.13% of pixels differ, by exactly 1 level (mean 0.0007-0.0013 levels), borders included;
#     bounds: max 1 level, mean < 0.01;
#   the chain flip, affine, contrast x1.15: a one-level tie after the affine becomes 1.15 levels, and
#     up to 2 once truncated; bounds: max 2, mean < 0.01;
#   Resize to 64 (used only with --image-size 64): cv2.resize blends with 11-bit weights; measured
#     10.8% of pixels off by one level (mean 0.108); bounds: max 1, mean < 0.15.
# (Had the grid been F.affine_grid's exact coordinates, rotations would differ by up to 5 levels at the
# black border, mean 0.07-0.16; that is why the batched Affine builds cv2's grid itself.)
FIXED = {
    "flip": ([A.HorizontalFlip(p=1)], 0, 0),
    "shift 10%": ([A.Affine(translate_percent=(0.1, 0.1), p=1)], 0, 0),
    "shift -7% x, +7% y": ([A.Affine(translate_percent={"x": (-0.07, -0.07), "y": (0.07, 0.07)}, p=1)], 0, 0),
    "shift 3 px": ([A.Affine(translate_px=(3, 3), p=1)], 0, 0),
    "rotate 10": ([A.Affine(rotate=(10, 10), p=1)], 1, 0.01),
    "rotate -13.7": ([A.Affine(rotate=(-13.7, -13.7), p=1)], 1, 0.01),
    "scale 1.1": ([A.Affine(scale=(1.1, 1.1), p=1)], 1, 0.01),
    "scale 0.9": ([A.Affine(scale=(0.9, 0.9), p=1)], 1, 0.01),
    "scale x/y, rotate, shift, shear": ([A.Affine(scale={"x": (0.93, 0.93), "y": (1.07, 1.07)}, rotate=(7, 7),
                                                  translate_percent=(0.05, 0.05), shear=(5, 5), p=1)], 1, 0.01),
    "rotate, grey fill": ([A.Affine(rotate=(12, 12), fill=100, p=1)], 1, 0.01),
    "brightness +0.2": ([A.RandomBrightnessContrast(brightness_limit=(0.2, 0.2), contrast_limit=(0, 0), p=1)], 0, 0),
    "brightness -0.13, contrast +0.17": ([A.RandomBrightnessContrast(
        brightness_limit=(-0.13, -0.13), contrast_limit=(0.17, 0.17), p=1)], 0, 0),
    "brightness by mean": ([A.RandomBrightnessContrast(brightness_limit=(0.1, 0.1), contrast_limit=(-0.1, -0.1),
                                                       brightness_by_max=False, p=1)], 0, 0),
    "hole over everything": ([A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(48, 48),
                                              hole_width_range=(48, 48), fill=0, p=1)], 0, 0),
    "centre crop": ([A.CenterCrop(44, 44)], 0, 0),
    "resize 64": ([A.Resize(64, 64)], 1, 0.15),
    "flip, affine, brightness/contrast": ([
        A.HorizontalFlip(p=1),
        A.Affine(scale=(1.05, 1.05), translate_percent=(-0.05, -0.05), rotate=(-8, -8), border_mode=0, p=1),
        A.RandomBrightnessContrast(brightness_limit=(0.1, 0.1), contrast_limit=(0.15, 0.15), p=1)], 2, 0.01),
    "normalize only": ([], 0, 0),
}


@pytest.mark.parametrize("name", FIXED)
def test_fixed_parameters_give_albumentations_pixels(name, faces, stats):
    transforms, max_levels, mean_levels = FIXED[name]
    mean, std = stats
    pipeline = A.Compose(transforms + [A.Normalize(mean=(mean,), std=(std,)), ToTensorV2()], seed=0)
    images = faces[:500]
    expected, got = albumentations_batch(pipeline, images), batched(pipeline, images)
    assert got.shape == expected.shape and got.dtype == np.float32
    levels = np.abs(got - expected) * std * 255
    assert levels.max() <= max_levels + 1e-3, name
    assert levels.mean() <= mean_levels + 1e-6, name


def test_no_augment_is_the_eval_pipeline(faces, stats):
    """Level "none" is Normalize only: exactly albumentations' eval pipeline, both input shapes."""
    images = faces[:200]
    expected = augment.to_tensor(images, augment.eval_pipeline(*stats)).numpy()
    augmenter = BatchAugment.from_pipeline(augment.train_pipeline(*stats, "none"))
    g = torch.Generator()
    assert np.array_equal(augmenter(torch.from_numpy(images), g).numpy(), expected)
    assert np.array_equal(augmenter(torch.from_numpy(images).unsqueeze(1), g).numpy(), expected)


# ---------------------------------------------------------------- 2. random parameters: the same distributions

def image_statistics(outputs, images, stats):
    """Per image, paired with its input so that what the faces differ in cancels out: the change of
    mean and of std (grey levels), the change of the fraction of black pixels (padding and holes),
    whether it holds an all-black 8 x 8 square (a hole), and whether it correlates better with the
    mirrored input than with the input (a flip)."""
    mean, std = stats
    out = outputs[:, 0].reshape(len(outputs), -1).astype(np.float64) * std * 255 + mean * 255
    src = images.reshape(len(images), -1).astype(np.float64)
    mirrored = images[:, :, ::-1].reshape(len(images), -1).astype(np.float64)

    def corr(a, b):
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)

    black = np.abs(out) < 0.5
    squares = F.avg_pool2d(torch.from_numpy(black.reshape(images.shape)).float().unsqueeze(1), 8, stride=1)
    return {
        "mean": out.mean(1) - src.mean(1),
        "std": out.std(1) - src.std(1),
        "black": black.mean(1) - (src == 0).mean(1),
        "hole": (squares == 1).flatten(1).any(1).numpy().astype(float),
        "flip": (corr(out, mirrored) > corr(out, src)).astype(float),
    }


def z_scores(a, b):
    """(mean of b - mean of a) in standard errors of that difference, per statistic."""
    return {k: (b[k].mean() - a[k].mean()) / np.sqrt(a[k].var() / len(a[k]) + b[k].var() / len(b[k]) + 1e-30)
            for k in a}


@pytest.fixture(scope="module")
def albumentations_statistics(faces, stats):
    """Per-image statistics of albumentations' "light" and "full" outputs on the 2,400 faces."""
    return {level: image_statistics(albumentations_batch(augment.train_pipeline(*stats, level), faces), faces, stats)
            for level in ("light", "full")}


@pytest.mark.parametrize("level", ["light", "full"])
def test_random_pipelines_match_albumentations_statistically(level, faces, stats, albumentations_statistics):
    """Means within 4 standard errors, and two-sample KS p > 0.001 for each statistic.

    Measured with these seeds: |z| <= 1.96 ("light"), <= 1.3 ("full"); KS p >= 0.2.
    """
    expected = albumentations_statistics[level]
    got = image_statistics(batched(augment.train_pipeline(*stats, level), faces, seed=1), faces, stats)
    z = z_scores(expected, got)
    assert all(abs(v) < 4 for v in z.values()), z
    p = {k: ks_2samp(expected[k], got[k]).pvalue for k in expected}
    assert all(v > 1e-3 for v in p.values()), p


def _wrong(pipeline, change):
    """A copy of the "full" pipeline with one parameter changed."""
    flip, affine, brightness, dropout = pipeline.transforms[:4]
    if change == "flip p 0.3":
        flip.p = 0.3
    elif change == "erase p 0.35":
        dropout.p = 0.35
    elif change == "brightness up to +0.3":
        brightness.brightness_limit = (-0.2, 0.3)
    elif change == "affine p 0.6":
        affine.p = 0.6
    elif change == "shift up to 15%":
        affine.translate_percent = {"x": (-0.15, 0.15), "y": (-0.15, 0.15)}
    elif change == "scale up to 1.2":
        affine.scale = {"x": (0.9, 1.2), "y": (0.9, 1.2)}
    return pipeline


@pytest.mark.parametrize("change", ["flip p 0.3", "erase p 0.35", "brightness up to +0.3", "affine p 0.6",
                                    "shift up to 15%", "scale up to 1.2"])
def test_statistics_see_a_wrong_parameter(change, faces, stats, albumentations_statistics):
    """The comparison above has teeth: one parameter off, and some statistic is over 4 standard
    errors away (measured: 12, 8.5, 9.1, 5.9, 8.6 and 7.9)."""
    pipeline = _wrong(augment.train_pipeline(*stats, "full"), change)
    got = image_statistics(batched(pipeline, faces, seed=1), faces, stats)
    z = z_scores(albumentations_statistics["full"], got)
    assert max(abs(v) for v in z.values()) > 4, z


def test_padding_geometry_matches_albumentations():
    """The "full" Affine alone on a white face, 10,000 times each way: the black (padded) area has the
    same mean, over the whole image and along each edge, within 4 standard errors (measured with
    40,000 draws each way: |z| <= 0.7). A face's own dark pixels would only add noise here."""
    affine = augment.train_pipeline(0.5, 0.25, "full").transforms[1]
    pipeline = A.Compose([affine, ToTensorV2()], seed=0)
    white = np.full((10_000, 48, 48), 255, np.uint8)
    expected = albumentations_batch(pipeline, white)[:, 0] == 0
    got = batched(pipeline, white, seed=3)[:, 0] == 0
    for where, part in {"image": np.s_[:, :, :], "top": np.s_[:, 0], "bottom": np.s_[:, -1],
                        "left": np.s_[:, :, 0], "right": np.s_[:, :, -1]}.items():
        a, b = expected[part].reshape(len(white), -1).mean(1), got[part].reshape(len(white), -1).mean(1)
        z = (b.mean() - a.mean()) / np.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(z) < 4, (where, a.mean(), b.mean(), z)


def test_every_image_gets_its_own_parameters(faces, stats):
    """One face 512 times: with every transform forced on, 512 different outputs; with the real
    "full" probabilities, only the ~5% that draw no continuous parameter (no affine, no
    brightness/contrast, no hole) can repeat one another."""
    same = torch.from_numpy(np.repeat(faces[:1], 512, axis=0))
    pipeline = augment.train_pipeline(*stats, "full")
    real = BatchAugment.from_pipeline(pipeline)(same, torch.Generator().manual_seed(0))
    for transform in pipeline.transforms:
        transform.p = 1.0
    forced = BatchAugment.from_pipeline(pipeline)(same, torch.Generator().manual_seed(0))
    assert len(torch.unique(forced.flatten(1), dim=0)) == 512
    assert len(torch.unique(real.flatten(1), dim=0)) >= 0.9 * 512


def test_holes_are_rectangles_of_the_drawn_sizes(faces):
    """CoarseDropout with p=1: one black rectangle per face, 8-16 pixels a side, every size and every
    position range used (faces lifted to >= 1 so that only the hole is black)."""
    images = np.maximum(faces[:1000], 1)
    pipeline = A.Compose([A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(8, 16),
                                          hole_width_range=(8, 16), fill=0, p=1), ToTensorV2()])
    black = batched(pipeline, images)[:, 0] == 0
    rows, cols = black.any(2), black.any(1)
    heights, widths = rows.sum(1), cols.sum(1)
    assert np.array_equal(black.sum((1, 2)), heights * widths)  # a full rectangle
    assert set(heights) == set(widths) == set(range(8, 17))
    tops, lefts = rows.argmax(1), cols.argmax(1)
    assert tops.min() == 0 and lefts.min() == 0 and (tops + heights).max() == 48 and (lefts + widths).max() == 48


def test_random_crop_takes_every_window(faces, stats):
    """RandomCrop(44): each output is one 44 x 44 window of its normalised face, and all 25 top-left
    corners turn up, about equally often (1,000 faces: 40 expected each)."""
    images = faces[:1000]
    pipeline = augment.train_pipeline(*stats, "none", crop=44)
    got = torch.from_numpy(batched(pipeline, images))
    assert got.shape == (1000, 1, 44, 44)
    normalised = torch.from_numpy(augment.to_tensor(images, augment.eval_pipeline(*stats)).numpy())
    windows = normalised.unfold(2, 44, 1).unfold(3, 44, 1)  # (N, 1, 5, 5, 44, 44)
    match = (windows == got[:, :, None, None]).flatten(-2).all(-1)[:, 0]  # (N, 5, 5)
    assert bool(match.flatten(1).any(1).all())
    counts = np.bincount(match.flatten(1).float().argmax(1).numpy(), minlength=25)
    assert counts.min() >= 15 and counts.max() <= 70, counts


def test_resize_then_full_augmentation_runs(faces, stats):
    """--image-size 64 --crop 56: Resize first, the rest at 64, then the crop."""
    pipeline = augment.train_pipeline(*stats, "full", image_size=64, crop=56)
    assert batched(pipeline, faces[:64]).shape == (64, 1, 56, 56)


# ---------------------------------------------------------------- 3. reproducibility

def test_same_seed_same_batch_other_seed_other_batch(faces, stats):
    augmenter = BatchAugment.from_pipeline(augment.train_pipeline(*stats, "full"))
    images = torch.from_numpy(faces[:256])
    first = augmenter(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, augmenter(images, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, augmenter(images, torch.Generator().manual_seed(8)))


def test_the_saved_json_gives_the_same_augmentation(faces, stats, tmp_path):
    """A unit's train_pipeline.json, loaded back, gives the same batched augmentation."""
    pipeline = augment.train_pipeline(*stats, "full", crop=44)
    A.save(pipeline, str(tmp_path / "train_pipeline.json"), data_format="json")
    loaded = A.load(str(tmp_path / "train_pipeline.json"), data_format="json")
    images = torch.from_numpy(faces[:128])
    first = BatchAugment.from_pipeline(pipeline)(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, BatchAugment.from_pipeline(loaded)(images, torch.Generator().manual_seed(3)))


# ---------------------------------------------------------------- 4. what it cannot do, it says

@pytest.mark.parametrize("transform, words", [  # built in the test: ShiftScaleRotate warns when built
    (lambda: A.GaussNoise(p=1), "GaussNoise"),
    (lambda: A.ShiftScaleRotate(p=1), "ShiftScaleRotate"),  # an Affine subclass: not taken for one
    (lambda: A.OneOf([A.HorizontalFlip(), A.VerticalFlip()]), "OneOf"),
    (lambda: A.Affine(rotate=10, border_mode=cv2.BORDER_REFLECT_101), "border_mode"),
    (lambda: A.Affine(rotate=10, interpolation=cv2.INTER_CUBIC), "interpolation"),
    (lambda: A.CoarseDropout(fill="random"), "fill"),
    (lambda: A.RandomCrop(40, 40, pad_if_needed=True), "pad_if_needed"),
], ids=["GaussNoise", "ShiftScaleRotate", "OneOf", "border_mode", "interpolation", "fill", "pad_if_needed"])
@pytest.mark.filterwarnings("ignore:ShiftScaleRotate is a special case")
def test_what_it_does_not_reproduce_is_a_value_error(transform, words):
    pipeline = A.Compose([transform(), A.Normalize(mean=(0.5,), std=(0.25,)), ToTensorV2()])
    with pytest.raises(ValueError, match=words):
        BatchAugment.from_pipeline(pipeline)


def test_brightness_after_normalize_is_a_value_error():
    pipeline = A.Compose([A.Normalize(mean=(0.5,), std=(0.25,)), A.RandomBrightnessContrast(), ToTensorV2()])
    with pytest.raises(ValueError, match="after Normalize"):
        BatchAugment.from_pipeline(pipeline)


def test_wrong_images_are_a_value_error(faces, stats):
    augmenter = BatchAugment.from_pipeline(augment.train_pipeline(*stats, "full"))
    with pytest.raises(ValueError, match="uint8"):
        augmenter(torch.from_numpy(faces[:4]).float(), torch.Generator())
    with pytest.raises(ValueError, match="48"):
        augmenter(torch.zeros(4, 64, 64, dtype=torch.uint8), torch.Generator())


# ---------------------------------------------------------------- the same on a GPU

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_matches_albumentations_statistically(faces, stats, albumentations_statistics):
    augmenter = BatchAugment.from_pipeline(augment.train_pipeline(*stats, "full"))
    images = torch.from_numpy(faces).cuda()
    out = augmenter(images, torch.Generator("cuda").manual_seed(1))
    assert out.device == images.device and out.dtype == torch.float32
    assert torch.equal(out, augmenter(images, torch.Generator("cuda").manual_seed(1)))
    z = z_scores(albumentations_statistics["full"], image_statistics(out.cpu().numpy(), faces, stats))
    assert all(abs(v) < 4 for v in z.values()), z
