"""The training recipe's switchable parts; each is a Config field, judged by OOF accuracy.

    targets         dense (N, 7) training targets: one-hot labels, or a teacher's soft pseudo-labels
    mix_batch       mixup / cutmix (timm's box maths), `--mixup`, `--cutmix` (Beta alphas; 0: off)
    loss            cross-entropy on dense targets with label smoothing and optional class weights
                    (`--class-balance`: weight_c ~ count_c^-power, for the rare disgust class)
    make_scheduler  warm-up + cosine or linear decay to 0 (refitted when a budget moves the end), or
                    torch's one-cycle (`--schedule`)
    make_ema        an exponential moving average of the weights (timm's ModelEmaV3, `--ema` decay)

Targets are dense so that soft pseudo-labels, smoothing and mixing all act on one
representation; random draws use torch's global RNG, which train.py seeds per epoch.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.mixup import cutmix_bbox_and_lam
from timm.utils import ModelEmaV3

from fer_kaggle.data.competition import NUM_CLASSES

SCHEDULES = ("cosine", "linear", "onecycle")


def targets(labels):
    """float32 (N, 7): one-hot rows for integer labels; (N, 7) probability rows pass through."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.float32)
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def class_weights(hard_labels, power):
    """Per-class loss weights count^-power, scaled so the average training row weighs 1."""
    counts = np.bincount(hard_labels, minlength=NUM_CLASSES).astype(np.float64)
    weights = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
    weights *= len(hard_labels) / (weights * counts).sum()
    return torch.tensor(weights, dtype=torch.float32)


def smooth(batch_targets, smoothing):
    return batch_targets * (1 - smoothing) + smoothing / batch_targets.shape[1]


def loss(logits, batch_targets, smoothing=0.0, weights=None):
    """Cross-entropy against dense targets; with `weights`, a weighted mean over rows (t . w)."""
    per_row = -(smooth(batch_targets, smoothing) * F.log_softmax(logits.float(), -1)).sum(-1)
    if weights is None:
        return per_row.mean()
    row_weights = batch_targets @ weights.to(batch_targets.device)
    return (per_row * row_weights).sum() / row_weights.sum()


def mix_batch(images, batch_targets, mixup_alpha, cutmix_alpha, prob):
    """Mix each row with its mirror in the batch (timm's convention): mixup or cutmix, one per batch."""
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or float(torch.rand(())) >= prob:
        return images, batch_targets
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand(())) < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    flipped = images.flip(0)
    if use_cutmix:
        (top, bottom, left, right), lam = cutmix_bbox_and_lam(images.shape, lam, correct_lam=True)
        images = images.clone()
        images[..., top:bottom, left:right] = flipped[..., top:bottom, left:right]
    else:
        images = images * lam + flipped * (1 - lam)
    return images, batch_targets * lam + batch_targets.flip(0) * (1 - lam)


def make_scheduler(schedule, optimizer, epochs, steps_per_epoch, warmup_epochs, peak_lr):
    """Per-step LR schedule: linear warm-up then cosine or linear decay to 0 (WarmupDecay), or one-cycle
    (warm-up share = warmup/epochs)."""
    total = epochs * steps_per_epoch
    warmup = max(1, round(warmup_epochs * steps_per_epoch))
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=total,
                                                   pct_start=min(0.5, warmup / total), anneal_strategy="cos")
    if schedule not in DECAYS:
        raise ValueError(f"unknown schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(warmup, total, schedule))


DECAYS = ("cosine", "linear")


class WarmupDecay:
    """The LR factor of each step: linear warm-up, then cosine or linear decay to 0 at the last planned step.

    `refit(step, total)` moves the end while the unit trains (a budgeted run that turns out slower than
    planned: budget.Keeper): from `step` on, the factor decays from its value there to 0 at `total`, in the
    same shape, so the unit still ends at 0 ("Budgeted Training", Li et al. 2020: decay to zero at the
    budget's end rather than cutting a longer schedule short). It is a callable object, not a closure, so
    LambdaLR's state_dict keeps its refits and a resumed unit continues the same curve.
    """

    def __init__(self, warmup, total, shape="cosine"):
        self.warmup, self.total, self.shape = warmup, total, shape
        self.refits = []  # [step, factor there, new total], in order

    def decay(self, progress):
        progress = min(1.0, max(0.0, progress))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if self.shape == "cosine" else 1.0 - progress

    def __call__(self, step):
        for start, factor, total in reversed(self.refits):
            if step >= start:
                return factor * self.decay((step - start) / max(1, total - start))
        if step < self.warmup:
            return (step + 1) / self.warmup
        return self.decay((step - self.warmup) / max(1, self.total - self.warmup))

    def refit(self, step, total):
        """From `step` (steps taken so far) on, decay to 0 at step `total` instead."""
        self.refits.append([step, self(step), total])

    @property
    def end(self):
        return self.refits[-1][2] if self.refits else self.total


def refit_schedule(scheduler, total_steps):
    """Make a running unit's LR reach 0 at `total_steps`; False for a schedule that cannot (one-cycle)."""
    decay = getattr(scheduler, "lr_lambdas", [None])[0]
    if not isinstance(decay, WarmupDecay):
        return False
    if decay.end != total_steps:
        decay.refit(scheduler.last_epoch, total_steps)
    return True


def make_ema(model, decay):
    """An EMA of the weights (with timm's warm-up, so early steps are not dominated by the init).

    Float32 like the weights it copies (autocast leaves parameters in float32). No `dtype=` argument:
    timm 1.0.9-1.0.28, which setup.cfg accepts and GPU images preinstall, does not have it.
    """
    if decay <= 0:
        return None
    return ModelEmaV3(model, decay=decay, use_warmup=True)
