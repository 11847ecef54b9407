"""Test-time augmentation: class probabilities averaged over flipped and shifted views.

Views are cheap tensor ops on normalised batches, so memory stays at one batch of
one view at a time whatever the number of images.
"""
import torch
import torch.nn.functional as F

SHIFT = 2  # pixels; small next to the train pipeline's +-10% (4.8 px) translation
_SHIFTS = ((0, 0), (SHIFT, 0), (-SHIFT, 0), (0, SHIFT), (0, -SHIFT))
VIEWS = {
    "none": [(False, (0, 0))],
    "flip": [(False, (0, 0)), (True, (0, 0))],
    "flip_shift": [(flip, shift) for flip in (False, True) for shift in _SHIFTS],
}


def view(batch, flip, shift):
    """One view of an (N, C, H, W) batch: optional horizontal flip, then a shift with edge padding."""
    if flip:
        batch = batch.flip(-1)
    dy, dx = shift
    if dy or dx:
        h, w = batch.shape[-2:]
        padded = F.pad(batch, (SHIFT, SHIFT, SHIFT, SHIFT), mode="replicate")
        batch = padded[..., SHIFT + dy:SHIFT + dy + h, SHIFT + dx:SHIFT + dx + w]
    return batch


@torch.no_grad()
def predict_views(model, images, tta, device, batch_size=256, amp_dtype=None):
    """Softmax probabilities of every view: float32 tensor (views, N, 7); view 0 is the plain image."""
    if tta not in VIEWS:
        raise ValueError(f"unknown TTA '{tta}'; choose one of {', '.join(VIEWS)}")
    model.eval()
    views = VIEWS[tta]
    out = torch.empty(len(views), len(images), model.num_classes)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        for v, (flip, shift) in enumerate(views):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(view(batch, flip, shift))
            out[v, start:start + len(batch)] = logits.float().softmax(-1).cpu()
    return out
