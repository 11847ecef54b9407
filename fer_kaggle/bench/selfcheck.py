"""The GPU self-check, `fer-kaggle bench gpu`: about two minutes on one GPU, before a run's first minutes.

    augmentation  the device path (gpu_augment) against albumentations on the host: mean and std of the
                  same faces augmented both ways (full augmentation, the fast preset's crop)
    syncs         host-device synchronisations in steady training steps (torch.cuda.set_sync_debug_mode)
    run           a 2-fold x 2-epoch run of the fast preset's recipe (compile, bf16 where native, EMA,
                  ten-crop TTA) on the first ROWS train rows, stopped by --time-limit after an epoch, resumed
    speed         `bench train`'s table for the fast and full presets' backbones, and each preset's
                  training time extrapolated to the full train file

Without CUDA it says so and exits 2; `--device cpu` runs the same checks on a CPU, small (for tests).
"""
import tempfile
import time
import warnings
from pathlib import Path

import torch

from fer_kaggle.training import augment, recipe
from fer_kaggle.bench.speed import FER2013_TEST_ROWS, FER2013_TRAIN_ROWS, bench_train
from fer_kaggle.core.config import PRESETS
from fer_kaggle.data.competition import read_train
from fer_kaggle.core.errors import FerKaggleError, TimeLimitReached
from fer_kaggle.data.inputs import DEMO_TEST
from fer_kaggle.training.train import DeviceBatches, EpochStats, HostBatches, make_step, resolve_device

def check_augmentation(images, labels, device, rows=2048):
    """(host mean, host std, device mean, device std) of the same faces through both augmentation paths."""
    cfg = PRESETS["fast"].replace(workers=0)
    images, targets = images[:rows], recipe.targets(labels[:rows])
    mean, std = augment.normalize_stats(images)
    pipeline = augment.train_pipeline(mean, std, "full", cfg.image_size, cfg.crop, cfg.erase)
    figures = []
    for batches in (HostBatches(cfg.replace(batch_size=len(images)), images, targets, pipeline, torch.device("cpu")),
                    DeviceBatches(cfg.replace(batch_size=len(images)), images, targets, pipeline, device)):
        batches.set_epoch_seed(cfg.seed)
        x = next(iter(batches))[0].float().cpu()
        figures += [float(x.mean()), float(x.std())]
    return tuple(figures)


def count_syncs(images, labels, device, backbone, steps=5):
    """Host-device synchronisations during `steps` steady training steps (after 3 warm-up steps); None on a CPU."""
    if device.type != "cuda":
        return None
    cfg = PRESETS["fast"].replace(compile=False)
    targets = recipe.targets(labels)
    mean, std = augment.normalize_stats(images)
    pipeline = augment.train_pipeline(mean, std, "full", cfg.image_size, cfg.crop, cfg.erase)
    batches = DeviceBatches(cfg, images, targets, pipeline, device)
    batches.set_epoch_seed(cfg.seed)
    step = make_step(cfg, backbone, device, len(batches), labels)
    stats, batch = EpochStats(device), iter(batches)
    for _ in range(3):  # warm-up: cuDNN's algorithm choice, the allocator
        step(*next(batch))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            for number in range(steps):
                x, y = next(batch)
                loss, logits = step(x, y)
                stats.add(number, loss, logits, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in recorded)


def _write_rows(images, labels, path):
    with open(path, "w") as f:
        f.write("label,feature\n")
        for label, face in zip(labels, images):
            f.write(f"{label},{' '.join(map(str, face.ravel()))}\n")


def check_run(images, labels, device, backbones, workdir):
    """A 2-fold x 2-epoch run of the fast preset's recipe, stopped after its first epoch, then resumed:
    (seconds, ensemble OOF accuracy, submission rows)."""
    from fer_kaggle.data import inputs
    from fer_kaggle.run import pipeline
    train_csv = Path(workdir) / "train.csv"
    _write_rows(images, labels, train_csv)
    cfg = PRESETS["fast"].replace(folds=2, epochs=2, pseudo=False, backbones=tuple(backbones), device=device.type,
                                  compile=device.type == "cuda")
    source, out = inputs.resolve([train_csv, DEMO_TEST]), Path(workdir) / "out.csv"
    started = time.perf_counter()
    try:
        pipeline.run(cfg.replace(time_limit=1e-4), source, out, Path(workdir) / "run", Path(workdir) / "subs")
        raise FerKaggleError("bench gpu: the run was not stopped by --time-limit")
    except TimeLimitReached:
        pass
    summary, _ = pipeline.run(cfg, source, out, Path(workdir) / "run", Path(workdir) / "subs")
    rows = sum(1 for _ in open(out)) - 1
    return time.perf_counter() - started, summary["blends"][summary["kept"]]["oof_acc"], rows


def extrapolate_minutes(cfg, speeds):
    """Training minutes of preset `cfg` on the full train file from measured images/s per backbone (TTA
    prediction of the held-out and test faces added; compilation and parsing not)."""
    rows_per_unit = FER2013_TRAIN_ROWS * (cfg.folds - 1) / cfg.folds
    views = 10 if cfg.tta == "ten_crop" else 2
    seconds = 0.0
    for backbone in cfg.backbones:
        train = cfg.folds * cfg.epochs * rows_per_unit / speeds[backbone]["train"]
        predict = cfg.folds * views * (FER2013_TRAIN_ROWS / cfg.folds + FER2013_TEST_ROWS) / speeds[backbone]["infer"]
        seconds += (train + predict) * (2 if cfg.pseudo else 1)
    return seconds / 60


def run_selfcheck(train_path, device_name="cuda", rows=4000, steps=30, backbones=None):
    """Print each check's figures; returns 0, or raises FerKaggleError when one fails."""
    if device_name == "cuda" and not torch.cuda.is_available():
        raise FerKaggleError("bench gpu needs a CUDA device, and torch sees none here; `--device cpu` runs its "
                             "checks on the CPU, small, to test them")
    device = resolve_device(device_name)
    started = time.perf_counter()
    images, labels = read_train(train_path)
    images, labels = images[:rows], labels[:rows]
    fast, full = PRESETS["fast"], PRESETS["full"]
    backbones = tuple(backbones or dict.fromkeys(fast.backbones + full.backbones))
    print(f"GPU self-check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'the CPU'}, "
          f"torch {torch.__version__}, {len(labels)} rows of {train_path}", flush=True)

    host_mean, host_std, device_mean, device_std = check_augmentation(images, labels, device)
    agree = abs(host_mean - device_mean) < 0.05 and abs(device_std / host_std - 1) < 0.05
    print(f"augmentation: host mean {host_mean:.3f} std {host_std:.3f}, device mean {device_mean:.3f} std "
          f"{device_std:.3f}: {'agree' if agree else 'DIFFER'}", flush=True)
    syncs = count_syncs(images, labels, device, backbones[0])
    print("syncs: n/a on a CPU" if syncs is None else f"syncs: {syncs} in 5 steady training steps of {backbones[0]}"
          + ("" if not syncs else " (should be 0)"), flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        seconds, oof, submitted = check_run(images, labels, device, backbones[:2], workdir)
    print(f"run: 2 folds x 2 epochs of the fast recipe on {len(labels)} rows, stopped and resumed, in "
          f"{seconds:.0f} s: OOF {oof:.4f}, {submitted} submission rows", flush=True)
    speeds = bench_train(fast.replace(backbones=backbones, device=device.type, compile=device.type == "cuda"),
                         train_path, steps)
    for cfg in (fast, full):
        known = all(b in speeds for b in cfg.backbones)
        estimate = f"{extrapolate_minutes(cfg, speeds):.1f} min" if known else "n/a (not all its backbones timed)"
        print(f"extrapolated: preset {cfg.preset} trains and predicts in {estimate} (compilation, parsing "
              f"and the ensemble not included)", flush=True)
    print(f"self-check: {time.perf_counter() - started:.0f} s", flush=True)
    if not agree or syncs:
        raise FerKaggleError("bench gpu: a check failed (see above)")
    return 0
