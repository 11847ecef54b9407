"""One small model from a finished run: students that learn the kept ensemble's probabilities.

    python -m fer_kaggle.distill [--workdir folds] [--backbone fer_vgg_cpu] [--epochs N] [--tta flip]

Fold-honest as the pseudo-labels are: fold k's student learns only from fold k's teachers (the kept blend's
units that never saw fold k's rows), on the train rows outside fold k and on the test images, each with
the teachers' blended probabilities (their TTA, their blend weights) as its targets. It is then scored on
fold k with the true labels: the students' OOF accuracy is as honest as the ensemble's, and is printed
beside it. The targets are computed once per fold and kept (student/targets-<key>-fold<k>.npz).

The student is one backbone, k folds (one per fold, as every model of the ensemble), predicting with few
TTA views; `predict --model student` and `export --model student` use the k folds' mean, `--unit
student/<model>/fold0` one of them. Layout: student/<backbone>-<key>/fold<k>/ (a unit, as train.py writes
it) and student.json (what was distilled, the OOF accuracies, minutes).
"""
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fer_kaggle.blend.ensemble import accuracy
from fer_kaggle.core import runfolder
from fer_kaggle.core.atomic import load_npz, read_json, save_npz, write_json
from fer_kaggle.core.config import Config
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.core.runfolder import DISTILL_ROUND, RunFolder, short_hash
from fer_kaggle.models.tta import TTA_CHOICES
from fer_kaggle.serve.inference import EnsembleModule, blend_units, kept_blend, kept_oof_accuracy, load_unit
from fer_kaggle.training import train

DEFAULT_BACKBONE, DEFAULT_TTA = "fer_vgg_cpu", "flip"
TEACHER_BATCH = 512


def fold_teachers(workdir, fold):
    """Fold `fold`'s units of the kept blend as one module (their weights, their TTA spaces)."""
    names, weights, spaces = blend_units(workdir, [fold])
    total = sum(weights)
    units = [load_unit(workdir, name, space=space) for name, space in zip(names, spaces)]
    return EnsembleModule(units, names, [w / total for w in weights]).eval(), names


def teach(module, images, amp_dtype, desc):
    """The teachers' (N, 7) probabilities of uint8 (N, 48, 48) images, in batches."""
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        for start in tqdm(range(0, len(images), TEACHER_BATCH), desc=desc, unit="batch", leave=False, disable=None):
            out.append(module(torch.from_numpy(images[start:start + TEACHER_BATCH][:, None])).float().numpy())
    return np.concatenate(out) if out else np.empty((0, 7), np.float32)


def fold_targets(folder, fold, key, train_images, train_rows, test_images, amp_dtype):
    """(train rows' targets, test images' targets) from fold `fold`'s teachers; computed once, then read."""
    path = folder.path / runfolder.round_name(DISTILL_ROUND) / f"targets-{key}-{runfolder.fold_name(fold)}.npz"
    if path.exists():
        saved = load_npz(path, ("rows", "train", "test"), "delete it: distill computes it again")
        if np.array_equal(saved["rows"], train_rows) and len(saved["test"]) == len(test_images):
            return saved["train"], saved["test"]
    module, _ = fold_teachers(folder.path, fold)
    train_targets = teach(module, train_images[train_rows], amp_dtype, f"fold {fold}'s teachers on train")
    test_targets = teach(module, test_images, amp_dtype, f"fold {fold}'s teachers on test")
    save_npz(path, rows=train_rows, train=train_targets, test=test_targets)
    return train_targets, test_targets


def teacher_configs(workdir):
    """The config.json of each kept teacher's fold-0 unit (each holds every setting it trained with)."""
    return [read_json(Path(workdir) / unit / runfolder.CONFIG_FILE, ("epochs",), runfolder.RERUN)
            for unit in blend_units(workdir, [0])[0]]


def student_config(workdir, backbone, epochs, tta):
    """The recipe of the kept teacher that trained most epochs, for the student: as many epochs by default (a
    budgeted run planned them), its targets already soft (no label smoothing, no mixing)."""
    recipe = max(teacher_configs(workdir), key=lambda config: config["epochs"])
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in recipe.items() if k in Config.__dataclass_fields__}
    cfg = Config(**fields)
    return cfg.replace(backbones=(backbone,), epochs=epochs or cfg.epochs, tta=tta, label_smoothing=0.0,
                       mixup=0.0, cutmix=0.0, pseudo=False, budget=0.0, plan="", time_limit=0.0)


def distill(workdir, backbone=DEFAULT_BACKBONE, epochs=0, tta=DEFAULT_TTA, time_limit=0.0):
    """Train the k fold students (resuming finished ones), score them, write student.json; returns it."""
    folder = RunFolder(workdir)
    meta = folder.require_run()
    if not folder.ensemble_json.is_file():
        raise FerKaggleError(f"{workdir}: no ensemble here yet; finish the run first (run.sh)")
    if tta not in TTA_CHOICES or tta == "ten_crop":
        raise FerKaggleError(f"--tta {tta}: choose none, flip or flip_shift")
    n_folds = meta["folds"]
    images = folder.train_images()
    table = folder.folds_table(len(images))
    labels, folds = table["label"].to_numpy(np.int64), table["fold"].to_numpy(np.int64)
    test = folder.test_images()
    if test is None:
        raise FerKaggleError(f"{workdir}: the run's parsed test images are gone; run run.sh again to rebuild them")
    test_images = test[0]
    cfg = student_config(workdir, backbone, epochs, tta)
    device = train.resolve_device(cfg.device)
    amp_dtype = train.autocast_dtype(cfg.amp, device)
    teachers = kept_blend(workdir)
    key = short_hash({"teachers": teachers, "cfg": {k: v for k, v in cfg.to_dict().items() if k != "time_limit"},
                      "train": meta.get("train_fingerprint"), "test": len(test_images)})
    deadline = time.monotonic() + time_limit * 60 if time_limit else None
    started = time.perf_counter()
    oof = np.zeros((len(images), 7), np.float32)
    for fold in range(n_folds):
        train_rows, valid_rows = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        unit = train.Unit(DISTILL_ROUND, backbone, fold, key=key)
        if not train.is_finished(unit.dir(workdir)):
            train_targets, test_targets = fold_targets(folder, fold, key, images, train_rows, test_images, amp_dtype)
            data = train.UnitData(np.concatenate([images[train_rows], test_images]),
                                  np.concatenate([train_targets, test_targets]), valid_rows, images[valid_rows],
                                  labels[valid_rows], np.arange(len(test_images)), test_images)
            train.train_unit(cfg, unit, workdir, data, device, deadline=deadline,
                             key_settings={"teachers": teachers, "distilled": True})
        saved = runfolder.load_probs(unit.dir(workdir) / runfolder.OOF_FILE, runfolder.RERUN)
        oof[saved["rows"]] = saved["probs"]
    summary = {"model": train.Unit(DISTILL_ROUND, backbone, 0, key=key).model, "backbone": backbone,
               "folds": n_folds, "epochs": cfg.epochs, "tta": tta, "teachers": teachers,
               "oof_acc": accuracy(oof, labels), "ensemble_oof_acc": kept_oof_accuracy(workdir),
               "minutes": round((time.perf_counter() - started) / 60, 2)}
    write_json(folder.student_json, summary)
    return summary


def add_arguments(parser):
    parser.add_argument("--workdir", "--run", dest="workdir", type=Path, help="the finished run folder "
                        "(default: folds or folds/demo, the one finished last)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"the student's backbone (default "
                        f"{DEFAULT_BACKBONE}: the fastest on a CPU for its accuracy)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per fold (default: as many as the kept "
                        "teacher that trained most)")
    parser.add_argument("--tta", default=DEFAULT_TTA, choices=["none", "flip", "flip_shift"],
                        help=f"the student's test-time views (default {DEFAULT_TTA}: cheap enough for video)")
    parser.add_argument("--time-limit", type=float, default=0.0, metavar="MINUTES",
                        help="stop cleanly after the epoch that passes this many minutes; run again to continue")


def command(args):
    """`fer-kaggle distill` (cli.py has found args.workdir)."""
    summary = distill(args.workdir, args.backbone, args.epochs, args.tta, args.time_limit)
    print(f"student {summary['model']} ({summary['folds']} folds, {summary['epochs']} epochs, TTA {summary['tta']}): "
          f"OOF accuracy {summary['oof_acc']:.4f}, the ensemble's {summary['ensemble_oof_acc']:.4f} "
          f"({summary['oof_acc'] - summary['ensemble_oof_acc']:+.4f}); "
          f"predict and export take --model student")
    return 0
