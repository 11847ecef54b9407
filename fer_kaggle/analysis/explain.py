"""Explanations of a trained model, for a report: what it looks at and what its filters respond to.

Built on captum where it has the method, our own short code where it has not:

- `saliency`  vanilla gradient saliency, |d score / d pixel|   (captum.attr.Saliency)
- `grad_cam`  Grad-CAM on a conv layer, upsampled to the face  (captum.attr.LayerGradCam and
              LayerAttribution.interpolate)
- `visualise_filters`  gradient ascent on the input to excite one channel (ours)
- `layer_outputs`      one layer's activations for one face (ours: a forward hook)
- `plot_*`             matplotlib figures, saved as PNG files

Typical use, on a finished unit and its out-of-fold predictions:

    model, mean, std = load_unit_model("folds/round0/fer_vgg13/fold0")
    rows = pick_examples(oof_probs, labels)        # correct and wrong examples of every class
    x = normalise(images[rows], mean, std)
    pred = model(x).argmax(1)
    plot_saliency_grid("saliency.png", images[rows], labels[rows], pred,
                       saliency(model, x, pred), grad_cam(model, last_conv_layer(model), x, pred))

Images passed to the model are normalised tensors (N, 1, 48, 48), as `normalise` returns them;
every map returned is a float32 numpy array scaled to 0-1 for display.
"""
import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # no pyplot: no GUI backend and no global state, files only
from torch import nn

from fer_kaggle.core.atomic import atomic_path
from fer_kaggle.data.competition import CLASS_NAMES

OVERLAY_CMAP = "jet"  # the usual Grad-CAM colours: blue = unimportant, red = most important
FACE_CMAP = "gray"
ACTIVATION_CMAP = "viridis"  # layer outputs, drawn on their own: dark = low, yellow = high


# ---------------------------------------------------------------- model and inputs

def load_unit_model(unit_dir):
    """Rebuild a unit's model from its checkpoint, with the weights it predicted with (its EMA where kept).

    Returns (model, mean, std): the model in eval mode on the CPU, and the normalisation the
    unit trained with (floats, in 0-1 pixel units), to pass to `normalise`.
    """
    from fer_kaggle.core.errors import FerKaggleError
    from fer_kaggle.core.runfolder import load_checkpoint, predicting_weights
    from fer_kaggle.models.backbones import build_model
    state = load_checkpoint(unit_dir)
    if state is None:
        raise FerKaggleError(f"{unit_dir}: no checkpoint; run run.sh again to train the unit")
    model = build_model(state["backbone"], torch.device("cpu"))
    model.load_state_dict(predicting_weights(state))
    return model.eval(), float(state["mean"]), float(state["std"])


def normalise(images_uint8, mean, std):
    """uint8 faces (N, 48, 48) -> float32 tensor (N, 1, 48, 48) of (x / 255 - mean) / std.

    Bit for bit what `augment.eval_pipeline(mean, std)` gives: albumentations computes the
    same formula as a float32 lookup table, (x - mean * 255) * (1 / (std * 255)), and so do we.
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 faces (N, H, W), got {images.dtype} {images.shape}")
    shift = np.float32(mean) * np.float32(255)
    scale = np.reciprocal(np.float32(std) * np.float32(255))
    lut = (np.arange(256, dtype=np.float32) - shift) * scale
    return torch.from_numpy(lut[images]).unsqueeze(1)


def conv_layers(model):
    """All `nn.Conv2d` modules of `model`: a list of (qualified name, module), in definition order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def last_conv_layer(model):
    """The last `nn.Conv2d` of the main path: the usual Grad-CAM target.

    1x1 convolutions come after the main path's last 3x3 in our ResNets, but they are the
    shortcut's projection, which sees only the block's input; they are skipped unless the
    model has no larger kernel.
    """
    convs = [module for _, module in conv_layers(model)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")
    spatial = [module for module in convs if max(module.kernel_size) > 1]
    return (spatial or convs)[-1]


def layer_name(model, layer):
    """The qualified name of `layer` inside `model` (e.g. 'features.10.0'), for titles."""
    for name, module in model.named_modules():
        if module is layer:
            return name or type(model).__name__
    raise ValueError(f"{type(layer).__name__} is not a module of {type(model).__name__}")


@contextlib.contextmanager
def _eval_mode(model):
    """Eval mode inside the block (no dropout, running BN stats), the caller's mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _as_batch(images):
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected normalised images (N, 1, H, W), got shape {tuple(images.shape)}")
    return images


def _as_targets(targets, n):
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
    if len(targets) == 1 and n > 1:
        targets = targets.expand(n)
    if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} images")
    return targets


def _scale_each(maps):
    """Divide every map (N, H, W) by its own maximum: 0-1, 0 stays 0; an all-zero map stays zero."""
    peak = maps.flatten(1).amax(1).clamp_min(torch.finfo(maps.dtype).tiny)
    return (maps / peak[:, None, None]).clamp(0, 1)


# ---------------------------------------------------------------- attributions (captum)

def saliency(model, images, targets):
    """Vanilla gradient saliency (Simonyan et al. 2014) via captum's `Saliency`.

    images: normalised tensor (N, 1, 48, 48); targets: the class index explained for each image
    (an int for all, or N of them; usually the predicted class).
    Returns float32 numpy (N, 48, 48): |d logit[target] / d pixel|, max over input channels,
    each map divided by its own maximum (0-1, unitless: 1 = the most influential pixel).
    """
    images = _as_batch(images)
    targets = _as_targets(targets, len(images))
    with _eval_mode(model):
        grads = Saliency(model).attribute(images.clone().requires_grad_(True), target=targets, abs=True)
    return _scale_each(grads.detach().amax(1)).numpy()


def grad_cam(model, layer, images, targets):
    """Grad-CAM (Selvaraju et al. 2017) on `layer` via captum's `LayerGradCam`.

    images: normalised tensor (N, 1, 48, 48); targets as in `saliency`.
    Returns float32 numpy (N, 48, 48): the layer's channels weighted by their mean gradient,
    summed, ReLU'd, upsampled bilinearly to the input size (`LayerAttribution.interpolate`),
    each map divided by its own maximum (0-1, unitless). A map with no positive evidence stays
    all zero.
    """
    images = _as_batch(images)
    targets = _as_targets(targets, len(images))
    with _eval_mode(model):
        cams = LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)
    cams = LayerAttribution.interpolate(cams.detach().float(), tuple(images.shape[-2:]),
                                        interpolate_mode="bilinear")
    return _scale_each(cams[:, 0].clamp_min(0)).numpy()


# ---------------------------------------------------------------- filters and activations (ours)

class _Stop(Exception):
    """Raised by a forward hook once the layer of interest has run: the rest of the net is not needed."""


def _capture(layer, stop):
    """A forward hook that stores `layer`'s output in the returned dict (and stops there if asked)."""
    seen = {}

    def hook(module, inputs, output):
        seen["output"] = output
        if stop:
            raise _Stop

    return seen, layer.register_forward_hook(hook)


def _run_to(model, layer, x):
    """`layer`'s output for input x, running the model no further than needed."""
    seen, handle = _capture(layer, stop=True)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "output" not in seen:
        raise ValueError(f"{type(layer).__name__} was not called by the model's forward pass")
    return seen["output"]


def _gaussian_blur(x, sigma=0.6):
    """3x3 Gaussian blur of (N, 1, H, W), reflecting at the borders."""
    taps = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * sigma ** 2))
    kernel = torch.outer(taps, taps)
    kernel = (kernel / kernel.sum()).to(x.dtype)[None, None]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel)


def _channel_score(activations):
    """What filter visualisation maximises: the mean leaky-ReLU'd activation of (K, h, w) maps -> (K,)."""
    return F.leaky_relu(activations.float(), 0.1).mean(dim=(1, 2))


def _filter_inputs(model, layer, channels, steps=64, lr=0.05, seed=0, mean=None, std=None,
                   decay=0.01, jitter=2, blur_every=4, size=48):
    """Gradient ascent on the input: normalised images (K, 1, size, size), one per channel.

    Maximises the mean activation of channel channels[k] of `layer` for image k, taken through
    a leaky ReLU (slope 0.1 below zero), since our conv layers are read before their BatchNorm
    and ReLU: the plain mean of a linear filter's output is maximised by a flat image, the
    positive part alone gives no gradient to a channel that starts silent. Regularised
    so the result is a pattern, not white noise: starts from small noise, each step moves by
    `lr` times the gradient over its mean magnitude, shrinks the image by `decay` (L2), shifts
    the input by up to `jitter` pixels at random, clips to the valid pixel range (0-255 once
    un-normalised, when mean and std are given), and blurs lightly every `blur_every` steps.
    Model parameters are read, never written, and get no .grad.
    """
    channels = [int(c) for c in channels]
    generator = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(len(channels), 1, size, size, generator=generator)
    low, high = (-np.inf, np.inf) if mean is None else ((0 - mean) / std, (1 - mean) / std)
    index = torch.arange(len(channels))
    with _eval_mode(model), torch.enable_grad():
        for step in range(steps):
            x.requires_grad_(True)
            dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
            out = _run_to(model, layer, torch.roll(x, shifts=(dy, dx), dims=(2, 3)))
            if step == 0 and max(channels) >= out.shape[1]:
                raise ValueError(f"channel {max(channels)} asked for, the layer has {out.shape[1]}")
            objective = _channel_score(out[index, channels]).sum()
            (grad,) = torch.autograd.grad(objective, x)  # only x's gradient: parameters get none
            with torch.no_grad():
                step_size = lr / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
                x = ((x + step_size * grad) * (1 - decay)).clamp(low, high)
                if (step + 1) % blur_every == 0:
                    x = _gaussian_blur(x)
    return x.detach()


def visualise_filters(model, layer, channels, steps=64, lr=0.05, seed=0, mean=None, std=None):
    """What excites each of `channels` of `layer`: an input found by regularised gradient ascent
    on its mean (leaky-ReLU'd) activation.

    See `_filter_inputs` for the regularisation; steps, lr (in normalised pixel units per
    step) and seed set the optimisation. Pass the unit's mean and std to keep pixels in range.
    Returns float32 numpy (len(channels), 48, 48): each image contrast-stretched to 0-1 (its own
    darkest pixel 0, brightest 1), ready to show in grayscale. The model's parameters and
    buffers are unchanged and get no gradients; its train/eval mode is restored.
    """
    x = _filter_inputs(model, layer, channels, steps=steps, lr=lr, seed=seed, mean=mean, std=std)[:, 0]
    low = x.flatten(1).amin(1)[:, None, None]
    span = (x.flatten(1).amax(1)[:, None, None] - low).clamp_min(1e-12)
    return ((x - low) / span).clamp(0, 1).numpy()


def layer_outputs(model, layer, image):
    """The activations of `layer` for one normalised image ((1, 48, 48) or (1, 1, 48, 48)).

    Returns float32 numpy (C, h, w): the layer's output channels, in the layer's own units
    (e.g. a conv's pre-BatchNorm response). A forward hook collects them and is removed after.
    """
    image = _as_batch(image)
    if len(image) != 1:
        raise ValueError(f"layer_outputs takes one image, got {len(image)}")
    with _eval_mode(model), torch.no_grad():
        out = _run_to(model, layer, image)
    return out[0].float().contiguous().numpy().copy()


# ---------------------------------------------------------------- choosing examples

def pick_examples(oof_probs, labels, per_class=1, seed=0):
    """Rows to explain: for every class in CLASS_NAMES order, up to `per_class` rows the model got
    right (label c, predicted c), then up to `per_class` it got wrong (label c, predicted other).

    oof_probs (N, 7) out-of-fold probabilities, labels (N,). Rows are drawn at random with
    `seed`, so the same inputs give the same list. Returns a list of int row indices.
    """
    probs, labels = np.asarray(oof_probs), np.asarray(labels)
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probability rows for {len(labels)} labels")
    predicted = probs.argmax(1)
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(probs.shape[1]):
        for correct in (True, False):
            pool = np.flatnonzero((labels == c) & ((predicted == c) == correct))
            rows.extend(int(r) for r in rng.permutation(pool)[:per_class])
    return rows


# ---------------------------------------------------------------- figures

def _class_name(label):
    return CLASS_NAMES[int(label)]


def _show_face(ax, face):
    ax.imshow(face, cmap=FACE_CMAP, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax, face, heat):
    """The face in grayscale and a 0-1 `heat` map on top: transparent at 0, nearly opaque at 1."""
    _show_face(ax, face)
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0, 1)
    h, w = face.shape
    ax.imshow(heat, cmap=OVERLAY_CMAP, vmin=0, vmax=1, alpha=0.85 * heat,
              extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return Path(path)


def plot_saliency_grid(path, faces_uint8, true_labels, pred_labels, saliency_maps, cam_maps,
                       explained_labels=None, cam_layer=None):
    """One row per face: the face, its saliency over it, its Grad-CAM over it. Saves a PNG.

    faces_uint8 (N, 48, 48); true_labels, pred_labels (N,) class indices; saliency_maps and
    cam_maps (N, 48, 48) in 0-1 (from `saliency` and `grad_cam`). explained_labels: the class
    each map explains (default: the predicted class). cam_layer: its name, for the title.
    Returns the path.
    """
    faces = np.asarray(faces_uint8)
    explained = pred_labels if explained_labels is None else explained_labels
    n = len(faces)
    # fixed layout, in inches: a title, then per row a row title, panel titles and 3 square panels
    panel, gap, side = 1.8, 0.35, 0.35
    top, row_h, bottom = 0.75, panel + 0.75, 1.2
    width, height = 2 * side + 3 * panel + 2 * gap, top + n * row_h + bottom
    fig = Figure(figsize=(width, height))
    title = "Where the model looks: gradient saliency and Grad-CAM"
    if cam_layer:
        title += f"\n(Grad-CAM on layer {cam_layer})"
    fig.text(0.5, 1 - 0.12 / height, title, ha="center", va="top", fontsize=12)
    for i in range(n):
        true, pred, target = _class_name(true_labels[i]), _class_name(pred_labels[i]), _class_name(explained[i])
        right = true == pred
        row_top = top + i * row_h
        fig.text(0.5, 1 - (row_top + 0.12) / height, f"true: {true}, predicted: {pred} "
                 f"({'right' if right else 'wrong'})", ha="center", va="top", fontsize=11,
                 color="darkgreen" if right else "firebrick", fontweight="bold")
        panel_bottom = 1 - (row_top + 0.62 + panel) / height
        axes = [fig.add_axes(((side + j * (panel + gap)) / width, panel_bottom, panel / width, panel / height))
                for j in range(3)]
        _show_face(axes[0], faces[i])
        axes[0].set_title("face", fontsize=9)
        _overlay(axes[1], faces[i], saliency_maps[i])
        axes[1].set_title(f"saliency for '{target}'", fontsize=9)
        _overlay(axes[2], faces[i], cam_maps[i])
        empty = not np.asarray(cam_maps[i]).any()  # no positive evidence: say so, not a blank panel
        axes[2].set_title(f"Grad-CAM for '{target}'" + (": all zero" if empty else ""), fontsize=9)
    cax = fig.add_axes((side / width, 0.75 / height, (width - 2 * side) / width, 0.18 / height))
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=OVERLAY_CMAP), cax=cax,
                       orientation="horizontal")
    bar.set_label("importance for the explained class (each map scaled to its own maximum = 1;\n"
                  "drawn more transparent where lower)", fontsize=9)
    return _save(fig, path)


def _grid(n, max_cols):
    cols = min(n, max_cols)
    return -(-n // cols), cols


def plot_filters(path, filter_images, layer_name, channels):
    """A grid of gradient-ascent images (from `visualise_filters`), one per channel. Saves a PNG.

    filter_images (K, 48, 48) in 0-1; layer_name for the title; channels (K,) their indices.
    Returns the path.
    """
    images = np.asarray(filter_images)
    n_rows, n_cols = _grid(len(images), 6)
    fig = Figure(figsize=(1.7 * n_cols + 1.2, 1.9 * n_rows + 1.0), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    fig.suptitle(f"Inputs that most excite channels of layer {layer_name}\n"
                 "(gradient ascent from noise; each image stretched to its own range)", fontsize=11)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, channel in zip(axes.flat, images, channels):
        ax.imshow(image, cmap=FACE_CMAP, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"channel {int(channel)}", fontsize=9)
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=FACE_CMAP), ax=axes, shrink=0.8)
    bar.set_label("input pixel (darkest 0 - brightest 1)", fontsize=9)
    return _save(fig, path)


def plot_layer_outputs(path, face_uint8, activations, layer_name, max_channels=16):
    """One face and the activations of a layer for it, its most active channels first. Saves a PNG.

    face_uint8 (48, 48); activations (C, h, w) from `layer_outputs`. Shows the `max_channels`
    channels with the highest mean activation, on one shared colour scale, each stretched over
    the same area as the face (one square per activation). Returns the path.
    """
    face = np.asarray(face_uint8)
    acts = np.asarray(activations, dtype=np.float32)
    order = np.argsort(-acts.mean(axis=(1, 2)), kind="stable")[:max_channels]
    n_rows, n_cols = _grid(len(order) + 1, 6)
    fig = Figure(figsize=(1.7 * n_cols + 1.2, 1.9 * n_rows + 1.0), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    c, h, w = acts.shape
    fig.suptitle(f"Outputs of layer {layer_name} for one face: {c} channels of {h}x{w}\n"
                 f"the {len(order)} with the highest mean activation, highest first", fontsize=11)
    for ax in axes.flat:
        ax.set_axis_off()
    _show_face(axes.flat[0], face)
    axes.flat[0].set_axis_on()
    axes.flat[0].set_title("input face", fontsize=9)
    shown = acts[order]
    low, high = float(shown.min()), float(shown.max())
    norm = Normalize(low, high if high > low else low + 1)
    fh, fw = face.shape
    for ax, channel in zip(axes.flat[1:], order):
        ax.imshow(acts[channel], cmap=ACTIVATION_CMAP, norm=norm, interpolation="nearest",
                  extent=(-0.5, fw - 0.5, fh - 0.5, -0.5))
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"channel {int(channel)}", fontsize=9)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=ACTIVATION_CMAP), ax=axes, shrink=0.8)
    bar.set_label(f"activation of {layer_name}", fontsize=9)
    return _save(fig, path)
