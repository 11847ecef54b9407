"""The train augmentation as batched torch ops, so a GPU is not starved by per-image albumentations.

The albumentations Compose of `augment.train_pipeline` stays the one definition of the augmentation
(its JSON is saved beside each unit): `BatchAugment.from_pipeline` reads every transform's parameters
and probability from it and maps the transform to a batched op that draws independent parameters per
image, with the same distributions as albumentations 2.0 (read from its source), from one
torch.Generator. A transform it does not know, or an option it does not reproduce, is a ValueError,
never silently skipped.

While the pixels are still uint8 in albumentations (before Normalize), the batched path keeps them
as float32 holding the same uint8 values: it rounds after the geometric ops as cv2 does, and
truncates after brightness/contrast as albucore's uint8 lookup table does. Affine computes its
sampling coordinates in cv2.warpAffine's fixed point (1/32 pixel), so given the same parameters
flips, shifts, brightness/contrast, holes, crops and Normalize are exact, and a rotation or a scaling
differs from cv2 by one grey level on about 0.1% of the pixels (grid_sample blends in float32, cv2
with 15-bit integer weights). Resize (only when --image-size is not 48) differs by one grey level on
about 11% of the pixels (cv2.resize's 11-bit weights). Measured in tests/test_gpu_augment.py.

    augment = BatchAugment.from_pipeline(train_pipe)
    batch = augment(images_uint8_on_gpu[rows], generator)   # float32 (N, 1, H, W), normalised
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F

INTER_LINEAR = 1  # cv2.INTER_LINEAR
BORDER_CONSTANT = 0  # cv2.BORDER_CONSTANT


def _uniform(low, high, n, g):
    """n float64s uniform in [low, high) on g's device: parameters in double, as albumentations draws
    them, so e.g. a brightness shift truncates to the same grey level."""
    return low + (high - low) * torch.rand(n, generator=g, device=g.device, dtype=torch.float64)


@functools.lru_cache(maxsize=8)
def _centre(w, h, device):
    """The image centre as a float64 tensor on `device`, made once per size (not copied to it per batch)."""
    return torch.tensor([(w - 1) / 2, (h - 1) / 2], device=device, dtype=torch.float64)


def _randint(low, high, n, g):
    """n integers uniform in [low, high] (both inclusive, like random.randint); low, high tensors or ints."""
    return (low + torch.rand(n, generator=g, device=g.device) * (high - low + 1)).floor().long()


def _where(apply, new, old):
    """Per image: `new` where `apply` (N,) is true, else `old`."""
    return torch.where(apply.view(-1, 1, 1, 1), new, old)


def _require(transform, ok, what):
    if not ok:
        raise ValueError(f"{type(transform).__name__}: {what} is not supported by the batched augmentation")


# ---------------------------------------------------------------- one builder per albumentations transform
# Each returns step(x, g) -> x, where x is float32 (N, 1, H, W); `uint8` says whether x still holds the
# uint8 values albumentations would hold at that point (before Normalize).

def _horizontal_flip(t, uint8):
    def step(x, g):
        return _where(torch.rand(len(x), generator=g, device=g.device) < t.p, x.flip(-1), x)
    return step


def _scale_factors(t, n, g):
    """Affine._get_scale: x and y scales, drawn independently unless keep_ratio."""
    def draw(low, high):
        if not t.balanced_scale:
            return _uniform(low, high, n, g)
        # as albumentations: U(low, 1) or U(1, high), picked at random when the range spans 1
        below, above = _uniform(low, 1.0, n, g), _uniform(1.0, high, n, g)
        if low < 1 < high:
            return torch.where(torch.rand(n, generator=g, device=g.device) < 0.5, below, above)
        return below if low < 1 else above if high > 1 else torch.ones_like(below)
    sx = draw(*t.scale["x"])
    sy = sx if t.keep_ratio else draw(*t.scale["y"])
    return sx, sy


def _cv2_grid(m_inv, h, w):
    """grid_sample's grid (N, H, W, 2) sampling the source at m_inv (N, 2, 3, pixel units) times each
    destination pixel, in cv2.warpAffine's fixed point: the column term and the row term of each
    coordinate rounded to 1/1024 pixel, their sum (+ half a step) floored to 1/32 pixel."""
    cols = torch.arange(w, device=m_inv.device, dtype=torch.float64).view(1, 1, w, 1)
    rows = torch.arange(h, device=m_inv.device, dtype=torch.float64).view(1, h, 1, 1)
    m = m_inv.transpose(1, 2).unsqueeze(1)  # (N, 1, 3, 2): [x coefficient, y coefficient, offset]
    col_term = (m[:, :, 0:1] * cols * 1024).round() / 32  # (N, 1, W, 2), in 1/32 pixels
    row_term = (((m[:, :, 1:2] * rows + m[:, :, 2:3]) * 1024).round() + 16) / 32  # (N, H, 1, 2)
    source = (col_term.float() + row_term.float()).floor_()  # 1/32 pixels, exact in float32
    source.div_(16).add_(1)
    source[..., 0].div_(w)  # by Python numbers: no tensor to copy to the device per batch
    source[..., 1].div_(h)
    return source.sub_(1)  # pixel i -> (2i + 1) / size - 1


def _affine(t, uint8):
    """Affine: albumentations' matrix, sampled by one grid_sample per batch the way cv2.warpAffine does.

    albumentations maps source to destination pixels (centres at integers) by M = C T Shear R S C^-1,
    with C the shift to the centre ((W-1)/2, (H-1)/2), and cv2.warpAffine samples the source at
    M^-1 (destination), at 1/32 pixel precision. The grid holds those coordinates, converted to
    grid_sample's align_corners=False units (pixel i at (2i + 1) / W - 1, the same pixel centres).
    Zero padding is cv2's constant border of 0; another fill value c is warp(x - c) + c. Rounding
    half up is cv2's; what still differs is grid_sample's float32 blend against cv2's 15-bit integer
    weights: about 0.1% of pixels by one grey level.
    """
    _require(t, t.interpolation == INTER_LINEAR, f"interpolation={t.interpolation} (only cv2.INTER_LINEAR)")
    _require(t, t.border_mode == BORDER_CONSTANT, f"border_mode={t.border_mode} (only cv2.BORDER_CONSTANT)")
    _require(t, not t.fit_output, "fit_output=True")
    fill = float(np.asarray(t.fill, dtype=np.float64).reshape(-1)[0])
    _require(t, np.all(np.asarray(t.fill) == fill), f"fill={t.fill} (one grey value)")

    def step(x, g):
        n, _, h, w = x.shape
        apply = torch.rand(n, generator=g, device=g.device) < t.p
        if t.translate_px is not None:  # Affine._get_translate_params: whole pixels
            tx = _randint(int(t.translate_px["x"][0]), int(t.translate_px["x"][1]), n, g).double()
            ty = _randint(int(t.translate_px["y"][0]), int(t.translate_px["y"][1]), n, g).double()
        else:  # a fraction of the size, truncated to whole pixels (int())
            tx = (_uniform(*t.translate_percent["x"], n, g) * w).trunc()
            ty = (_uniform(*t.translate_percent["y"], n, g) * h).trunc()
        kx = torch.deg2rad(-_uniform(*t.shear["x"], n, g)).tan()
        ky = torch.deg2rad(-_uniform(*t.shear["y"], n, g)).tan()
        sx, sy = _scale_factors(t, n, g)
        angle = torch.deg2rad(_uniform(*t.rotate, n, g))
        cos, sin = angle.cos(), angle.sin()
        # A = Shear @ R @ S with R = [[cos, sin], [-sin, cos]] (create_affine_transformation_matrix),
        # inverted in closed form (torch.linalg.inv would wait for the GPU to check for singularity)
        a11, a12 = (cos - kx * sin) * sx, (sin + kx * cos) * sy
        a21, a22 = (ky * cos - sin) * sx, (ky * sin + cos) * sy
        det = a11 * a22 - a12 * a21
        a_inv = torch.stack([torch.stack([a22, -a12], -1), torch.stack([-a21, a11], -1)], -2) / det.view(-1, 1, 1)
        # M^-1: source = c + A^-1 (destination - c - t)
        centre = _centre(w, h, x.device)
        offset = centre - (a_inv @ (centre + torch.stack([tx, ty], -1)).unsqueeze(-1)).squeeze(-1)
        m_inv = torch.cat([a_inv, offset.unsqueeze(-1)], -1)  # (N, 2, 3)
        # images not drawn get the identity: pixel centres, exact once rounded to uint8 values
        m_inv = torch.where(apply.view(-1, 1, 1), m_inv, torch.eye(2, 3, dtype=m_inv.dtype, device=x.device))
        grid = _cv2_grid(m_inv, h, w)
        if fill:
            x = x - fill
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if fill:
            warped += fill
        return warped.add_(0.5).floor_() if uint8 else warped
    return step


def _brightness_contrast(t, uint8):
    """RandomBrightnessContrast on uint8 (albumentations 2.0 + albucore): out = x * alpha + beta, clipped
    to 0-255 and truncated to uint8, with alpha = 1 + U(contrast_limit) (contrast about 0, not about the
    mean, whatever its docstring says) and beta = U(brightness_limit) * 255 (or * the image's mean)."""
    _require(t, uint8, "brightness/contrast after Normalize (on float pixels)")

    def step(x, g):
        n = len(x)
        apply = torch.rand(n, generator=g, device=g.device) < t.p
        alpha = 1.0 + _uniform(*t.contrast_limit, n, g)
        beta = _uniform(*t.brightness_limit, n, g)
        beta = beta * (255.0 if t.brightness_by_max else x.mean((1, 2, 3)))
        if t.ensure_safe_range:  # fpixel.get_safe_brightness_contrast_params, per image
            safe_beta = torch.where(alpha > 0, beta.clamp(0, 255), beta.clamp(max=255))
            alpha = torch.where(alpha > 0, torch.minimum(alpha, (255 - safe_beta) / 255),
                                torch.maximum(alpha, -safe_beta / 255))
            beta = safe_beta
        alpha = torch.where(apply, alpha, 1.0).to(x.dtype).view(-1, 1, 1, 1)  # images not drawn: x * 1 + 0
        beta = torch.where(apply, beta, 0.0).to(x.dtype).view(-1, 1, 1, 1)
        return (x * alpha).add_(beta).clamp_(0, 255).floor_()  # not fused: albucore's float32 rounding
    return step


def _coarse_dropout(t, uint8):
    """CoarseDropout: num_holes in num_holes_range, each of a random size (whole pixels when
    hole_height_range's top is >= 1, else fractions of the size, truncated), at a random top-left
    that keeps it inside the image, filled with `fill`."""
    _require(t, isinstance(t.fill, (int, float)), f"fill={t.fill!r} (only a number)")
    pixels = t.hole_height_range[1] >= 1

    def sizes(low, high, side, n, g):
        if pixels:
            return _randint(int(low), int(min(high, side)), n, g)
        return (side * _uniform(low, high, n, g)).long()

    def step(x, g):
        n, _, h, w = x.shape
        apply = torch.rand(n, generator=g, device=g.device) < t.p
        holes = _randint(*t.num_holes_range, n, g)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        mask = torch.zeros(n, h, w, dtype=torch.bool, device=x.device)
        for k in range(t.num_holes_range[1]):  # a loop over holes, batched over images
            hh, hw = sizes(*t.hole_height_range, h, n, g), sizes(*t.hole_width_range, w, n, g)
            top, left = _randint(0, h - hh, n, g), _randint(0, w - hw, n, g)
            top, left, hh, hw = (v.view(-1, 1, 1) for v in (top, left, hh, hw))
            drawn = (apply & (k < holes)).view(-1, 1, 1)
            mask |= ((rows >= top) & (rows < top + hh) & drawn) & ((cols >= left) & (cols < left + hw))
        return x.masked_fill(mask.unsqueeze(1), float(t.fill))
    return step


def _normalize(t, uint8):
    _require(t, t.normalization == "standard", f"normalization={t.normalization!r} (only 'standard')")
    mean, std = np.ravel(t.mean), np.ravel(t.std)
    _require(t, len(mean) == 1 and len(std) == 1, f"mean={t.mean}, std={t.std} (grey images: one channel)")
    _require(t, t.p == 1, f"p={t.p}")
    # albumentations: (x - mean * max) * (1 / (std * max)), in float32
    shift = float(np.float32(mean[0]) * np.float32(t.max_pixel_value))
    factor = float(np.reciprocal(np.float32(std[0]) * np.float32(t.max_pixel_value)))
    return lambda x, g: (x - shift) * factor


def _to_tensor(t, uint8):
    return lambda x, g: x


def _fixed_shape(t):
    _require(t, t.p == 1, f"p={t.p} (a batch needs one output size)")


def _resize(t, uint8):
    """Resize: cv2 INTER_LINEAR is bilinear on pixel centres without antialiasing, as F.interpolate."""
    _fixed_shape(t)
    _require(t, t.interpolation == INTER_LINEAR, f"interpolation={t.interpolation} (only cv2.INTER_LINEAR)")
    _require(t, t.area_for_downscale is None, f"area_for_downscale={t.area_for_downscale!r}")

    def step(x, g):
        if x.shape[-2:] == (t.height, t.width):
            return x
        out = F.interpolate(x, size=(t.height, t.width), mode="bilinear", align_corners=False, antialias=False)
        return out.round() if uint8 else out
    return step


def _crop_window(x, top, left, height, width):
    """Per-image windows: rows top..top+height, columns left..left+width (gathered, no loop)."""
    rows = (top.view(-1, 1) + torch.arange(height, device=x.device)).view(-1, height, 1)
    cols = (left.view(-1, 1) + torch.arange(width, device=x.device)).view(-1, 1, width)
    n = torch.arange(len(x), device=x.device).view(-1, 1, 1)
    return x[:, 0][n, rows, cols].unsqueeze(1)


def _random_crop(t, uint8):
    """RandomCrop: a uniformly random top-left per image, the window inside the image."""
    _fixed_shape(t)
    _require(t, not t.pad_if_needed, "pad_if_needed=True")

    def step(x, g):
        n, _, h, w = x.shape
        if t.height > h or t.width > w:
            raise ValueError(f"RandomCrop({t.height}, {t.width}) is larger than the {h}x{w} images")
        return _crop_window(x, _randint(0, h - t.height, n, g), _randint(0, w - t.width, n, g), t.height, t.width)
    return step


def _center_crop(t, uint8):
    _fixed_shape(t)
    _require(t, not t.pad_if_needed, "pad_if_needed=True")

    def step(x, g):
        h, w = x.shape[-2:]
        if t.height > h or t.width > w:
            raise ValueError(f"CenterCrop({t.height}, {t.width}) is larger than the {h}x{w} images")
        top, left = (h - t.height) // 2, (w - t.width) // 2
        return x[..., top:top + t.height, left:left + t.width]
    return step


BUILDERS = {  # by exact class name: a subclass (ShiftScaleRotate is an Affine) may draw differently
    "HorizontalFlip": _horizontal_flip,
    "Affine": _affine,
    "RandomBrightnessContrast": _brightness_contrast,
    "CoarseDropout": _coarse_dropout,
    "Normalize": _normalize,
    "ToTensorV2": _to_tensor,
    "Resize": _resize,
    "RandomCrop": _random_crop,
    "CenterCrop": _center_crop,
}


class BatchAugment:
    """An albumentations Compose applied to a whole batch of uint8 images at once, on their device."""

    def __init__(self, steps, names, image_size):
        self.steps, self.names, self.image_size = steps, names, image_size

    @classmethod
    def from_pipeline(cls, pipeline, image_size=48):
        """Map each transform of `pipeline` (an A.Compose) to its batched op; `image_size` is the side
        of the input images (FER2013: 48), before any Resize or crop in the pipeline."""
        if getattr(pipeline, "p", 1.0) != 1:
            raise ValueError(f"a Compose applied with p={pipeline.p} is not supported by the batched augmentation")
        steps, names, uint8 = [], [], True
        for transform in pipeline.transforms:
            name = type(transform).__name__
            if name not in BUILDERS:
                raise ValueError(f"the batched augmentation does not know the transform {name}; "
                                 f"it knows {', '.join(BUILDERS)}")
            steps.append(BUILDERS[name](transform, uint8))
            names.append(name)
            uint8 = uint8 and name != "Normalize"
        return cls(steps, names, image_size)

    def __repr__(self):
        return f"BatchAugment({' -> '.join(self.names)})"

    def __call__(self, images, generator):
        """uint8 (N, H, W) or (N, 1, H, W) on any device -> float32 (N, 1, H', W') on that device.

        All randomness comes from `generator` (a torch.Generator on the images' device), so a batch
        is the same for the same seed; each image gets its own parameters.
        """
        if images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images, got {images.dtype}")
        x = images.unsqueeze(1) if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected (N, {self.image_size}, {self.image_size}) or (N, 1, {self.image_size}, "
                             f"{self.image_size}) images, got {tuple(images.shape)}")
        if generator.device.type != x.device.type:
            raise ValueError(f"the generator is on {generator.device}, the images on {x.device}")
        x = x.float()
        for step in self.steps:
            x = step(x, generator)
        return x.contiguous()
