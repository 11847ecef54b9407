"""Blend the run's finished models into one submission.

    python -m fer_kaggle.ensemble [--workdir folds] [--out out.csv] [--all]

Reads  `<workdir>/folds.csv` (labels), run.json (the latest run's models) and each model's
       `round<r>/<backbone>-<key>/fold<k>/{oof,test}.npz`.
Writes `<workdir>/ensemble.json` (accuracies, weights) and `submissions/<name>.csv`.

By default the latest run's own models are blended (those of its settings and backbones); `--all`
blends every finished model in the folder, whatever settings trained it (legitimate Kaggle practice).
A model is a (round, backbone, settings) folder; its OOF probabilities are the union of its
folds' validation predictions and its test probabilities the mean over its folds.
Weights are fitted on OOF log-loss only, and the mean or the weighted blend is kept,
whichever has the higher OOF accuracy.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from fer_kaggle.blend import heldout
from fer_kaggle.core.atomic import read_csv, write_json
from fer_kaggle.data.competition import NUM_CLASSES
from fer_kaggle.core.errors import DamagedFile, FerKaggleError
from fer_kaggle.core.runfolder import (OOF_FILE, RERUN, TEST_FILE, RunFolder, backbone_of, fold_name, is_finished,
                                       load_probs, round_name)
from fer_kaggle.blend.submit import check_out_path, write_submission


@dataclass
class Model:
    name: str            # round<r>/<backbone>
    oof: np.ndarray      # (n_train, 7) TTA probabilities, each row from the fold that held it out
    oof_plain: np.ndarray
    test: np.ndarray     # (n_test, 7) mean over folds
    test_ids: np.ndarray
    tta_space: str = "prob"  # TTA views averaged as probabilities or as logits: the better OOF accuracy
    oof_by_space: dict = None


def accuracy(probs, labels):
    return float((probs.argmax(1) == labels).mean())


def log_loss(probs, labels):
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


SPACE_KEYS = {"prob": "probs", "logit": "probs_logit"}  # how the unit files name each TTA average


def _read_folds(model_dir, n_rows, n_folds):
    """({key: (OOF, mean test) probabilities} for every key all folds saved, test ids), one read per file."""
    keys = [*SPACE_KEYS.values(), "probs_plain"]
    oofs = {key: np.full((n_rows, NUM_CLASSES), np.nan, dtype=np.float32) for key in keys}
    tests, ids = {key: [] for key in keys}, None
    for fold in range(n_folds):
        saved = load_probs(model_dir / fold_name(fold) / OOF_FILE, RERUN)
        keys = [key for key in keys if key in saved]  # units from before logit averaging lack one
        if saved["rows"].min(initial=0) < 0 or saved["rows"].max(initial=-1) >= n_rows:
            raise DamagedFile(model_dir / fold_name(fold) / OOF_FILE, f"rows outside the {n_rows} of the train file",
                              RERUN)
        for key in keys:
            oofs[key][saved["rows"]] = saved[key]
        saved = load_probs(model_dir / fold_name(fold) / TEST_FILE, RERUN)
        if ids is not None and not np.array_equal(ids, saved["ids"]):
            raise FerKaggleError(f"{model_dir}: folds predicted different test files; retrain it")
        ids = saved["ids"]
        for key in keys:
            tests[key].append(saved[key])
    if np.isnan(oofs["probs_plain"]).any():
        raise FerKaggleError(f"{model_dir}: its folds do not cover every train row; delete it and retrain")
    return {key: (oofs[key], np.mean(tests[key], axis=0)) for key in keys}, ids


def load_model_dir(model_dir, n_rows, n_folds, labels=None):
    """(oof, oof_plain, test, test_ids, tta_space, {space: oof}) of a model folder's fold files.

    With `labels`, the TTA average (probability or logit space) with the higher OOF accuracy is used.
    """
    saved, ids = _read_folds(model_dir, n_rows, n_folds)
    by_space = {space: saved[key] for space, key in SPACE_KEYS.items() if key in saved}
    space = "prob"
    if labels is not None:
        space = max(by_space, key=lambda name: (accuracy(by_space[name][0], labels), name == "prob"))
    oof, test = by_space[space]
    return oof, saved["probs_plain"][0], test, ids, space, {name: found[0] for name, found in by_space.items()}


def load_models(workdir, names=None):
    """The models `names` (e.g. round0/fer_vgg_cpu-1a2b3c4d; None: every model folder) whose folds are all
    finished, and the train labels; the unfinished ones are named on stderr."""
    folder = RunFolder(workdir)
    n_folds = folder.require_run()["folds"]
    labels = read_csv(folder.folds_csv, ("label",), RERUN)["label"].to_numpy()
    if names is None:
        names = folder.model_names()
    models = []
    for name in names:
        model_dir = folder.path / name
        finished = [k for k in range(n_folds) if is_finished(model_dir / fold_name(k))]
        if len(finished) < n_folds:
            missing = sorted(set(range(n_folds)) - set(finished))
            print(f"left out {name}: fold(s) {missing} not finished (run run.sh again to finish them)",
                  file=sys.stderr)
            continue
        models.append(Model(name, *load_model_dir(model_dir, len(labels), n_folds, labels)))
    if not models:
        raise FerKaggleError(f"{workdir}: no finished model to ensemble; run run.sh (again) to finish them")
    ids = models[0].test_ids
    for model in models[1:]:
        if not np.array_equal(model.test_ids, ids):
            raise FerKaggleError(f"{workdir}/{model.name} predicted another test file than {models[0].name}")
    return models, labels


def blend(probs, weights):
    """Weighted mean of (models, n, 7) probabilities."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), np.asarray(probs, dtype=np.float64), axes=1)


def fit_weights(oofs, labels):
    """Non-negative weights summing to 1 that minimise the blend's OOF log-loss."""
    count = len(oofs)
    if count == 1:
        return np.ones(1)
    result = minimize(lambda w: log_loss(blend(oofs, w), labels), np.full(count, 1 / count),
                      method="SLSQP", bounds=[(0, 1)] * count,
                      constraints={"type": "eq", "fun": lambda w: w.sum() - 1})
    weights = np.clip(result.x, 0, None)
    return weights / weights.sum()


def ensemble(models, labels):
    """Accuracies of every model and of both blends, and the blend kept for the submission."""
    oofs = np.stack([m.oof for m in models])
    tests = np.stack([m.test for m in models])
    mean_weights = np.full(len(models), 1 / len(models))
    fitted_weights = fit_weights(oofs, labels)
    blends = {method: {"weights": w.tolist(), "oof_acc": accuracy(blend(oofs, w), labels),
                       "oof_log_loss": log_loss(blend(oofs, w), labels)}
              for method, w in (("mean", mean_weights), ("weighted", fitted_weights))}
    kept = max(blends, key=lambda method: blends[method]["oof_acc"])
    return {
        "models": {m.name: {"oof_acc": accuracy(m.oof, labels), "oof_acc_plain": accuracy(m.oof_plain, labels),
                            "tta_space": m.tta_space,
                            **{f"oof_acc_{space}": accuracy(oof, labels) for space, oof in m.oof_by_space.items()}}
                   for m in models},
        "blends": blends,
        "kept": kept,
        "test_probs": blend(tests, blends[kept]["weights"]),
    }


def best_oof_accuracy(models, labels):
    """The higher OOF accuracy of the two blends (mean, weighted) of `models`."""
    return max(blend["oof_acc"] for blend in ensemble(models, labels)["blends"].values())


def submission_name(models, kept, oof_acc):
    backbones = sorted({backbone_of(m.name) for m in models})
    rounds = "pl" if any(m.name.startswith(round_name(1) + "/") for m in models) else "nopl"
    return f"{'+'.join(backbones)}_{rounds}_{kept}_oof{oof_acc:.4f}.csv"


def print_report(result):
    print(f"{'model':<40} {'OOF acc':>8} {'no TTA':>8} {'TTA gain':>9}  TTA average: prob / logit")
    for name, scores in result["models"].items():
        spaces = " / ".join(f"{scores[f'oof_acc_{space}']:.4f}" if f"oof_acc_{space}" in scores else "-"
                            for space in SPACE_KEYS)
        print(f"{name:<40} {scores['oof_acc']:>8.4f} {scores['oof_acc_plain']:>8.4f} "
              f"{scores['oof_acc'] - scores['oof_acc_plain']:>+9.4f}  {spaces} (kept: {scores['tta_space']})")
    for method, scores in result["blends"].items():
        weights = " ".join(f"{w:.2f}" for w in scores["weights"])
        mark = "  <- kept" if method == result["kept"] else ""
        print(f"{'ensemble ' + method:<40} {scores['oof_acc']:>8.4f}   weights {weights}{mark}")


def run(workdir="folds", submissions="submissions", out=None, names=None):
    """Blend the models `names` (None: every finished one), write the submission(s); (summary, path)."""
    models, labels = load_models(workdir, names)
    result = ensemble(models, labels)
    print_report(result)
    kept = result["blends"][result["kept"]]
    path = Path(submissions) / submission_name(models, result["kept"], kept["oof_acc"])
    ids, predicted = models[0].test_ids, result["test_probs"].argmax(1)
    write_submission(path, ids, predicted)
    if out is not None:
        write_submission(out, ids, predicted)
    summary = {key: value for key, value in result.items() if key != "test_probs"}
    summary["submission"] = str(path)
    write_json(RunFolder(workdir).ensemble_json, summary)
    return summary, path


def add_arguments(parser):
    parser.add_argument("--workdir", type=Path, help="the run folder (default: folds or folds/demo, the one "
                        "finished last)")
    parser.add_argument("--submissions", type=Path, help="where to write the named submission "
                        "(default: submissions)")
    parser.add_argument("--out", type=Path, help="also write the submission to this path")
    parser.add_argument("--all", dest="every", action="store_true", help="blend every finished model in the "
                        "folder, whatever settings trained it (default: the latest run's models)")


def command(args):
    """`fer-kaggle ensemble`: re-blend a run's models on disk (cli.py has found args.workdir)."""
    if args.out is not None:
        check_out_path(args.out)
    folder = RunFolder(args.workdir)
    names = None if args.every else folder.current_models()
    if args.every or names is None:
        print(f"blending every finished model in {folder}" + ("" if args.every else " (no run.json: an "
              "older run)") + ", whatever settings trained it")
    else:
        print(f"blending the latest run's {len(names)} models in {folder} (--all: every finished model)")
    summary, path = run(folder.path, args.submissions, args.out, names)
    print(f"submission: {path}" + (f" (and {args.out})" if args.out else ""))
    scores = heldout.score(folder.path, path)
    if scores is not None:
        print(heldout.describe(scores))
    return 0
