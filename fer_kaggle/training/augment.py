"""The albumentations pipelines and the dataset that applies them.

The train pipeline is the definition of the augmentation; the eval pipeline only
normalises. Both are saved with `A.save` beside each unit's outputs.

Every batch's augmentation is seeded by (epoch seed, batch number), so an epoch's
batches are the same whether it runs first time or after a resume, and whatever
the number of DataLoader workers. Seeding once per batch, not per image, because
reseeding a Compose costs as much as applying it.
"""
import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from fer_kaggle.data.competition import IMAGE_SIZE


AUGMENT_LEVELS = ("none", "light", "full")


def normalize_stats(images, normalize=True):
    """(mean, std) of the training pixels in 0-1 units; (0, 1) when normalisation is off."""
    if not normalize:
        return 0.0, 1.0
    pixels = images.astype(np.float64) / 255.0
    return float(pixels.mean()), float(pixels.std())


def _normalize(mean, std):
    return A.Normalize(mean=(mean,), std=(std,), max_pixel_value=255.0)


def _resize(image_size):
    return [] if image_size == IMAGE_SIZE else [A.Resize(image_size, image_size)]


def train_pipeline(mean, std, augment="full", image_size=IMAGE_SIZE, crop=0, erase=0.5):
    """Augment ("full": flip, shift/scale/rotate, brightness/contrast, random erasing with probability
    `erase`; "light": flip and small shifts, for short runs on little data; "none"), take a random
    `crop` x `crop` window if `crop`, then normalise."""
    if augment not in AUGMENT_LEVELS:
        raise ValueError(f"unknown augment level '{augment}'; choose one of {', '.join(AUGMENT_LEVELS)}")
    steps = []
    if augment == "light":
        steps = [
            A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.05, 0.05), rotate=(-5, 5), border_mode=0, p=0.5),
        ]
    elif augment == "full":
        steps = [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), rotate=(-15, 15),
                     border_mode=0, p=0.8),  # cv2.BORDER_CONSTANT: black, like FER2013's own borders
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(8, 16), hole_width_range=(8, 16),
                            fill=0, p=erase),
        ]
    if crop:
        steps.append(A.RandomCrop(crop, crop))
    return A.Compose(_resize(image_size) + steps + [_normalize(mean, std), ToTensorV2()], seed=0)


def eval_pipeline(mean, std, image_size=IMAGE_SIZE):
    return A.Compose(_resize(image_size) + [_normalize(mean, std), ToTensorV2()], seed=0)


def to_tensor(images, pipeline):
    """Apply a deterministic (eval) pipeline to every image: float32 (N, 1, 48, 48)."""
    return torch.stack([pipeline(image=image)["image"] for image in images])


class EpochSampler(torch.utils.data.Sampler):
    """Yields (row, seed) pairs: a shuffled order, and one augmentation seed per batch."""

    def __init__(self, n_rows, batch_size):
        self.n_rows, self.batch_size = n_rows, batch_size
        self.epoch_seed = 0

    def set_epoch_seed(self, seed):
        self.epoch_seed = seed

    def __iter__(self):
        rng = np.random.default_rng(self.epoch_seed)
        order = rng.permutation(self.n_rows)
        batch_seeds = rng.integers(0, 2**31, size=-(-self.n_rows // self.batch_size))
        seeds = np.repeat(batch_seeds, self.batch_size)[:self.n_rows]
        return iter(zip(order.tolist(), seeds.tolist()))

    def __len__(self):
        return self.n_rows


class FaceDataset(torch.utils.data.Dataset):
    """uint8 faces and their (N, 7) targets; a batch of (row, seed) items -> [(augmented tensor, target), ...]."""

    def __init__(self, images, targets, pipeline):
        self.images, self.targets, self.pipeline = images, targets, pipeline

    def __len__(self):
        return len(self.images)

    def __getitems__(self, items):
        """One call per batch (torch's DataLoader prefers it to __getitem__): one reseed per batch."""
        self.pipeline.set_random_seed(items[0][1])
        return [(self.pipeline(image=self.images[row])["image"], self.targets[row]) for row, _ in items]

    def __getitem__(self, item):
        return self.__getitems__([item])[0]
