"""The whole competition run: CSV -> arrays -> folds -> units -> probabilities -> ensemble -> CSV.

    bash run.sh train.csv test.csv out.csv [options]      (= python -m fer_kaggle ...)
    bash run.sh fer2013.csv out.csv [options]             (one file with Usage, or a folder with train/ test/)
    bash run.sh                                           (the bundled demo sample, preset demo)

Every stage writes under --workdir (default folds/); a re-run of the same command
skips finished units and resumes an interrupted one from its last finished epoch.
"""
import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch

from . import ensemble, heldout, inputs, pseudo, recipe, tta
from .config import GPU_PRESETS, PRESETS, Config
from .data import fingerprint as file_fingerprint
from .errors import FerKaggleError
from .executor import Job, make_executor
from .folds import make_or_load_folds, saved_meta
from .models import DNN_COUNTERPARTS
from .submit import check_out_path
from .train import TimeLimitReached, Unit, UnitData, build_model, is_finished, resolve_device, train_unit

HOME = Path(os.environ.get("FER_KAGGLE_HOME", "."))  # run.sh sets it to the project root


def _bool_flag(parser, name, help_text):
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction,
                        default=None, help=help_text)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bash run.sh", description=__doc__.split("\n\n")[0],
        epilog="Options left out take the preset's value; `python -m fer_kaggle.ensemble` re-blends a run.")
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="TRAIN TEST OUT (CSVs: label,feature and id,feature, or emotion,pixels and pixels; "
                        "or two image folders), or DATA OUT (fer2013.csv, icml_face_data.csv, or a folder with "
                        "train/ and test/), or nothing for the bundled demo; CSVs may be .gz or .xz")
    parser.add_argument("--format", choices=inputs.FORMATS, help="insist on one input form instead of "
                        "recognising it")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="bundle of settings (default: full "
                        "where a CUDA device is present, cpu where not, demo without files)")
    parser.add_argument("--workdir", type=Path, help="run folder for folds, units and cache (default: folds, "
                        "folds/demo for the demo)")
    parser.add_argument("--submissions", type=Path, default=HOME / "submissions",
                        help="folder for the named submission files (default: submissions)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--backbones", type=lambda s: tuple(s.split(",")),
                        help="comma-separated timm model names, e.g. fer_vgg13,fer_resnet18")
    parser.add_argument("--folds", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--image-size", type=int, help="resize faces to this side (default 48, their own)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--optimizer", choices=["sgd", "adamw", "auto"], help="auto: AdamW (lr 2e-3, wd 0.05) "
                        "for ConvNeXt, SGD-Nesterov for the batch-norm nets")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--schedule", choices=recipe.SCHEDULES, help="warm-up + cosine, or one-cycle")
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--mixup", type=float, help="mixup Beta alpha (0: off)")
    parser.add_argument("--cutmix", type=float, help="cutmix Beta alpha (0: off)")
    parser.add_argument("--mix-prob", type=float, help="share of batches mixed when mixup or cutmix is on")
    parser.add_argument("--ema", type=float, help="EMA decay of the weights, e.g. 0.999 (0: off)")
    parser.add_argument("--class-balance", type=float, help="class loss weights ~ count^-POWER (0: off)")
    parser.add_argument("--erase", type=float, help="probability of random erasing in --augment full")
    parser.add_argument("--crop", type=int, help="train on random CROP x CROP windows, e.g. 44 (0: off)")
    parser.add_argument("--monitor-rows", type=int, help="held-out rows checked after each epoch for the "
                        "training curves (0: the whole fold; the OOF predictions always cover it all)")
    parser.add_argument("--tta", choices=tta.TTA_CHOICES, help="test-time views (ten_crop needs --crop)")
    _bool_flag(parser, "compile", "torch.compile the training model")
    parser.add_argument("--time-limit", type=float, metavar="MINUTES", help="stop cleanly after the epoch "
                        "that passes this many minutes; run the same command again to continue")
    parser.add_argument("--augment-on", choices=["auto", "device", "host"], help="train-time augmentation "
                        "batched on the device, or albumentations in DataLoader workers (auto: device on CUDA)")
    parser.add_argument("--parallel-units", type=int, help="units trained side by side in local processes on "
                        "a CPU, each with cores/N threads (1: one at a time with every core)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the host path (-1: automatic)")
    parser.add_argument("--amp", choices=["auto", "bf16", "off"], help="bf16 autocast (auto: where native)")
    parser.add_argument("--augment", choices=["full", "light", "none"], help="train-time augmentation")
    _bool_flag(parser, "normalize", "normalise by the train pixels' mean and std")
    _bool_flag(parser, "pseudo", "a second round trained with pseudo-labelled test images")
    parser.add_argument("--pseudo-threshold", type=float, help="minimum teachers' probability for a "
                        "pseudo-label, as a share of the highest probability a model trained with "
                        "--label-smoothing can output (0.9: 90%% of it)")
    _bool_flag(parser, "pseudo-soft", "train on the teachers' probabilities instead of their labels")
    parser.add_argument("--report", type=Path, help="also write the analysis report (index.html, report.md) here")
    _bool_flag(parser, "ablation", "also train the report's ablations: no normalisation, no augmentation, a DNN")
    return parser


def cuda_available():
    """The one place the automatic preset looks for a GPU (tests replace it: no GPU needed to test both)."""
    return torch.cuda.is_available()


def choose_preset(asked, demo, cuda):
    """(preset, why): --preset if given; else demo without files, full with a CUDA device, cpu without."""
    if asked:
        return asked, "--preset"
    if demo:
        return "demo", "no data files: the bundled sample"
    if cuda:
        return "full", "chosen automatically: a CUDA device is present; --preset overrides"
    return "cpu", "chosen automatically: no CUDA device here; --preset overrides"


def resolve(args):
    """(config, data source, out, workdir, why this preset) from the parsed command line."""
    demo = not args.paths
    if len(args.paths) not in (0, 2, 3):
        raise FerKaggleError(f"got {len(args.paths)} paths: give TRAIN TEST OUT, or DATA OUT (fer2013.csv, "
                             f"icml_face_data.csv, or a folder with train/ and test/), or none for the demo")
    preset, why = choose_preset(args.preset, demo, cuda_available())
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                 if getattr(args, f.name, None) is not None and f.name != "preset"}
    cfg = PRESETS[preset].replace(**overrides)
    if cfg.folds < 2:
        raise FerKaggleError(f"--folds {cfg.folds}: at least 2 folds are needed for out-of-fold predictions")
    unknown = [name for name in cfg.backbones if not timm.is_model(name)]
    if unknown:
        raise FerKaggleError(f"unknown backbone(s) {', '.join(unknown)}: give timm model names, "
                             f"e.g. ours: {', '.join(timm.list_models('fer_*'))}")
    if cfg.ablation:
        ablation_variants(cfg)  # refuses a backbone list without a DNN-sized CNN, before any work
    if cfg.image_size < 32:
        raise FerKaggleError(f"--image-size {cfg.image_size}: at least 32 pixels are needed")
    if not 0 < cfg.pseudo_threshold <= 1:
        raise FerKaggleError(f"--pseudo-threshold {cfg.pseudo_threshold}: must be in (0, 1]")
    if cfg.crop and not 16 <= cfg.crop < cfg.image_size:
        raise FerKaggleError(f"--crop {cfg.crop}: must be from 16 to {cfg.image_size - 1} (or 0: off)")
    if cfg.tta == "ten_crop" and not cfg.crop:
        raise FerKaggleError("--tta ten_crop needs a model trained on crops: add --crop, e.g. --crop 44")
    if demo:
        source, out = inputs.resolve([inputs.DEMO_TRAIN, inputs.DEMO_TEST]), None
    else:
        *data_paths, out = args.paths
        check_out_path(out)
        source = inputs.resolve(data_paths, args.format)
    workdir = args.workdir or HOME / ("folds/demo" if demo else "folds")
    return cfg, source, out, workdir, why


def estimate_cpu_hours(cfg, n_train, device):
    """Time a few real training steps of each backbone here and extrapolate to the whole preset."""
    seconds_per_image = 0.0
    for backbone in cfg.backbones:
        model = build_model(backbone, device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        images = torch.randn(32, 1, cfg.image_size, cfg.image_size)
        labels = torch.randint(0, 7, (32,))
        for step in range(3):
            if step == 1:
                started = time.perf_counter()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        seconds_per_image += (time.perf_counter() - started) / (2 * 32)
    images_per_backbone = cfg.epochs * n_train * (cfg.folds - 1) * (2 if cfg.pseudo else 1)
    return images_per_backbone * seconds_per_image / 3600, images_per_backbone * len(cfg.backbones)


def _unit_data(train_x, train_y, folds, fold, test_ids, test_x, extra_x=None, extra_y=None):
    inside = folds != fold
    images, labels = train_x[inside], train_y[inside]
    if extra_x is not None and len(extra_x):
        if extra_y.ndim == 2:  # soft pseudo-labels: every training row becomes a probability vector
            labels = recipe.targets(labels)
        images, labels = np.concatenate([images, extra_x]), np.concatenate([labels, extra_y])
    valid = np.flatnonzero(folds == fold)
    return UnitData(images, labels, valid, train_x[valid], train_y[valid], test_ids, test_x)


def _train_units(cfg, units, workdir, device, deadline, train_x, train_y, folds, test_ids, test_x,
                 pseudo_table=None):
    todo = [u for u in units if not is_finished(u.dir(workdir))]
    executor = make_executor(cfg.parallel_units, device)
    print(f"{units[0].name.rsplit('/', 2)[0]}: {len(units) - len(todo)} of {len(units)} units already finished"
          + (f"; training {len(todo)}, {executor.description}" if todo else ""))
    position = {test_id: p for p, test_id in enumerate(test_ids)}

    def jobs():  # one at a time: the sequential loop holds one unit's copy of the arrays, not all of them
        for unit in todo:
            extra_x = extra_y = None
            if pseudo_table is not None:
                chosen = pseudo_table[pseudo_table["fold"] == unit.fold]
                extra_x = test_x[[position[i] for i in chosen["id"]]]
                extra_y = chosen[pseudo.PROB_COLUMNS].to_numpy() if cfg.pseudo_soft else chosen["label"].to_numpy()
            data = _unit_data(train_x, train_y, folds, unit.fold, test_ids, test_x, extra_x, extra_y)
            yield Job(cfg, unit, workdir, data, str(device))

    for job, metrics in executor.run(jobs(), deadline):
        print(f"{job.unit.name}: OOF accuracy {metrics['valid_acc']:.4f} "
              f"({metrics['train_seconds']:.0f} s, {metrics['train_rows']} training images)", flush=True)


def _round_units(cfg, round_):
    return [Unit(round_, backbone, fold) for backbone in cfg.backbones for fold in range(cfg.folds)]


def ablation_variants(cfg):
    """(variant, config, backbone) of the report's ablations: the first backbone that has a DNN of its size."""
    counterparts = {cnn: dnn for dnn, cnn in DNN_COUNTERPARTS.items()}
    cnn = next((b for b in cfg.backbones if b in counterparts), None)
    if cnn is None:
        raise FerKaggleError(f"--ablation compares a DNN with a CNN of its size: include one of "
                             f"{', '.join(counterparts)} in --backbones")
    uncropped = {"crop": 0, "tta": "flip"} if cfg.crop else {}  # a DNN's input size is fixed: no crops
    return [("no_normalize", cfg.replace(normalize=False), cnn),
            ("no_augment", cfg.replace(augment="none"), cnn),
            ("dnn", cfg.replace(**uncropped), counterparts[cnn])]


def _train_ablations(cfg, workdir, device, deadline, *arrays):
    for variant, variant_cfg, backbone in ablation_variants(cfg):
        units = [Unit(0, backbone, fold, variant) for fold in range(cfg.folds)]
        _train_units(variant_cfg, units, workdir, device, deadline, *arrays)


def set_aside_old_demo(workdir):
    """Move a demo run folder made from an earlier bundled sample to `<workdir>-<its fingerprint>`.

    The bundled sample is ours, not the user's: when a new release redraws it, `bash run.sh`
    must still just work, and the old run is kept rather than deleted.
    """
    meta = saved_meta(workdir)
    if meta is None or meta["train_fingerprint"] == file_fingerprint(inputs.DEMO_TRAIN):
        return None
    old = meta["train_fingerprint"]
    aside = Path(workdir).with_name(f"{Path(workdir).name}-{old[:12]}")
    Path(workdir).rename(aside)
    print(f"{workdir} held a demo run on an earlier bundled sample: moved to {aside}; starting afresh")
    return aside


def run(cfg, source, out, workdir, submissions, report_dir=None):
    started = time.perf_counter()
    deadline = time.monotonic() + 60 * cfg.time_limit if cfg.time_limit else None
    device = resolve_device(cfg.device)
    if source.train == inputs.DEMO_TRAIN:
        set_aside_old_demo(workdir)
    print(f"reading {source.describe()}")
    data, log = inputs.load(source, workdir / "cache")
    for line in log:
        print(line)
    train_x, train_y, test_ids, test_x = data.train_images, data.train_labels, data.test_ids, data.test_images
    print(f"train: {len(train_y)} images, test: {len(test_ids)} images, device: {device}")
    if cfg.preset in GPU_PRESETS and device.type == "cpu" and cfg.device != "cpu":
        hours, images = estimate_cpu_hours(cfg, len(train_y), device)
        raise FerKaggleError(
            f"preset '{cfg.preset}' trains {images / 1e6:.1f}M images; on this CPU that takes about "
            f"{hours:.0f} hours. Run it on a GPU, pick --preset cpu (the preset for a machine without a GPU), "
            f"or add --device cpu to run it here anyway")

    folds, meta = make_or_load_folds(workdir, train_x, train_y, data.train_fingerprint, cfg.folds, cfg.seed)
    if data.test_labels is not None:
        heldout.save_labels(workdir, test_ids, data.test_labels, data.test_usage)
    print(f"folds: {cfg.folds} stratified folds (seed {cfg.seed}); {meta['duplicate_groups']} groups of "
          f"identical images ({meta['rows_in_duplicate_groups']} rows) each kept inside one fold")

    arrays = (train_x, train_y, folds, test_ids, test_x)
    _train_units(cfg, _round_units(cfg, 0), workdir, device, deadline, *arrays)
    if cfg.pseudo:
        models, labels = ensemble.load_models(workdir)
        before = ensemble.best_oof_accuracy([m for m in models if m.name.startswith("round0/")], labels)
        cut = pseudo.absolute_threshold(cfg.pseudo_threshold, cfg.label_smoothing)
        table = pseudo.pseudo_labels(workdir, cfg.backbones, cfg.folds, cut)
        print(f"pseudo-labels: teachers' mean probability >= {cut:.3f} ({cfg.pseudo_threshold} of the "
              f"{pseudo.probability_ceiling(cfg.label_smoothing):.3f} a model trained with label smoothing "
              f"{cfg.label_smoothing} can reach): {len(table) / cfg.folds:.0f} of {len(test_ids)} test images "
              f"per fold on average; added per class and fold:")
        print(pseudo.counts_per_class(table, cfg.folds).to_string())
        _train_units(cfg, _round_units(cfg, 1), workdir, device, deadline, *arrays, table)
        models, _ = ensemble.load_models(workdir)
        after = ensemble.best_oof_accuracy([m for m in models if m.name.startswith("round1/")], labels)
        print(f"pseudo-labelling: ensemble OOF accuracy {before:.4f} before, {after:.4f} after")

    if cfg.ablation:
        _train_ablations(cfg, workdir, device, deadline, *arrays)
    summary, path = ensemble.run(workdir, submissions, out)
    kept = summary["blends"][summary["kept"]]
    print(f"\nsubmission: {path}" + (f" (and {out})" if out else ""))
    print(f"ensemble OOF accuracy: {kept['oof_acc']:.4f} ({summary['kept']} of {len(summary['models'])} models)"
          f"; majority-class rate {np.bincount(train_y).max() / len(train_y):.4f}")
    scores = heldout.score(workdir, path)
    if scores is not None:
        print(heldout.describe(scores))
    if report_dir is not None:
        from . import report  # matplotlib, captum and torchinfo load only when a report is asked for
        report.build(workdir, report_dir)
        print(f"report: {report_dir / 'index.html'} (and report.md)")
    print(f"total time: {time.perf_counter() - started:.0f} s")
    return summary, path


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        cfg, source, out, workdir, why = resolve(args)
        print(f"preset {cfg.preset} ({why})")
        run(cfg, source, out, workdir, args.submissions, args.report)
    except FerKaggleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TimeLimitReached as exc:
        print(f"\ntime limit of {args.time_limit} minutes reached: {exc}; everything so far is saved. "
              f"Run the same command again to continue (exit status 3: not finished)", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume where it stopped", file=sys.stderr)
        return 130
    return 0
