"""Test-time augmentation: predictions averaged over flipped, shifted or cropped views.

Views are cheap tensor ops on normalised batches, so memory stays at one batch of one
view at a time whatever the number of images. A model trained on random `crop` x `crop`
crops (--crop) sees the centre crop as its plain view, and `ten_crop` adds the four
corner crops, each also flipped. Views are averaged in probability space (`probs`) or
as logits before one softmax (`probs_logit`); both are saved and the ensemble keeps,
per model, whichever has the higher OOF accuracy.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

SHIFT = 2  # pixels; small next to the train pipeline's +-10% (4.8 px) translation
_SHIFTS = ((0, 0), (SHIFT, 0), (-SHIFT, 0), (0, SHIFT), (0, -SHIFT))
_CORNERS = ((0, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))  # centre, then corners (units of the crop margin)
TTA_CHOICES = ("none", "flip", "flip_shift", "ten_crop")
SPACES = ("prob", "logit")


def views(tta, crop=0, count=None):
    """[(flip, (dy, dx))] of a TTA choice; offsets are pixels, or multiples of the margin for ten_crop.

    `count`: only that many (a budgeted run behind its time): the plain view and its flip first, then
    each further offset with its flip, so view 0 stays the plain image.
    """
    if tta not in TTA_CHOICES:
        raise ValueError(f"unknown TTA '{tta}'; choose one of {', '.join(TTA_CHOICES)}")
    if tta == "ten_crop" and not crop:
        raise ValueError("ten-crop TTA needs a model trained on crops: add --crop, e.g. --crop 44")
    offsets = {"none": [(0, 0)], "flip": [(0, 0)], "flip_shift": _SHIFTS, "ten_crop": _CORNERS}[tta]
    flips = (False,) if tta == "none" else (False, True)
    every = [(flip, offset) for flip in flips for offset in offsets]
    if count is None or count >= len(every):
        return every
    return [(flip, offset) for offset in offsets for flip in flips][:max(1, count)]


def fewest_views(tta):
    """The fewest views a budget may cut a TTA choice to: the plain image and its flip (one without TTA)."""
    return 1 if tta == "none" else 2


def view(batch, flip, offset, crop=0, ten_crop=False):
    """One view of an (N, C, H, W) batch: optional horizontal flip, then a shift or a crop window."""
    if flip:
        batch = batch.flip(-1)
    h, w = batch.shape[-2:]
    dy, dx = offset
    if crop:
        margin_y, margin_x = (h - crop) // 2, (w - crop) // 2
        if ten_crop:
            dy, dx = dy * margin_y, dx * margin_x
        top = min(max(margin_y + dy, 0), h - crop)
        left = min(max(margin_x + dx, 0), w - crop)
        return batch[..., top:top + crop, left:left + crop]
    if dy or dx:
        padded = F.pad(batch, (SHIFT, SHIFT, SHIFT, SHIFT), mode="replicate")
        batch = padded[..., SHIFT + dy:SHIFT + dy + h, SHIFT + dx:SHIFT + dx + w]
    return batch


def fold_batch_norms(model):
    """An eval-mode copy of `model` in which each batch norm that follows a convolution in a Sequential
    (conv_bn_relu: all of fer_vgg_*'s, fer_resnet_*'s stems and shortcuts) is folded into the convolution's
    weights: the same outputs to float rounding, one pass over the maps fewer. fer_vgg_cpu predicts 1.3
    times the views a second in float32 on a CPU (BENCHMARKS.md), and its TTA is a quarter of an AVX2 hour."""
    model = copy.deepcopy(model).eval()  # the caller's model may still be training (the per-epoch check)
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequential) - 1):
            conv, norm = sequential[i], sequential[i + 1]
            if (type(conv) is nn.Conv2d and type(norm) is nn.BatchNorm2d and norm.running_mean is not None
                    and conv.out_channels == norm.num_features):
                sequential[i], sequential[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return model


@torch.no_grad()
def predict_views(model, images, tta, device, batch_size=256, amp_dtype=None, crop=0, logits=False, count=None):
    """float32 tensor (views, N, 7) of softmax probabilities (or logits); view 0 is the plain image.
    `count`: the first that many views only (see `views`)."""
    num_classes = model.num_classes
    model = fold_batch_norms(model)
    chosen = views(tta, crop, count)
    out = torch.empty(len(chosen), len(images), num_classes)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        for v, (flip, offset) in enumerate(chosen):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                scores = model(view(batch, flip, offset, crop, tta == "ten_crop")).float()
            out[v, start:start + len(batch)] = (scores if logits else scores.softmax(-1)).cpu()
    return out


def average(view_logits, space):
    """Probabilities from (views, N, 7) logits: mean of softmaxes ("prob") or softmax of the mean ("logit")."""
    if space == "prob":
        return view_logits.softmax(-1).mean(0)
    if space == "logit":
        return view_logits.mean(0).softmax(-1)
    raise ValueError(f"unknown TTA space '{space}'; choose one of {', '.join(SPACES)}")
