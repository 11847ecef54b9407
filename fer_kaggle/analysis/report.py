"""The analysis report of a finished run, as a folder readable without the code.

    python -m fer_kaggle.report --out DIR [--workdir folds] [--layer NAME]
    bash run.sh ... --report DIR

Reads  everything a run wrote under --workdir (folds, units, pseudo-labels, the parse cache).
Writes DIR/index.html and DIR/report.md (the same content) and DIR/*.png.

Sections: models, training curves, confusion matrix, saliency and Grad-CAM, filters,
DNN against CNN, ablations, pseudo-labelling, ensemble, the held-out test accuracy
where the input carried test labels (marked: never used for a choice), and the train/test shift
check with its histograms, and the time budget (the plan against what happened, and what each budget
buys on this machine). A part the run lacks
(no --ablation, no pseudo-labelling round) is named in its section, with the option to add.
"""
import html
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torchinfo
from matplotlib.figure import Figure as MplFigure  # no pyplot: no GUI backend, nothing global
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, precision_recall_fscore_support
from tqdm.auto import tqdm

from fer_kaggle.blend import ensemble, heldout, pseudo
from fer_kaggle.analysis import explain
from fer_kaggle.data import shift
from fer_kaggle.core.atomic import atomic_path, read_csv, write_text
from fer_kaggle.data.competition import CLASS_NAMES, NUM_CLASSES
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.models.backbones import DNN_COUNTERPARTS
from fer_kaggle.core.runfolder import (HISTORY_FILE, OOF_FILE, RERUN, RunFolder, backbone_of, is_finished,
                                       load_probs, read_metrics, round_name)


# ---------------------------------------------------------------- report structure

@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph), DataFrame, or Figure

    def text(self, paragraph):
        self.blocks.append(paragraph)

    def table(self, frame):
        self.blocks.append(frame)

    def figure(self, path, caption):
        self.blocks.append(Figure(Path(path).name, caption))


@dataclass
class Figure:
    filename: str
    caption: str


@dataclass
class Run:
    """What a run folder holds, read once: the latest run's models (run.json), as the ensemble blends them."""
    workdir: Path
    labels: np.ndarray
    folds: np.ndarray
    train_images: np.ndarray
    models: list            # ensemble.Model of the run's finished models
    result: dict            # ensemble.ensemble(models, labels)
    ablations: dict         # {variant: model folder} of the run's ablations
    pseudo_table: Path      # the table its round 1 learned from, or None

    @classmethod
    def load(cls, workdir):
        folder = RunFolder(workdir)
        record = folder.record() or {}
        models, labels = ensemble.load_models(folder.path, folder.current_models())
        images = folder.train_images()
        folds = read_csv(folder.folds_csv, ("fold",), RERUN)["fold"].to_numpy()
        ablations = record.get("ablations") or folder.ablation_models()  # run.json, or an older run's folders
        table = record.get("pseudo_table")
        table = folder.path / "round1" / table if table else None
        return cls(folder.path, labels, folds, images, models, ensemble.ensemble(models, labels), ablations, table)

    def unit_dirs(self, model_dir):
        return RunFolder(self.workdir).unit_dirs(model_dir)

    def model_dirs(self, round_=0):
        """The run's model folders of a round, e.g. round0/fer_vgg_cpu-1a2b3c4d."""
        return [m.name for m in self.models if m.name.startswith(round_name(round_) + "/")]

    def backbones(self, round_=0):
        return [backbone_of(name) for name in self.model_dirs(round_)]

    def round0_model(self, backbone):
        return next((name for name in self.model_dirs(0) if backbone_of(name) == backbone), None)

    def kept_oof(self):
        weights = self.result["blends"][self.result["kept"]]["weights"]
        return ensemble.blend(np.stack([m.oof for m in self.models]), weights)


def _pct(x):
    return f"{100 * x:.1f}%"


def _subplots(rows=1, cols=1, figsize=(8, 4), **kwargs):
    fig = MplFigure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **kwargs)


def _save(fig, path):
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


# ---------------------------------------------------------------- 1. models

def layer_table(model, max_depth=2):
    """Type, output shape and parameters of each layer down to `max_depth`, for a 1x1x48x48 input."""
    stats = torchinfo.summary(model, input_size=(1, 1, 48, 48), verbose=0, device="cpu")
    rows = [{"layer": "  " * (layer.depth - 1) + f"{layer.var_name} ({layer.class_name})",
             "output shape": " x ".join(map(str, layer.output_size[1:])),
             "parameters": f"{layer.num_params:,}"}
            for layer in stats.summary_list if 1 <= layer.depth <= max_depth]
    return pd.DataFrame(rows), stats.total_params


def models_section(run):
    section = Section("1. Models")
    names = run.backbones() + [name for name in [_ablation_backbone(run, "dnn")] if name]
    for name in names:
        model = timm.create_model(name, in_chans=1, num_classes=NUM_CLASSES)
        table, total = layer_table(model)
        section.text(f"**{name}**: {total:,} parameters, input 1 x 48 x 48.")
        section.table(table)
    return section


# ---------------------------------------------------------------- 2. curves

def curves_section(run, out):
    section = Section("2. Training curves")
    model_dirs = run.model_dirs(0) + run.model_dirs(1)
    fig, axes = _subplots(len(model_dirs), 2, figsize=(11, 3.2 * len(model_dirs)), squeeze=False)
    for row, model_dir in enumerate(model_dirs):
        for unit_dir in run.unit_dirs(model_dir):
            history = read_csv(unit_dir / HISTORY_FILE, ("epoch",), RERUN)
            for col, metric in enumerate(("loss", "acc")):
                ax = axes[row, col]
                line, = ax.plot(history["epoch"], history[f"train_{metric}"], label=f"{unit_dir.name} train")
                ax.plot(history["epoch"], history[f"valid_{metric}"], "--", color=line.get_color(),
                        label=f"{unit_dir.name} validation")
        for col, metric in enumerate(("loss", "accuracy")):
            axes[row, col].set(title=f"{model_dir}: {metric}", xlabel="epoch", ylabel=metric)
            axes[row, col].grid(alpha=0.3)
        axes[row, 1].legend(fontsize=7, ncol=2)
    section.figure(_save(fig, out / "curves.png"), "Loss and accuracy per epoch; solid: training (augmented "
                   "batches), dashed: the held-out fold. One row per model, folds overlaid.")
    return section


# ---------------------------------------------------------------- 3. confusion

def most_confused(matrix, count=3):
    """Sentences naming the largest off-diagonal entries of a row-normalised confusion matrix."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:count]
    return [f"{CLASS_NAMES[t]} is taken for {CLASS_NAMES[p]} in {_pct(off[t, p])} of cases"
            for t, p in zip(*np.unravel_index(order, off.shape))]


def confusion_section(run, out):
    section = Section("3. Confusion matrix")
    predicted = run.kept_oof().argmax(1)
    matrix = confusion_matrix(run.labels, predicted, labels=range(NUM_CLASSES), normalize="true")
    fig, ax = _subplots(figsize=(7, 6))
    ConfusionMatrixDisplay(matrix, display_labels=CLASS_NAMES).plot(ax=ax, cmap="Blues", values_format=".2f",
                                                                   colorbar=False)
    ax.set(title=f"Ensemble OOF predictions, normalised per true class (accuracy "
                 f"{_pct((predicted == run.labels).mean())})", xlabel="predicted class", ylabel="true class")
    for tick in ax.get_xticklabels():
        tick.set(rotation=35, ha="right")
    section.figure(_save(fig, out / "confusion.png"), "Each row: where the faces of one true class went.")
    precision, recall, f1, support = precision_recall_fscore_support(
        run.labels, predicted, labels=range(NUM_CLASSES), zero_division=0)
    section.table(pd.DataFrame({"class": CLASS_NAMES, "precision": precision.round(3), "recall": recall.round(3),
                                "F1": f1.round(3), "images": support}))
    section.text("Most confused: " + "; ".join(most_confused(matrix)) + ".")
    return section


# ---------------------------------------------------------------- 4-5. what the CNN looks at

def _first_unit(run):
    model = next((m for m in run.model_dirs(0) if backbone_of(m) not in DNN_COUNTERPARTS), None)
    if model is None:
        raise FerKaggleError(f"{run.workdir}: saliency maps and filters need a CNN, and this run has none")
    return run.workdir / model / "fold0"


def _ablation_backbone(run, variant):
    """The backbone an ablation variant was trained with, or None if the run has none."""
    model = run.ablations.get(variant)
    return backbone_of(model) if model else None


def saliency_section(run, out, per_class):
    section = Section("4. Saliency maps")
    unit_dir = _first_unit(run)
    model, mean, std = explain.load_unit_model(unit_dir)
    oof = load_probs(unit_dir / OOF_FILE, RERUN)
    rows, probs = oof["rows"], oof["probs"]
    picked = explain.pick_examples(probs, run.labels[rows], per_class=per_class)
    faces = run.train_images[rows[picked]]
    images = explain.normalise(faces, mean, std)
    predicted = probs[picked].argmax(1)
    saliency = explain.saliency(model, images, torch.as_tensor(predicted))
    cams = explain.grad_cam(model, explain.last_conv_layer(model), images, torch.as_tensor(predicted))
    path = explain.plot_saliency_grid(out / "saliency.png", faces, run.labels[rows[picked]], predicted,
                                      saliency, cams)
    section.text(f"Model: {unit_dir.relative_to(run.workdir)}, on faces of its held-out fold, "
                 f"{per_class} correct and {per_class} wrong per class where there are some. Vanilla gradient "
                 "saliency shows which pixels change the predicted class's score most; Grad-CAM shows which "
                 "regions of the last convolution's map support it.")
    section.figure(path, "Face, gradient saliency, and Grad-CAM for the predicted class.")
    return section, (model, mean, std, faces)


def filters_section(out, explained, layer_name):
    model, mean, std, faces = explained
    section = Section("5. Filters")
    layers = dict(explain.conv_layers(model))
    if layer_name is None:
        layer_name = list(layers)[len(layers) // 2]
    if layer_name not in layers:
        raise FerKaggleError(f"--layer {layer_name}: no such convolution; choose one of {', '.join(layers)}")
    layer = layers[layer_name]
    channels = list(range(min(16, layer.out_channels)))
    images = explain.visualise_filters(model, layer, channels)
    section.figure(explain.plot_filters(out / "filters.png", images, layer_name, channels),
                   f"Inputs that maximally activate filters {channels[0]}-{channels[-1]} of {layer_name}, "
                   "found by regularised gradient ascent from noise.")
    face = faces[0]
    activations = explain.layer_outputs(model, layer, explain.normalise(face[None], mean, std)[0])
    section.figure(explain.plot_layer_outputs(out / "layer_outputs.png", face, activations, layer_name),
                   f"Outputs of {layer_name}'s filters for one face.")
    return section


# ---------------------------------------------------------------- 6-7. DNN against CNN, ablations

def _model_scores(run, model_dir):
    """OOF accuracy (TTA and plain) of a model folder whose folds are all finished, else None."""
    units = run.unit_dirs(model_dir)
    if not units or not all(is_finished(u) for u in units):
        return None
    oof, plain, *_ = ensemble.load_model_dir(run.workdir / model_dir, len(run.labels), len(units), run.labels)
    seconds = sum(read_metrics(unit, RERUN)["train_seconds"] for unit in units)
    return {"OOF accuracy": round(ensemble.accuracy(oof, run.labels), 4),
            "without TTA": round(ensemble.accuracy(plain, run.labels), 4), "train seconds": round(seconds)}


def _parameters(name):
    return sum(p.numel() for p in timm.create_model(name, in_chans=1, num_classes=NUM_CLASSES).parameters())


def _mean_valid_curve(run, model_dir):
    histories = [read_csv(u / HISTORY_FILE, ("epoch",), RERUN) for u in run.unit_dirs(model_dir)]
    return pd.concat(histories).groupby("epoch")[["train_acc", "valid_acc"]].mean()


def dnn_section(run, out):
    section = Section("6. A plain DNN against the CNN")
    dnn = _ablation_backbone(run, "dnn")
    if dnn is None or _model_scores(run, run.ablations["dnn"]) is None:
        section.text("Not in this run: add `--ablation` to run.sh to train a fully-connected network of the "
                     "size of a CNN (fer_vgg13 or fer_vgg_tiny) on the same folds.")
        return section
    cnn = DNN_COUNTERPARTS[dnn]
    rows = []
    pair = ((cnn, run.round0_model(cnn)), (dnn, run.ablations["dnn"]))
    for name, model_dir in pair:
        rows.append({"model": name, "kind": "DNN" if name in DNN_COUNTERPARTS else "CNN",
                     "parameters": f"{_parameters(name):,}", **_model_scores(run, model_dir)})
    section.table(pd.DataFrame(rows))
    fig, axes = _subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, (name, model_dir) in zip(axes, pair):
        curve = _mean_valid_curve(run, model_dir)
        ax.plot(curve.index, curve["train_acc"], label="training")
        ax.plot(curve.index, curve["valid_acc"], "--", label="held-out fold")
        ax.set(title=f"{name}: accuracy, mean over folds", xlabel="epoch", ylabel="accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    section.figure(_save(fig, out / "dnn_vs_cnn.png"), "The same folds, epochs and optimiser; the DNN sees the "
                   "2,304 pixels as an unordered vector.")
    return section


def ablation_section(run):
    section = Section("7. Ablations")
    backbone = _ablation_backbone(run, "no_normalize") or run.backbones()[0]
    rows = [{"variant": "baseline (as configured)", **(_model_scores(run, run.round0_model(backbone)) or {})}]
    for variant, label in (("no_normalize", "without normalisation (pixels / 255)"),
                           ("no_augment", "without augmentation")):
        scores = _model_scores(run, run.ablations[variant]) if variant in run.ablations else None
        if scores is None:
            section.text("Not in this run: add `--ablation` to run.sh to train the first backbone without "
                         "normalisation and without augmentation on the same folds.")
            return section
        rows.append({"variant": label, **scores})
    section.text(f"{backbone}, the same folds and seeds; one thing changed per row.")
    section.table(pd.DataFrame(rows))
    return section


# ---------------------------------------------------------------- 8-9. pseudo-labels, ensemble

def pseudo_section(run, out):
    section = Section("8. Pseudo-labelling")
    table_path = run.pseudo_table
    students = [m for m in run.models if m.name.startswith(round_name(1) + "/")]
    if table_path is None or not table_path.exists() or not students:
        section.text("Not in this run: run.sh's pseudo-labelling round (on by default; `--pseudo`) adds "
                     "confident test predictions to a second round of training.")
        return section
    counts = pseudo.counts_per_class(read_csv(table_path, remedy=RERUN), n_folds=int(run.folds.max()) + 1)
    section.table(counts.reset_index(names="class"))
    teachers = [m for m in run.models if m.name.startswith(round_name(0) + "/")]
    before, after = ensemble.best_oof_accuracy(teachers, run.labels), ensemble.best_oof_accuracy(students, run.labels)
    section.text(f"Test images added per class and fold (fold k's images come from fold k's first-round models "
                 f"only). Ensemble OOF accuracy: {before:.4f} before, {after:.4f} after "
                 f"({after - before:+.4f}).")
    fig, ax = _subplots(figsize=(7, 3.5))
    ax.bar(CLASS_NAMES, counts.sum(axis=1))
    ax.set(title="Pseudo-labelled test images per class, all folds", xlabel="class", ylabel="images")
    section.figure(_save(fig, out / "pseudo_labels.png"), "Images added, summed over folds.")
    return section


def ensemble_section(run, out):
    section = Section("9. Ensemble")
    result = run.result
    rows = [{"model": name, "OOF accuracy": round(s["oof_acc"], 4), "without TTA": round(s["oof_acc_plain"], 4),
             "TTA gain": round(s["oof_acc"] - s["oof_acc_plain"], 4),
             **{f"weight ({method})": round(result["blends"][method]["weights"][i], 3)
                for method in result["blends"]}}
            for i, (name, s) in enumerate(result["models"].items())]
    section.table(pd.DataFrame(rows))
    units = [read_metrics(unit, RERUN) for m in run.models for unit in run.unit_dirs(m.name)]
    section.text("Each unit's accuracy on its held-out fold (with TTA):")
    section.table(pd.DataFrame({"unit": [u["unit"] for u in units],
                                "fold OOF accuracy": [round(u["valid_acc"], 4) for u in units],
                                "training images": [u["train_rows"] for u in units]}))
    section.text(" ".join(f"Ensemble {method}: OOF accuracy {blend['oof_acc']:.4f}."
                          for method, blend in result["blends"].items())
                 + f" Kept for the submission: {result['kept']}.")
    names = list(result["models"]) + [f"ensemble ({m})" for m in result["blends"]]
    scores = [s["oof_acc"] for s in result["models"].values()] + [b["oof_acc"] for b in result["blends"].values()]
    fig, ax = _subplots(figsize=(8, 0.5 * len(names) + 1.5))
    ax.barh(names, scores, color=["tab:blue"] * len(result["models"]) + ["tab:orange"] * len(result["blends"]))
    ax.set(title="OOF accuracy per model and ensemble", xlabel="OOF accuracy", xlim=(0, 1))
    ax.invert_yaxis()
    section.figure(_save(fig, out / "ensemble.png"), "Blue: single models; orange: blends.")
    return section


def heldout_section(run):
    section = Section("10. Held-out test accuracy")
    scores = heldout.load_scores(run.workdir)
    if scores is None:
        section.text("None: this run's test data carried no labels, as a competition's test file should. "
                     "fer2013.csv, icml_face_data.csv (PublicTest and PrivateTest rows) and a test folder of "
                     "class folders carry them.")
        return section
    section.text(f"**Not used for any choice.** These labels came with the input file. They were read once, "
                 f"after every choice was made on OOF accuracy and the submission ({scores['submission']}) "
                 f"was written; nothing in the run (epochs, weights, blend, pseudo-labels) read them.")
    section.table(pd.DataFrame([{"split": s["split"], "images": s["images"], "accuracy": round(s["accuracy"], 4)}
                                for s in scores["splits"]]))
    return section


def shift_section(run, out):
    section = Section("11. Train against test: the shift check")
    figures = RunFolder(run.workdir).shift_figures()
    if not figures or "inputs" not in figures:
        section.text("Not in this run: it was made before the shift check; run run.sh again to add it.")
        return section
    inputs = figures["inputs"]
    section.text(f"Checked before training, in {inputs['seconds']:.1f} s. Effect: the median difference in "
                 f"train standard deviations of the statistic ({shift.WARN_EFFECT} or more warns). Adversarial "
                 f"validation: a gradient-boosted classifier's cross-validated ROC AUC at telling a train image "
                 f"from a test image: {inputs['adversarial_auc']:.3f} (0.5: no shift; {shift.WARN_AUC} or more "
                 f"warns). {100 * inputs['duplicate_share']:.1f}% of the test images are exact copies of train "
                 f"images (FER2013's own files share about {100 * shift.DUPLICATES_EXPECTED:.0f}%; their labels "
                 f"are never copied into predictions).")
    section.table(pd.DataFrame([{"statistic": shift.STATS[name], "train median": s["train_median"],
                                 "test median": s["test_median"], "effect": s["effect"]}
                                for name, s in inputs["stats"].items()]))
    fig, axes = _subplots(1, len(shift.STATS), figsize=(12, 3.4))
    for ax, (name, hist) in zip(axes, inputs["histograms"].items()):
        edges = np.asarray(hist["edges"])
        for side in ("train", "test"):
            counts = np.asarray(hist[side], dtype=float)
            ax.stairs(counts / max(1.0, counts.sum()), edges, label=side)
        ax.set(title=shift.STATS[name], ylabel="share of images")
        ax.legend()
    section.figure(_save(fig, out / "shift.png"), "Per-image statistics, train against test (shares per bin).")
    if figures.get("folds"):
        rows = [{"fold": fold, "distance, test vs held-out": round(f["tvd"], 3),
                 "confident test images": f["confident_test_rows"],
                 "distance among confident": round(f["confident_tvd"], 3),
                 **{f"test {name}": f"{100 * share:.0f}%" for name, share in zip(CLASS_NAMES, f["test"])}}
                for fold, f in figures["folds"].items()]
        section.text(f"After the first round, per fold: the class shares its models predict on the test images "
                     f"against those on their held-out train rows (total variation distance; {shift.WARN_TVD} "
                     f"warns; {shift.GUARD_TVD} among the confident predictions gives the fold no pseudo-labels).")
        section.table(pd.DataFrame(rows))
    return section


# ---------------------------------------------------------------- rendering

def budget_section(run, out):
    """The run's plan against what happened, and what each budget buys on this machine (a plot)."""
    from fer_kaggle.run import budget
    from fer_kaggle.core.config import PRESETS, Config
    section = Section("12. Time budget")
    folder = RunFolder(run.workdir)
    saved = budget._read_plan(folder.plan_json)
    config = (folder.record() or {}).get("config")
    if saved is None or config is None:
        section.text("This run had no time budget (`--budget 0`, or made before budgets existed): the preset's "
                     "work ran as it is. `--budget MINUTES` plans the work to the time.")
        return section
    plan = budget.Plan.from_json(saved["plan"])
    rows = []
    for model in folder.current_models():
        epochs = [read_metrics(d, RERUN)["epochs"] for d in folder.unit_dirs(model)
                  if is_finished(d)]
        refits = sum(len(entry["refits"]) for name, entry in saved["units"].items() if name.startswith(model + "/"))
        rows.append({"model": model, "planned epochs": plan.epochs[backbone_of(model)],
                     "trained epochs per fold": ", ".join(map(str, epochs)), "ends moved": refits})
    section.table(pd.DataFrame(rows))
    achieved = run.result["blends"][run.result["kept"]]["oof_acc"]
    predicted = f"{plan.oof:.3f}" if plan.oof is not None else "not predicted (no table for these backbones)"
    section.text(f"Budget {plan.budget:g} minutes: predicted {sum(plan.seconds.values()) / 60:.1f} minutes and "
                 f"ensemble OOF {predicted}; spent {saved['spent_seconds'] / 60:.1f} minutes (reading to submission"
                 f"{'' if saved['finished'] else ', not finished'}), ensemble OOF {_pct(achieved)}.")
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    if "backbones" not in plan.explicit and cfg.preset in PRESETS:
        # the run's config holds the backbones its plan chose; each budget's plan chooses from the preset's
        cfg = cfg.replace(backbones=PRESETS[cfg.preset].backbones)
    table = budget.Table.for_preset(cfg.preset)
    if not all(table.knows(b) for b in cfg.backbones):
        return section
    speeds, how = budget.measure_speeds(cfg, table.arms(cfg.backbones), run.train_images, run.labels,
                                        torch.device("cpu"))
    test = folder.test_images()
    work = budget.work_for(cfg, len(run.labels), len(test[0]) if test else 0, speeds)
    points = [(m, p) for m, p in budget.curve(cfg, work, table) if not isinstance(p, str)]
    fig, ax = _subplots(figsize=(7, 3.5))
    ax.plot([m for m, _ in points], [p.oof for _, p in points], "o-")
    for minutes, p in points:
        ax.annotate(" + ".join(f"{p.arm(b).removeprefix('fer_')} x{e}" for b, e in p.epochs.items())
                    + (" +PL" if p.pseudo else ""), (minutes, p.oof), fontsize=7, xytext=(4, -10),
                    textcoords="offset points")
    ax.set_xscale("log")
    ticks = [m for m, _ in points]
    ax.set_xticks(ticks, [str(m) for m in ticks])
    ax.set_xlabel("budget (minutes)")
    ax.set_ylabel("predicted ensemble OOF")
    _save(fig, out / "budget.png")
    section.text(f"What each budget would buy with preset {cfg.preset} on this machine, {budget.machine_name()} "
                 f"(speeds: {how}), predicted from the measured table budget_table.json:")
    section.figure(out / "budget.png", f"Predicted ensemble OOF against the budget, preset {cfg.preset}, this machine")
    return section


def _markdown_table(frame):
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def render_markdown(title, sections):
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, Figure):
                parts.append(f"![{block.caption}]({block.filename})\n\n*{block.caption}*")
            elif isinstance(block, pd.DataFrame):
                parts.append(_markdown_table(block))
            else:
                parts.append(block)
    return "\n\n".join(parts) + "\n"


_CHECK_IMAGES = """<script>
// A self-check for readers and tests: lists images that failed to load in data-broken-images.
window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);
  document.body.dataset.imagesLoaded = document.images.length - broken.length;
  document.body.dataset.brokenImages = broken.join(" ");
});
</script>"""


def _inline_markdown(text):
    escaped = html.escape(text)
    parts = escaped.split("**")
    escaped = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(title, sections):
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Figure):
                body.append(f'<figure><img src="{html.escape(block.filename)}" alt="{html.escape(block.caption)}">'
                            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
            elif isinstance(block, pd.DataFrame):
                body.append(block.to_html(index=False, border=0, classes="table"))
            else:
                body.append(f"<p>{_inline_markdown(block)}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border-bottom:1px solid #ddd;"
             "padding:0.25em 0.7em;text-align:right}th{background:#f3f3f3}"
             "td:first-child,th:first-child{text-align:left;white-space:pre}img{max-width:100%}"
             "figcaption{color:#555;font-size:0.9em}code{background:#f3f3f3;padding:0 0.2em}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style>{_CHECK_IMAGES}</head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def build(workdir, out, layer=None, per_class=1):
    """Write the report of the run in `workdir` to the folder `out`; returns the sections.

    Everything is written to a temporary folder first and moved into `out` at the end, so a
    run that is not finished, or a failing step, leaves no half-written report.
    """
    out = Path(out)
    run = Run.load(workdir)
    staging = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        sections = _sections(run, staging, layer, per_class)
        title = f"FER2013 run report: {Path(workdir).resolve().name}"
        write_text(staging / "report.md", render_markdown(title, sections))
        write_text(staging / "index.html", render_html(title, sections))
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(staging.iterdir(), key=lambda p: p.name == "index.html"):  # the page last
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sections


def _sections(run, out, layer, per_class):
    with tqdm(total=12, desc="report", disable=None) as bar:
        def step(section):
            bar.update()
            return section

        sections = [step(models_section(run)), step(curves_section(run, out)), step(confusion_section(run, out))]
        section, explained = saliency_section(run, out, per_class)
        sections.append(step(section))
        sections += [step(filters_section(out, explained, layer)), step(dnn_section(run, out)),
                     step(ablation_section(run)), step(pseudo_section(run, out)), step(ensemble_section(run, out)),
                     step(heldout_section(run)), step(shift_section(run, out)), step(budget_section(run, out))]
    return sections


def add_arguments(parser):
    parser.add_argument("--out", required=True, type=Path, help="folder to write index.html, report.md and PNGs")
    parser.add_argument("--workdir", type=Path, help="the run folder (default: folds or folds/demo, the one "
                        "finished last)")
    parser.add_argument("--layer", help="convolution whose filters and outputs are shown (default: a middle one)")
    parser.add_argument("--per-class", type=int, default=1, help="correct and wrong saliency examples per class")


def command(args):
    """`fer-kaggle report` (cli.py has found args.workdir)."""
    build(args.workdir, args.out, args.layer, args.per_class)
    print(f"report: {args.out / 'index.html'} (and report.md)")
    return 0
