"""Benchmarks that print figures (never timed tests).

    python -m fer_kaggle.bench [train] [--preset full|fast|demo] [--backbones A,B] [--device auto]
    python -m fer_kaggle.bench recipe TRAIN_CSV [--preset demo] [--backbone B] [--epochs 8] [--rows 10000]
    python -m fer_kaggle.bench table TRAIN_CSV [--preset cpu] [--epochs 5,10,20,40]   the budget planner's table
    python -m fer_kaggle.bench budget [--preset cpu]   what 15 to 240 minutes buy here (plan, predicted OOF)
    python -m fer_kaggle.bench parse TRAIN_CSV [--repeats 3]
    python -m fer_kaggle.bench augment [--device cpu]   albumentations against the batched torch augmentation
    python -m fer_kaggle.bench tree -- COMMAND...   wall time and the process tree's peak memory
    python -m fer_kaggle.bench shift TRAIN_CSV TEST_CSV   the shift check on real and shifted copies
    python -m fer_kaggle.bench gpu [--train CSV]   the GPU self-check (selfcheck.py); exits 2 without CUDA
    python -m fer_kaggle.bench detectors   face detectors: found, false faces, framing, speed (serving.py)
    python -m fer_kaggle.bench video [--workdir folds]   a video end to end with the ensemble and the student

train (the default): each backbone's speed (speed.py). On a CPU it times a few steps of the demo preset
by default (under a minute; `--preset full` there takes several minutes: its models are GPU-sized).

recipe: one backbone on one fold, once per recipe element switched on (or off) alone
against the preset as the base (`--set KEY=VALUE` changes the base), printing each variant's
OOF accuracy and its difference.

tree: runs a command (e.g. the whole `bash run.sh ...`) and prints its wall time and the peak
memory of its whole process tree, parent and workers together (PSS, sampled twice a second).

shift: the train/test shift check (shift.py) on the files as given, and on copies blurred,
contrast-stretched or split in two halves on purpose: where its thresholds come from.

parse: our reader against the obvious pandas + per-row `np.fromstring`, and the
cached load that a resumed run uses instead (with the bundled 400-row test file as its test).
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import torch

from fer_kaggle.bench import keeper, serving
from fer_kaggle.bench.chaos import chaos
from fer_kaggle.bench.selfcheck import run_selfcheck
from fer_kaggle.bench.speed import (FER2013_TEST_ROWS, FER2013_TRAIN_ROWS, device_name, median_seconds,
                                    bench_augment, bench_train, training_flops_per_image)
from fer_kaggle.core.atomic import write_json
from fer_kaggle.core.config import PRESETS, Config
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.core.runfolder import HOME, find_default_run
from fer_kaggle.data import inputs, shift
from fer_kaggle.data.competition import fingerprint, read_test, read_train
from fer_kaggle.data.folds import make_or_load_folds
from fer_kaggle.run.budget import TABLE_FILE, Table, curve, machine_name, measure_speeds, table_command, work_for
from fer_kaggle.training import augment
from fer_kaggle.training.train import Unit, UnitData, autocast_dtype, make_step, resolve_device, train_unit

def naive_read_train(path):
    """The obvious reader: pandas, then one np.fromstring per row."""
    frame = pd.read_csv(path)
    images = np.stack([np.fromstring(row, dtype=np.uint8, sep=" ") for row in frame["feature"]])
    return images.reshape(-1, 48, 48), frame["label"].to_numpy()


def bench_parse(path, repeats):
    rows = []
    naive = median_seconds(lambda: naive_read_train(path), repeats)
    ours = median_seconds(lambda: read_train(path), repeats)
    assert np.array_equal(naive[3][0], ours[3][0]) and np.array_equal(naive[3][1], ours[3][1])
    source = inputs.resolve([path, inputs.DEMO_TEST])
    with tempfile.TemporaryDirectory() as cache:
        inputs.load(source, cache)  # fills the cache
        cached = median_seconds(lambda: inputs.load(source, cache), repeats)
    n_rows = len(ours[3][1])
    for name, (median, low, high, _) in (("pandas + per-row np.fromstring", naive),
                                         ("fer_kaggle.read_train", ours),
                                         ("inputs.load, cached (+ demo test)", cached)):
        rows.append((name, median, low, high, n_rows / median))
    print(f"parse {path} ({n_rows} rows), {repeats} runs each")
    print(f"{'reader':<34} {'median s':>9} {'min':>7} {'max':>7} {'rows/s':>9} {'vs naive':>9}")
    for name, median, low, high, rate in rows:
        print(f"{name:<34} {median:>9.2f} {low:>7.2f} {high:>7.2f} {rate:>9.0f} {naive[0] / median:>8.2f}x")


def blurred(images, sigma):
    """A copy of uint8 faces under a Gaussian blur of `sigma` pixels (what the old train file had)."""
    import cv2
    return np.stack([cv2.GaussianBlur(image, (0, 0), sigma) for image in images])


def contrast_stretched(images, gain):
    """A copy of uint8 faces with their contrast around each face's mean multiplied by `gain`."""
    x = images.astype(np.float32)
    mean = x.mean((1, 2), keepdims=True)
    return np.clip((x - mean) * gain + mean, 0, 255).round().astype(np.uint8)


def bench_shift(train_path, test_path):
    """The shift check on the real files and on copies shifted on purpose: where its thresholds come from."""
    train_x, _ = read_train(train_path)
    _, test_x = read_test(test_path)
    halves = np.random.default_rng(2013).permutation(len(train_x))
    cases = [("real train / real test", train_x, test_x),
             ("train / test blurred (sigma 1)", train_x, blurred(test_x, 1.0)),
             ("train / test blurred (sigma 0.5)", train_x, blurred(test_x, 0.5)),
             ("train blurred (sigma 1.5) / test", blurred(train_x, 1.5), test_x),
             ("train / test contrast x1.5", train_x, contrast_stretched(test_x, 1.5)),
             ("train / test contrast x1.2", train_x, contrast_stretched(test_x, 1.2)),
             ("train half A / train half B", train_x[halves[::2]], train_x[halves[1::2]])]
    print(f"shift check on {train_path} and {test_path} (thresholds: AUC {shift.WARN_AUC}, effect "
          f"{shift.WARN_EFFECT})")
    print(f"{'case':<34} {'bright':>7} {'contr':>7} {'sharp':>7} {'copies':>7} {'AUC':>6} {'s':>5}  warning")
    for name, train_images, test_images in cases:
        figures = shift.check_inputs(train_images, test_images)
        effects = [figures["stats"][stat]["effect"] for stat in shift.STATS]
        warned = shift.input_warning(figures, "train", "test")
        print(f"{name:<34} {effects[0]:>+7.2f} {effects[1]:>+7.2f} {effects[2]:>+7.2f} "
              f"{100 * figures['duplicate_share']:>6.1f}% {figures['adversarial_auc']:>6.3f} "
              f"{figures['seconds']:>5.1f}  {'yes' if warned else 'no'}", flush=True)


RECIPE_VARIANTS = {  # one element changed from the base per row; the base is the preset as given
    "base": {},
    "mixup 0.4": {"mixup": 0.4},
    "cutmix 1.0": {"cutmix": 1.0},
    "EMA 0.999": {"ema": 0.999},
    "one-cycle": {"schedule": "onecycle"},
    "class balance 0.5": {"class_balance": 0.5},
    "no label smoothing": {"label_smoothing": 0.0},
    "no random erasing": {"erase": 0.0},
    "light augmentation": {"augment": "light"},
    "crop 44 + ten-crop TTA": {"crop": 44, "tta": "ten_crop"},
    "SGD-Nesterov 0.1": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 2.0},
}


def parse_setting(text):
    """`KEY=VALUE` -> (Config field, value of the field's type), e.g. `epochs=30`, `backbones=a,b`."""
    key, _, value = text.partition("=")
    key = key.replace("-", "_")
    defaults = Config()
    if not hasattr(defaults, key) or not value:
        raise argparse.ArgumentTypeError(f"'{text}': give KEY=VALUE with a Config field as KEY")
    kind = type(getattr(defaults, key))
    if kind is tuple:
        return key, tuple(value.split(","))
    if kind is bool:
        return key, value.lower() in ("1", "true", "yes", "on")
    return key, kind(value)


def bench_recipe(cfg, train_path, rows, fold, workdir, variants):
    """OOF accuracy of one backbone on one fold for each recipe element switched on (or off) alone."""
    device = resolve_device(cfg.device)
    images, labels = read_train(train_path)
    images, labels = images[:rows], labels[:rows]
    train_fingerprint = f"{fingerprint(train_path)}-{rows}"
    folds, _ = make_or_load_folds(workdir, images, labels, train_fingerprint, cfg.folds, cfg.seed)
    inside, valid = folds != fold, np.flatnonzero(folds == fold)
    data = UnitData(images[inside], labels[inside], valid, images[valid], labels[valid],
                    np.arange(1), images[:1])
    backbone = cfg.backbones[0]
    print(f"recipe elements: {backbone}, fold {fold} of {cfg.folds} ({len(valid)} held-out rows) of the first "
          f"{len(labels)} rows of {train_path}, preset {cfg.preset}, {cfg.epochs} epochs, on {device_name(device)}")
    print(f"{'variant':<24} {'OOF acc':>8} {'vs base':>8} {'logit TTA':>10} {'no TTA':>7} {'minutes':>8}")
    base = None
    for name in variants:
        unit = Unit(0, backbone, fold, "recipe_" + name.replace(" ", "_").replace("+", "and"))
        metrics = train_unit(cfg.replace(**RECIPE_VARIANTS[name]), unit, workdir, data, device)
        base = metrics["valid_acc"] if base is None else base
        print(f"{name:<24} {metrics['valid_acc']:>8.4f} {metrics['valid_acc'] - base:>+8.4f} "
              f"{metrics['valid_acc_logit']:>10.4f} {metrics['valid_acc_plain']:>7.4f} "
              f"{metrics['train_seconds'] / 60:>8.1f}", flush=True)


def bench_table(cfg, train_path, epoch_levels, workdir, out, recipe="", settings=None):
    """Fold 0's OOF accuracy of each of the preset's backbones at each number of epochs, and of their blends
    (mean of probabilities): the table the budget planner reads. Written under the preset's name into `out`
    (budget_table.json); what else the file holds (other presets, a measured pseudo-labelling gain) is kept.
    Units live in WORKDIR/epochs-E/; a re-run skips the finished ones.

    `recipe` (a name) with `settings` ({field: value}): the arms `backbone:recipe`, the preset's recipe with
    those settings changed, which the planner weighs beside the preset's own (budget.Table)."""
    settings = dict(settings or {})
    if recipe:
        cfg = cfg.replace(**settings)
    arm = {b: f"{b}:{recipe}" if recipe else b for b in cfg.backbones}
    before = Table.for_preset(cfg.preset, out) if Path(out).exists() else Table({})
    for name in arm.values():  # before any training: the same name must mean the same settings
        if name in before.settings and before.settings[name] != settings:
            raise FerKaggleError(f"{out} holds {name} with settings {before.settings[name]}, not {settings}: "
                                 f"name this recipe otherwise (--recipe)")
    import itertools
    import json
    import platform

    device = resolve_device(cfg.device)
    images, labels = read_train(train_path)
    folds, _ = make_or_load_folds(workdir, images, labels, f"{fingerprint(train_path)}-{len(labels)}", cfg.folds,
                                  cfg.seed)
    inside, valid = folds != 0, np.flatnonzero(folds == 0)
    data = UnitData(images[inside], labels[inside], valid, images[valid], labels[valid], np.arange(1), images[:1])
    print(f"budget table: preset {cfg.preset}, fold 0 of {cfg.folds} of {train_path} ({inside.sum()} training rows, "
          f"{len(valid)} held out), epochs {', '.join(map(str, epoch_levels))}, on {device_name(device)}")
    models = {arm[b]: {"oof": {}, **({"settings": settings} if recipe else {})} for b in cfg.backbones}
    pairs = [tuple(arm[b] for b in pair) for pair in itertools.combinations(cfg.backbones, 2)]
    blends = {"+".join(pair): {} for pair in pairs}
    view_losses = []  # what fewer TTA views lose: the planner weighs them against epochs
    for epochs in epoch_levels:
        probs = {}
        for backbone in cfg.backbones:
            unit = Unit(0, backbone, 0, f"recipe_{recipe or 'base'}")  # bench recipe's name for a preset's own
            metrics = train_unit(cfg.replace(epochs=epochs), unit, workdir / f"epochs-{epochs}", data, device)
            with np.load(unit.dir(workdir / f"epochs-{epochs}") / "oof.npz") as saved:
                probs[arm[backbone]] = saved["probs"]
            models[arm[backbone]]["oof"][str(epochs)] = round(metrics["valid_acc"], 4)
            if metrics.get("valid_acc_views"):  # not in a unit finished before train.py measured it
                view_losses.append(_views_loss(metrics["valid_acc_views"], arm[backbone], epochs, cfg.folds))
            print(f"{arm[backbone]:<18} {epochs:>4} epochs  OOF {metrics['valid_acc']:.4f}  "
                  f"({metrics['train_seconds'] / 60:.1f} min training)", flush=True)
        for pair in pairs:
            blend = np.mean([probs[a] for a in pair], axis=0).argmax(1)
            blends["+".join(pair)][str(epochs)] = round(float((blend == labels[valid]).mean()), 4)
            print(f"{' + '.join(pair)}: blend OOF {blends['+'.join(pair)][str(epochs)]:.4f}", flush=True)
    side = cfg.crop or cfg.image_size
    for backbone in cfg.backbones:
        step = make_step(cfg, backbone, device, 1, labels[:8])
        models[arm[backbone]]["mflop_per_image"] = round(training_flops_per_image(step, side) / 1e6, 1)
    table = json.loads(Path(out).read_text()) if Path(out).exists() else {}
    entry = table.setdefault(cfg.preset, {})
    for name, measured in models.items():  # merged: levels measured before (other epochs) are kept
        known = entry.setdefault("models", {}).setdefault(name, {"oof": {}})
        known["oof"].update(measured["oof"])
        known["mflop_per_image"] = measured["mflop_per_image"]
        known["train_rows"] = int(inside.sum())  # a unit's: an arm of other folds trains on more or fewer
        if recipe:
            known["settings"] = settings
    for pair, measured in blends.items():
        entry.setdefault("blends", {}).setdefault(pair, {}).update(measured)
    losses = entry.setdefault("tta", {}).setdefault("losses", [])
    for measured in view_losses:  # a level measured again replaces its row
        losses[:] = [m for m in losses if (m["arm"], m["epochs"], m["folds"]) !=
                     (measured["arm"], measured["epochs"], measured["folds"])] + [measured]
    command = table_command(Path(train_path).name, cfg.preset, cfg.backbones, epoch_levels, recipe, settings)
    entry.setdefault("commands", []).append(
        f"{command}: fold 0 of {cfg.folds} ({int(inside.sum())} training rows, {len(valid)} held out), seed "
        f"{cfg.seed}, on {machine_name()}, {time.strftime('%Y-%m-%d')}")
    if "folds" not in settings:
        entry["train_rows"] = int(inside.sum())
    write_json(out, table)
    print(f"wrote {out} ({platform.node()})")


def _views_loss(accuracy_by_views, arm, epochs, folds):
    """A table row of the OOF lost with the first k TTA views instead of all (train.py's valid_acc_views)."""
    every = max(accuracy_by_views, key=int)
    loss = {k: round(accuracy_by_views[every] - acc, 4) for k, acc in accuracy_by_views.items() if int(k) < int(every)}
    print(f"{arm:<18} {epochs:>4} epochs  OOF lost with fewer TTA views: "
          + ", ".join(f"{k} of {every}: {100 * v:+.2f} points" for k, v in loss.items()), flush=True)
    return {"arm": arm, "epochs": epochs, "folds": folds, "views": loss, "of": int(every),
            "measured": f"bench table, {time.strftime('%Y-%m-%d')}"}


def _fer2013_work_here(preset, device_choice, amp, what):
    """(cfg, Work, Table) of a run on FER2013's full files at this machine's speeds (timed on the bundled
    sample's real faces, or this machine's cache), after a line saying so."""
    cfg = PRESETS[preset].replace(device=device_choice, amp=amp)
    device = resolve_device(cfg.device)
    images, labels = read_train(inputs.DEMO_TRAIN)  # real faces to time on; the sizes are FER2013's
    table = Table.for_preset(preset)
    speeds, how = measure_speeds(cfg, table.arms(cfg.backbones), images, labels, device)
    work = work_for(cfg, FER2013_TRAIN_ROWS, FER2013_TEST_ROWS, speeds)
    dtype = str(autocast_dtype(cfg.amp, device) or torch.float32).removeprefix("torch.")
    print(f"{what} with preset {preset} on the full FER2013 files ({FER2013_TRAIN_ROWS:,} train, "
          f"{FER2013_TEST_ROWS:,} test rows), on {machine_name()}, {dtype}; speeds: {how}")
    for backbone, speed in speeds.items():
        print(f"  {backbone}: {work.epoch_seconds(backbone):.1f} s an epoch, {work.predict_seconds(backbone):.0f} s "
              f"of TTA a unit ({1 / speed.train:,.0f} training images/s)")
    return cfg, work, table


def bench_keeper(preset, device_choice, amp, budgets, factor, window_seconds, jitter=0.0):
    """The keeper on a simulated machine at this machine's speeds: each budget with a competitor from several
    moments (bench/keeper.py)."""
    cfg, work, table = _fer2013_work_here(preset, device_choice, amp, "the keeper against a competitor")
    for minutes in budgets:
        keeper.print_sweep(cfg, work, table, minutes, factor, window_seconds, jitter=jitter)


def bench_budget(preset, device_choice, amp="auto"):
    """What each budget buys on this machine: the plan and its predicted OOF for FER2013's full files."""
    cfg, work, table = _fer2013_work_here(preset, device_choice, amp, "what a budget buys")
    for minutes, plan in curve(cfg, work, table):
        if isinstance(plan, str):
            print(f"{minutes:>4} min: {plan}")
            continue
        oof = f"{plan.oof:.3f}" if plan.oof is not None else "unknown"
        print(f"{minutes:>4} min: predicted OOF {oof}; {plan.folds or cfg.folds} folds, "
              + ", ".join(f"{plan.arm(b)} {e} epochs" for b, e in plan.epochs.items())
              + (", pseudo-labels" if plan.pseudo else "")
              + (f", TTA {plan.views} of {work.views} views" if plan.views else "")
              + f" ({(sum(plan.seconds.values())) / 60:.0f} min)", flush=True)


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


def _tree_memory(root):
    """(PSS, RSS) in bytes summed over `root` and its descendants (Linux /proc). PSS shares each page
    among the processes that map it, so it is the tree's real footprint; RSS counts shared pages twice."""
    pss = rss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += _children(pid)
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            continue  # the process ended between the listing and the read
    return pss, rss


def bench_tree(command, interval=0.5, share=0.01):
    """Run `command`; print its wall time and the peak memory of its whole process tree (sampled).

    Reading a large process's memory map takes the kernel tens of milliseconds, taken from the run being
    timed: sampled every 0.5 s, it cost 8% of a core beside the AVX2 hour (58 s in its first 12 minutes). So
    each sample waits at least `1 / share` times the CPU time the last one took (`interval` at the least).
    CPU time, not wall time: on a busy machine a sample's wall time stretches while its cost does not, and
    waiting on it would miss short peaks for nothing."""
    import subprocess
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak_pss = peak_rss = 0
    sampling = 0.0
    while process.poll() is None:
        begun = time.process_time()  # the kernel's reading of the maps counts as this process's system time
        pss, rss = _tree_memory(process.pid)
        took = time.process_time() - begun
        sampling += took
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(max(interval, took / share))
    wall = time.perf_counter() - started
    print(f"tree: exit status {process.returncode}, wall {wall:.0f} s ({wall / 60:.1f} min), peak memory of the "
          f"process tree {peak_pss / 2**30:.2f} GiB PSS ({peak_rss / 2**30:.2f} GiB RSS summed), "
          f"sampled every {interval} s or more ({sampling:.1f} s of sampling)", flush=True)
    return process.returncode


def add_arguments(parser):
    sub = parser.add_subparsers(dest="bench")
    train = sub.add_parser("train", help="training and inference speed per backbone (the default)")
    for target in (parser, train):
        target.add_argument("--preset", choices=sorted(PRESETS), help="default: full on CUDA, demo on a CPU")
        target.add_argument("--backbones", type=lambda text: tuple(text.split(",")))
        target.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        target.add_argument("--steps", type=int, help="timed training steps per backbone (default: 30 on "
                            "CUDA, 8 on a CPU)")
        target.add_argument("--train", default=str(inputs.DEMO_TRAIN), help="real rows to train on "
                            "(default: the bundled 2,400-row sample)")
        target.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
        target.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], help="default: the preset's "
                            "(off: float32, as on a CPU without native bf16)")
        target.add_argument("--repeats", type=int, default=3, help="time each real path this many times: "
                            "the row gives the median and the range (default 3)")
    recipe_parser = sub.add_parser("recipe", help="OOF effect of each recipe element, one fold, one backbone")
    recipe_parser.add_argument("train", help="a train CSV (label,feature or emotion,pixels)")
    recipe_parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    recipe_parser.add_argument("--backbone", default="fer_resnet_tiny")
    recipe_parser.add_argument("--epochs", type=int, default=8)
    recipe_parser.add_argument("--augment", choices=augment.AUGMENT_LEVELS, default="full")
    recipe_parser.add_argument("--rows", type=int, default=10_000, help="use the first ROWS rows")
    recipe_parser.add_argument("--fold", type=int, default=0)
    recipe_parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    recipe_parser.add_argument("--workdir", type=Path, default=Path("folds/recipe"),
                               help="where the units live (a re-run skips finished ones)")
    recipe_parser.add_argument("--set", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                               help="change the base (every variant) from the preset, e.g. --set batch_size=128")
    recipe_parser.add_argument("--variants", type=lambda text: text.split(","), default=list(RECIPE_VARIANTS),
                               help=f"comma-separated, from: {', '.join(RECIPE_VARIANTS)}")
    table = sub.add_parser("table", help="the budget planner's table: fold 0's OOF of each backbone at several "
                           "epochs, and of their blends (budget_table.json)")
    table.add_argument("train", help="a train CSV (the full FER2013 train file)")
    table.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    table.add_argument("--backbones", type=lambda text: tuple(text.split(",")), help="default: the preset's")
    table.add_argument("--epochs", type=lambda text: [int(e) for e in text.split(",")], default=[5, 10, 20, 40])
    table.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    table.add_argument("--workdir", type=Path, default=Path("folds/table"), help="where the units live (a re-run "
                       "skips finished ones)")
    table.add_argument("--out", type=Path, default=TABLE_FILE)
    table.add_argument("--recipe", default="", help="measure the arms BACKBONE:RECIPE: the preset's recipe with "
                       "the --set settings changed, which the planner weighs beside the preset's own")
    table.add_argument("--set", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                       help="with --recipe: a setting it changes (repeatable), e.g. augment=light")
    budget_parser = sub.add_parser("budget", help="what 15, 30, 60, 120 and 240 minutes buy on this machine: the "
                                   "plan and its predicted OOF, for the full FER2013 files")
    budget_parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    budget_parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    budget_parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                               help="off: float32, as on a CPU without native bf16 (most laptops)")
    keeper_parser = sub.add_parser("keeper", help="the budget's keeper through whole runs on a simulated machine "
                                   "at this machine's speeds, a competitor slowing it from several moments: each "
                                   "run's time as a share of its budget")
    keeper_parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    keeper_parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    keeper_parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    keeper_parser.add_argument("--budgets", type=lambda text: [float(m) for m in text.split(",")], default=[30, 60],
                               help="minutes, comma-separated (default 30,60)")
    keeper_parser.add_argument("--factor", type=float, default=3.5, help="how much slower the competitor makes the "
                               "machine (default 3.5: two competing processes on two cores, BENCHMARKS.md)")
    keeper_parser.add_argument("--seconds", type=float, default=120, help="how long it stays (default 120; 0: "
                               "to the end)")
    keeper_parser.add_argument("--jitter", type=float, default=0.0, help="each epoch up to this share faster or "
                               "slower at random, as on a shared machine (default 0; 0.04: 4%%)")
    tree = sub.add_parser("tree", help="run a command; print its wall time and its process tree's peak memory")
    tree.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    gpu = sub.add_parser("gpu", help="the GPU self-check (about 2 minutes): augmentation paths, syncs per step, a "
                         "stopped and resumed run of the fast recipe, speed and extrapolated preset times")
    gpu.add_argument("--train", default=str(inputs.DEMO_TRAIN), help="train CSV to take rows from (default: the "
                     "bundled 2,400-row sample)")
    gpu.add_argument("--rows", type=int, default=4000, help="rows for the checks and the short run")
    gpu.add_argument("--steps", type=int, default=30, help="timed training steps per backbone")
    gpu.add_argument("--backbones", type=lambda text: tuple(text.split(",")),
                     help="default: the fast and full presets' backbones")
    gpu.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: run the checks there, "
                     "small (for tests)")
    shift_parser = sub.add_parser("shift", help="the train/test shift check on the real files and shifted copies")
    shift_parser.add_argument("train", help="a train CSV")
    shift_parser.add_argument("test", help="a test CSV")
    chaos_parser = sub.add_parser("chaos", help="random kills and damaged files during a tiny run, each resumed: "
                                  "the final submission must equal an undisturbed run's")
    chaos_parser.add_argument("--trials", type=int, default=10)
    chaos_parser.add_argument("--stops", type=int, default=3, help="kills per trial before it runs to the end")
    chaos_parser.add_argument("--seed", type=int, default=0)
    augment_parser = sub.add_parser("augment", help="the train augmentation alone: albumentations image by image "
                                    "against the batched torch ops (gpu_augment), on the demo's faces")
    augment_parser.add_argument("--device", default="cpu")
    augment_parser.add_argument("--level", choices=augment.AUGMENT_LEVELS, default="full")
    detectors = sub.add_parser("detectors", help="face detectors on real photos and FER2013's faces: found, false, "
                               "framing, milliseconds a frame")
    detectors.add_argument("--rows", type=int, default=800, help="bundled train rows placed in pictures")
    video_parser = sub.add_parser("video", help="a 640x480 video end to end with the run's ensemble and student: "
                                  "frames per second")
    video_parser.add_argument("--workdir", "--run", dest="workdir", type=Path, default=None,
                              help="the finished run (default: folds or folds/demo, the one finished last)")
    video_parser.add_argument("--frames", type=int, default=300)
    parse = sub.add_parser("parse", help="CSV parsing speed")
    parse.add_argument("train", help="a label,feature train CSV (.csv, .gz or .xz)")
    parse.add_argument("--repeats", type=int, default=3)


def command(args):
    """`fer-kaggle bench [train|recipe|tree|parse]` (train when no word is given)."""
    if args.bench == "tree":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise FerKaggleError("bench tree: give the command to run after --")
        return bench_tree(command)
    if args.bench == "gpu":
        return run_selfcheck(args.train, args.device, args.rows, args.steps, args.backbones)
    if args.bench == "shift":
        bench_shift(args.train, args.test)
        return 0
    if args.bench == "parse":
        bench_parse(args.train, args.repeats)
        return 0
    if args.bench == "detectors":
        return serving.bench_detectors(args.rows)
    if args.bench == "video":
        return serving.bench_video(args.workdir or find_default_run(HOME)[0].path, args.frames)
    if args.bench == "augment":
        bench_augment(device=args.device, level=args.level)
        return 0
    if args.bench == "chaos":
        figures = chaos(args.trials, args.stops, args.seed)
        return 0 if figures["identical"] == figures["trials"] and not figures["tracebacks"] else 1
    if args.bench == "table":
        cfg = PRESETS[args.preset].replace(device=args.device, pseudo=False)
        if bool(args.recipe) != bool(args.set):
            raise FerKaggleError("bench table: --recipe NAME and its --set KEY=VALUE settings go together")
        bench_table(cfg.replace(backbones=args.backbones or cfg.backbones), args.train, args.epochs, args.workdir,
                    args.out, args.recipe, dict(args.set))
        return 0
    if args.bench == "budget":
        bench_budget(args.preset, args.device, args.amp)
        return 0
    if args.bench == "keeper":
        bench_keeper(args.preset, args.device, args.amp, args.budgets, args.factor, args.seconds or float("inf"),
                     args.jitter)
        return 0
    if args.bench == "recipe":
        cfg = PRESETS[args.preset].replace(backbones=(args.backbone,), epochs=args.epochs, device=args.device,
                                           augment=args.augment, pseudo=False).replace(**dict(args.set))
        bench_recipe(cfg, args.train, args.rows, args.fold, args.workdir, args.variants)
        return 0
    on_cuda = resolve_device(args.device).type == "cuda"
    cfg = PRESETS[args.preset or ("full" if on_cuda else "demo")].replace(device=args.device)
    if args.backbones:
        cfg = cfg.replace(backbones=args.backbones)
    if args.compile is not None:
        cfg = cfg.replace(compile=args.compile)
    if args.amp is not None:
        cfg = cfg.replace(amp=args.amp)
    if not on_cuda and args.compile is None:
        cfg = cfg.replace(compile=False)  # compiling on a 2-core CPU costs more than the few steps timed
    bench_train(cfg, args.train, args.steps or (30 if on_cuda else 8), args.repeats)
    return 0
