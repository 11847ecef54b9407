"""Training and inference speed of each backbone on this machine, against a matmul's peak.

    python -m fer_kaggle.bench [train] [--preset full|fast|demo] [--backbones A,B] [--device auto]

For each backbone: training images/s with the real data pipeline (the preset's augmentation, batches and
recipe on real rows), both with albumentations in DataLoader workers and batched on the device, and with
synthetic batches already on the device, the best real figure's ratio to it (below 1: the model waits for
data), inference images/s with the preset's TTA, the time of one epoch of the full FER2013 train set (28,709
rows) on one fold split, and the GFLOP/s reached as a share of a large matmul's.
"""
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from fer_kaggle.data.competition import read_train
from fer_kaggle.data.inputs import DEMO_TRAIN
from fer_kaggle.models.tta import predict_views, views
from fer_kaggle.training import augment, recipe
from fer_kaggle.training.gpu_augment import BatchAugment
from fer_kaggle.training.train import (autocast_dtype, loader_workers, make_batches, make_step, resolve_device,
                                       synchronize)

FER2013_TRAIN_ROWS, FER2013_TEST_ROWS = 28_709, 7_178


def median_seconds(function, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), max(times), result


def _timed_steps(step, batches, count, device):
    """Images/s over `count` training steps, after two warm-up steps (compilation, allocator, workers)."""
    seen, started = 0, None
    for number, (images, targets) in enumerate(batches):
        if number == 2:
            synchronize(device)
            started, seen = time.perf_counter(), 0
        step(images.to(device, non_blocking=True), targets.to(device, non_blocking=True))
        seen += len(images)
        if number == count + 1:
            break
    synchronize(device)
    return seen / (time.perf_counter() - started)


def _endless(batches, seed=0):
    while True:
        batches.set_epoch_seed(seed)
        yield from batches
        seed += 1


def training_flops_per_image(step, side):
    """FLOPs of one training step (forward and backward, as torch's FlopCounterMode counts them), per image."""
    images = torch.randn(2, 1, side, side, device=step.device).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.autocast(step.device.type, dtype=step.amp_dtype,
                                                                   enabled=step.amp_dtype is not None):
        step.model(images).float().sum().backward()
    step.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(images)


def peak_gflops(device, dtype, side=2048, repeats=5):
    """GFLOP/s of a large square matmul in the training dtype on `device`: this machine's practical limit."""
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    torch.mm(a, b)  # untimed: kernel selection
    synchronize(device)
    median, *_ = median_seconds(lambda: (torch.mm(a, b), synchronize(device)), repeats)
    return 2 * side ** 3 / median / 1e9


def bench_backbone(cfg, backbone, images, labels, device, steps, repeats=1):
    """({augmentation path: [real images/s of each of `repeats` timings]}, synthetic images/s, inference
    images/s, training FLOPs per image) of one backbone."""
    targets = recipe.targets(labels)
    mean, std = augment.normalize_stats(images)
    pipeline = augment.train_pipeline(mean, std, cfg.augment, cfg.image_size, cfg.crop, cfg.erase)
    torch.manual_seed(cfg.seed)
    step = make_step(cfg, backbone, device, len(images) // cfg.batch_size, labels)
    side = cfg.crop or cfg.image_size
    flops = training_flops_per_image(step, side)
    fake = (torch.randn(cfg.batch_size, 1, side, side, device=device),
            torch.as_tensor(targets[:cfg.batch_size], device=device))
    _timed_steps(step, iter(lambda: fake, None), 2, device)  # kernel selection and compilation, untimed
    real = {}
    for where in ("host", "device"):
        batches = make_batches(cfg.replace(augment_on=where), images, targets, pipeline, device)
        stream = _endless(batches)
        real[where] = [_timed_steps(step, stream, steps, device) for _ in range(repeats)]
    synthetic = _timed_steps(step, iter(lambda: fake, None), steps, device)
    eval_images = augment.to_tensor(images[:steps * cfg.batch_size], augment.eval_pipeline(mean, std, cfg.image_size))
    for _ in range(2):  # the second pass is timed: the first pays for kernel selection at these shapes
        synchronize(device)
        started = time.perf_counter()
        predict_views(step.model, eval_images, cfg.tta, device, amp_dtype=step.amp_dtype, crop=cfg.crop)
        synchronize(device)
    return real, synthetic, len(eval_images) / (time.perf_counter() - started), flops


def bench_train(cfg, train_path, steps, repeats=1):
    """Each backbone's row; with `repeats` > 1 each real path is timed that many times and the row gives the
    median and the range (two cores shared with other work can differ by 1.5x from one timing to the next)."""
    device = resolve_device(cfg.device)
    images, labels = read_train(train_path)
    n_views = len(views(cfg.tta, cfg.crop))
    epoch_rows = FER2013_TRAIN_ROWS * (cfg.folds - 1) / cfg.folds
    workers = loader_workers(cfg, device)
    dtype = autocast_dtype(cfg.amp, device) or torch.float32
    peak = peak_gflops(device, dtype)
    print(f"train speed, preset {cfg.preset} on {device_name(device)}: batch {cfg.batch_size}, {steps} timed steps, "
          f"augment {cfg.augment}, crop {cfg.crop or 'off'}, compile {cfg.compile}, amp {cfg.amp}; "
          f"real rows from {train_path}")
    print(f"training images/s with the real pipeline: albumentations in {workers} DataLoader workers (host), "
          f"or batched on the device (device); synthetic: random batches already on the device")
    print(f"peak: a 2048x2048 {str(dtype).removeprefix('torch.')} matmul runs at {peak:,.0f} GFLOP/s here; "
          f"GFLOP/s is training FLOPs per image times the best real images/s")
    print(f"real paths timed {repeats} time(s) each: the median, and the range of the share of the peak")
    print(f"{'backbone':<18} {'host':>9} {'device':>9} {'synthetic':>10} {'best/synth':>10} "
          f"{'infer img/s':>12} {'TTA views':>9} {'epoch s':>8} {'MFLOP/img':>10} {'GFLOP/s':>8} {'of peak':>8} "
          f"{'range':>10}")
    speeds = {}
    for backbone in cfg.backbones:
        timings, synthetic, infer, flops = bench_backbone(cfg, backbone, images, labels, device, steps, repeats)
        real = {where: statistics.median(rates) for where, rates in timings.items()}
        path = max(real, key=real.get)
        best = real[path]
        achieved = flops * best / 1e9
        low, high = (flops * rate / 1e9 / peak for rate in (min(timings[path]), max(timings[path])))
        print(f"{backbone:<18} {real['host']:>9,.0f} {real['device']:>9,.0f} {synthetic:>10,.0f} "
              f"{best / synthetic:>10.2f} {infer:>12,.0f} {n_views:>9} {epoch_rows / best:>8.1f} "
              f"{flops / 1e6:>10,.0f} {achieved:>8,.0f} {achieved / peak:>8.2f} {low:>5.2f}-{high:.2f}", flush=True)
        speeds[backbone] = {"train": best, "infer": infer}
    return speeds


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def bench_augment(n=8192, batch=512, device="cpu", level="full"):
    """Print images/s of albumentations (one process, image by image, as a DataLoader worker does)
    and of the batched path on `device`, on the demo sample's faces tiled to `n` images."""
    faces, _ = read_train(DEMO_TRAIN)
    images = np.resize(faces, (n, *faces.shape[1:]))
    pipeline = augment.train_pipeline(*augment.normalize_stats(faces), level)

    start = time.perf_counter()
    for image in images:
        pipeline(image=image)
    albu = n / (time.perf_counter() - start)

    device = torch.device(device)
    batched = BatchAugment.from_pipeline(pipeline)
    on_device = torch.from_numpy(images).to(device)
    g = torch.Generator(device).manual_seed(0)
    batched(on_device[:batch], g)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for first in range(0, n, batch):
        batched(on_device[first:first + batch], g)
    synchronize(device)
    fast = n / (time.perf_counter() - start)
    print(f"{level} augmentation, {n} images: albumentations {albu:,.0f} images/s (1 process); "
          f"batched on {device} (batch {batch}, {torch.get_num_threads()} threads) {fast:,.0f} images/s")
    return albu, fast
