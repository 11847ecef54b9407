"""A finished run as one torch module: 0-255 pixels in, the ensemble's probabilities out.

    module = load_ensemble("folds/demo")                         # the run's kept blend
    module = load_ensemble("folds/demo", unit="round0/fer_vgg_tiny/fold1")
    probs = module(pixels)     # (N, 1, 48, 48) uint8 or float 0-255 -> (N, 7) float32

Everything the run did to a test image happens inside the module (resize, normalisation
by each unit's own mean and std, its centre crop and TTA views, the views averaged as
probabilities or as logits as the ensemble chose per model, the mean over folds and the
blend's weights), with the weights the unit predicted with (its EMA where it kept one), so
a caller (predict.py, the ONNX export) has no preprocessing to get wrong, and the module's
output equals what the run saved in its test.npz files.

Reads `<workdir>/folds.json`, `ensemble.json` and each unit's config.json and checkpoint.pt.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_kaggle.data.competition import IMAGE_SIZE
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.core.atomic import read_json
from fer_kaggle.core.runfolder import CONFIG_FILE, RERUN, RunFolder, fold_name, load_checkpoint, predicting_weights
from fer_kaggle.models.backbones import build_model
from fer_kaggle.models.tta import SPACES, TTA_CHOICES, view, views


class UnitModule(nn.Module):
    """One trained unit with its eval pipeline and TTA: pixels 0-255 -> its TTA-averaged probabilities.

    `space` "prob": the mean of the views' softmaxes (test.npz "probs"); "logit": the softmax of the
    views' mean logits ("probs_logit"). `crop`: the unit was trained on crop x crop windows.
    """

    def __init__(self, model, mean, std, image_size, tta, crop=0, space="prob"):
        super().__init__()
        self.model = model.eval()
        self.image_size = int(image_size)
        self.views = views(tta, crop)
        self.tta, self.crop, self.space = tta, int(crop), space
        # float32 buffers: they travel with .to(device) and become constants in an ONNX graph
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float32), persistent=False)

    def preprocess(self, pixels):
        """The unit's eval pipeline (augment.eval_pipeline) on a float32 batch of 0-255 pixels."""
        x = pixels.to(torch.float32)
        if self.image_size != IMAGE_SIZE:
            # A.Resize is cv2.INTER_LINEAR (half-pixel centres, no antialiasing) on uint8 images,
            # rounded to integers: the same here, before normalising. cv2's uint8 path is a fast
            # fixed-point approximation, so about 1 pixel in 10 still differs by one level (0-255)
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=False).add(0.5).floor()
        return (x / 255.0 - self.mean) / self.std

    def forward(self, pixels):
        x = self.preprocess(pixels)
        # all views in one batch: one model call per unit, so the ONNX graph holds each model once (the
        # test run's ensemble: 188 nodes instead of 1062, exported in 5 s instead of 21); memory grows
        # with views x batch, so a caller with a large backbone and ten-crop TTA passes smaller batches
        batch = torch.cat([view(x, flip, offset, self.crop, self.tta == "ten_crop") for flip, offset in self.views])
        logits = self.model(batch).unflatten(0, (len(self.views), -1))  # (views, N, 7)
        if self.space == "logit":
            return logits.mean(0).softmax(-1)
        return logits.softmax(-1).mean(0)


class EnsembleModule(nn.Module):
    """Units and one weight each (the blend's model weight / the model's fold count): sum of weight x probs."""

    def __init__(self, units, names, weights):
        super().__init__()
        self.units = nn.ModuleList(units)
        self.names = list(names)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def forward(self, pixels):
        probs = self.units[0](pixels) * self.weights[0]
        for i in range(1, len(self.units)):
            probs = probs + self.units[i](pixels) * self.weights[i]
        return probs


def _run_dir(workdir):
    """The run folder, or an error saying that there is none (and where the demo run is, if there)."""
    RunFolder(workdir).require_run()
    return Path(workdir)


def finished_units(workdir):
    """Names of every finished unit in the run (ensemble rounds and ablations), sorted."""
    return RunFolder(workdir).finished_units()


def load_unit(workdir, name, tta=None, device="cpu", space="prob"):
    """One unit (e.g. "round0/fer_vgg_tiny/fold1") as a UnitModule; tta overrides its config's."""
    unit_dir = Path(workdir) / name
    if name not in finished_units(workdir):
        if (unit_dir / CONFIG_FILE).is_file():
            raise FerKaggleError(f"{unit_dir}: the unit is not finished; "
                                 f"run run.sh again to finish it")
        raise FerKaggleError(f"{workdir}: no unit '{name}'; the finished units are: "
                             f"{', '.join(finished_units(workdir)) or 'none'}")
    config = read_json(unit_dir / CONFIG_FILE, ("backbone", "mean", "std", "image_size", "tta"), RERUN)
    tta, crop = tta or config["tta"], config.get("crop", 0)  # runs from before --crop have no "crop"
    if tta not in TTA_CHOICES or (tta == "ten_crop" and not crop):
        raise FerKaggleError(f"TTA '{tta}' for {name}: choose one of {', '.join(TTA_CHOICES)} "
                             f"(ten_crop only for a unit trained with --crop)")
    model = build_model(config["backbone"], torch.device(device))
    model.load_state_dict(predicting_weights(load_checkpoint(unit_dir, device)))
    return UnitModule(model, config["mean"], config["std"], config["image_size"], tta, crop, space).to(device)


def _summary(workdir):
    path = RunFolder(workdir).ensemble_json
    if not path.is_file():
        raise FerKaggleError(f"{workdir}: no ensemble.json; run run.sh (or python -m fer_kaggle.ensemble "
                             f"--workdir {workdir}) first")
    return read_json(path, ("models",), "run python -m fer_kaggle.ensemble to write it again")


def kept_blend(workdir):
    """{model name: (weight, TTA space)} of the blend the run kept, in ensemble.json's model order."""
    summary = _summary(workdir)
    weights = summary["blends"][summary["kept"]]["weights"]
    return {name: (weight, scores.get("tta_space", "prob"))  # ensembles before logit averaging: "prob"
            for (name, scores), weight in zip(summary["models"].items(), weights)}


def kept_oof_accuracy(workdir):
    """The OOF accuracy of the blend the run kept."""
    summary = _summary(workdir)
    return summary["blends"][summary["kept"]]["oof_acc"]


def blend_units(workdir, folds):
    """(unit names, weights, TTA spaces) of the kept blend's models of weight > 0 at `folds`, each model's
    weight shared equally among its folds."""
    names, weights, spaces = [], [], []
    for model, (weight, space) in kept_blend(workdir).items():
        if weight > 0:
            names += [f"{model}/{fold_name(k)}" for k in folds]
            weights += [weight / len(folds)] * len(folds)
            spaces += [space] * len(folds)
    return names, weights, spaces


def _unit_space(workdir, unit):
    """The TTA space the ensemble chose for a unit's model; "prob" (its test.npz "probs") otherwise."""
    if not RunFolder(workdir).ensemble_json.is_file():
        return "prob"
    return kept_blend(workdir).get(unit.rsplit("/", 1)[0], (0, "prob"))[1]


MODELS = ("ensemble", "student")


def student_units(workdir):
    """The unit names of the run's distilled student (distill.py), one per fold."""
    path = RunFolder(workdir).student_json
    if not path.is_file():
        raise FerKaggleError(f"{workdir}: no student here; make one first: python -m fer_kaggle.distill "
                             f"--workdir {workdir}")
    summary = read_json(path, ("model", "folds"), "run python -m fer_kaggle.distill again to write it")
    return [f"{summary['model']}/{fold_name(k)}" for k in range(summary["folds"])]


def load_ensemble(workdir, unit=None, tta=None, device="cpu", model="ensemble"):
    """The run's kept ensemble (or one unit, or with model="student" its distilled student's folds) as one
    eval-mode module: (N,1,48,48) 0-255 -> (N,7) probs.

    Models of weight 0 are left out: they change nothing and would only cost time. One unit averages
    its views in the space the ensemble chose for its model ("prob" if the ensemble does not list it).
    """
    workdir = _run_dir(workdir)
    if model not in MODELS:
        raise FerKaggleError(f"--model {model}: choose one of {', '.join(MODELS)}")
    if unit is not None:
        names, weights, spaces = [unit], [1.0], [_unit_space(workdir, unit)]
    elif model == "student":
        names = student_units(workdir)
        weights, spaces = [1.0 / len(names)] * len(names), ["prob"] * len(names)
    else:
        names, weights, spaces = blend_units(workdir, range(RunFolder(workdir).require_run()["folds"]))
    if any(space not in SPACES for space in spaces):
        raise FerKaggleError(f"{workdir}/ensemble.json: unknown TTA space in {sorted(set(spaces))}; "
                             f"expected {', '.join(SPACES)}")
    units = [load_unit(workdir, name, tta, device, space) for name, space in zip(names, spaces)]
    return EnsembleModule(units, names, weights).to(device).eval()


def predict_crops(module, crops, batch_size):
    """(N, 7) probabilities of (N, 48, 48) uint8 faces, batch by batch."""
    probs = [np.empty((0, 7), np.float32)]
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            probs.append(module(torch.from_numpy(crops[start:start + batch_size][:, None])).numpy())
    return np.concatenate(probs)
