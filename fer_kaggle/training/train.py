"""Train one unit (round, backbone, fold) and save its probabilities; resume if interrupted.

Reads  the unit's train/valid/test arrays (from the pipeline).
Writes the unit's folder, atomically: its files and what each holds are in runfolder.py's layout.
"""
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fer_kaggle.training import augment, recipe
from fer_kaggle.core import runfolder
from fer_kaggle.models import tta
from fer_kaggle.core.atomic import atomic_path, read_json, save_csv, save_npz, write_json
from fer_kaggle.core.config import STUDENT, UNIT, fields_with
from fer_kaggle.core.errors import FerKaggleError, TimeLimitReached
from fer_kaggle.training.gpu_augment import BatchAugment
from fer_kaggle.models.backbones import build_model, unit_config
from fer_kaggle.models.tta import predict_views


@dataclass(frozen=True)
class Unit:
    round: int
    backbone: str
    fold: int
    variant: str = ""  # an ablation ("no_normalize", "no_augment", "dnn"): kept out of the ensemble
    key: str = ""      # short hash of its settings (runfolder.unit_settings); "": a bare folder (tests, bench)

    @property
    def model(self):
        """The folder of this unit's model, e.g. `round0/fer_vgg_cpu-1a2b3c4d` (all its folds)."""
        return runfolder.model_folder(self.round, self.backbone, self.key, self.variant)

    @property
    def name(self):
        return f"{self.model}/{runfolder.fold_name(self.fold)}"

    def dir(self, workdir):
        return Path(workdir) / self.name

    def seed(self, base_seed, *more):
        """A seed for this unit (and e.g. an epoch), independent of the other units' seeds.

        An ablation shares its baseline's seeds: same initialisation, same batches.
        """
        key = [base_seed, self.round, zlib.crc32(self.backbone.encode()), self.fold, *more]
        return int(np.random.SeedSequence(key).generate_state(1)[0])


@dataclass
class UnitData:
    """The arrays one unit trains on and predicts."""
    train_images: np.ndarray
    train_labels: np.ndarray    # int (N,), or (N, 7) rows of probabilities (soft pseudo-labels)
    valid_rows: np.ndarray
    valid_images: np.ndarray
    valid_labels: np.ndarray
    test_ids: np.ndarray
    test_images: np.ndarray


is_finished = runfolder.is_finished


def resolve_device(name):
    if name == "auto":
        return configure_backend(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name == "cuda" and not torch.cuda.is_available():
        raise FerKaggleError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")
    return configure_backend(torch.device(name))


def configure_backend(device):
    """On CUDA: let cuDNN time its convolution algorithms once per shape (our shapes are fixed, so the
    choice pays from the second step on). It makes a resumed unit match an unstopped one only up to
    rounding on a GPU (README, Resume); on a CPU nothing changes."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def autocast_dtype(amp, device):
    """The autocast dtype: bf16 where the device runs it natively (CUDA from Ampere on; CPUs with AVX-512 BF16
    or AMX, about 4x there), fp16 on a CUDA GPU without bf16 (P100, T4: with a gradient scaler, Step),
    None (float32) on other CPUs; `amp` "bf16", "fp16" or "off" insists."""
    if amp == "off":
        return None
    if amp in AMP_DTYPES:
        return AMP_DTYPES[amp]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None



def synchronize(device):
    """Wait for the device's queued work (timings on CUDA; nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_NAMES = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}  # as unit keys name them


def _optimizer(cfg, model):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise FerKaggleError(f"unknown optimizer '{cfg.optimizer}'; choose sgd or adamw")


BARE_UNIT_FIELDS = fields_with(UNIT, STUDENT)  # what a bare unit (no key) found on disk must match


def _check_config(unit, unit_dir, settings):
    """Refuse a unit folder started or finished with other settings than `settings`.

    A keyed unit's folder name already stands for its settings (the pipeline trains changed settings
    beside it); this catches a bare folder (tests, bench recipe) reused with other options.
    """
    path = unit_dir / runfolder.CONFIG_FILE
    if not path.exists():
        return
    saved = read_json(path, remedy=runfolder.RERUN)
    fields = ("unit_key",) if settings["unit_key"] else BARE_UNIT_FIELDS
    changed = [k for k in fields if saved.get(k) != settings.get(k)]
    if settings["unit_key"] and not changed:
        _check_pseudo_rows(unit, unit_dir, saved, (settings["key_settings"] or {}).get("pseudo_rows"))
    if changed:
        was = ", ".join(f"{k}={saved.get(k)} (now {settings.get(k)})" for k in changed)
        raise FerKaggleError(f"{unit.name} was trained with {was}; use the same options, another "
                             f"--workdir, or delete {unit_dir} to retrain it")


def _check_pseudo_rows(unit, unit_dir, saved, rows):
    """A student's key names its teachers, not their table: refuse one that learned other rows than they
    give now. Only a teacher deleted and retrained, not bit-identically (as on a GPU), can cause it."""
    learned = (saved.get("key_settings") or {}).get("pseudo_rows")
    if learned != rows:
        raise FerKaggleError(f"{unit.name} learned from other pseudo-labels (rows {learned}) than its teachers "
                             f"give now (rows {rows}): a teacher was retrained; delete {unit_dir} to retrain it")


def check_finished_student(unit, workdir, rows):
    """Before a finished student is blended: did it learn the rows (pseudo.table_hash) its teachers give now?"""
    unit_dir = unit.dir(workdir)
    _check_pseudo_rows(unit, unit_dir, read_json(unit_dir / runfolder.CONFIG_FILE, remedy=runfolder.RERUN), rows)


def _save_pipeline(pipeline, path):
    with atomic_path(path) as tmp:
        A.save(pipeline, str(tmp), data_format="json")


def loader_workers(cfg, device):
    if cfg.workers >= 0:
        return cfg.workers
    return 0 if device.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))


BATCH_BARS = True  # a per-batch progress bar on a terminal; off in a pool's workers (executor.py)
MONITOR_SEED_KEY = 1_000_000  # beside the epoch numbers in a unit's seeds: the per-epoch check's own draw


def _one_cv2_thread(_):
    """In a DataLoader worker: OpenCV's own thread pool would fight the other workers for the cores."""
    import cv2
    cv2.setNumThreads(0)


class HostBatches:
    """One epoch's augmented batches from albumentations in DataLoader workers (CPU side)."""

    def __init__(self, cfg, images, targets, pipeline, device):
        dataset = augment.FaceDataset(images, targets, pipeline)
        self.sampler = augment.EpochSampler(len(dataset), cfg.batch_size)
        workers = loader_workers(cfg, device)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=len(dataset) > cfg.batch_size,
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            worker_init_fn=_one_cv2_thread if workers else None)

    def set_epoch_seed(self, seed):
        self.sampler.set_epoch_seed(seed)

    def __iter__(self):
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


class DeviceBatches:
    """One epoch's batches augmented on the device, all images at once per batch.

    The train set lives on the device as uint8 (66 MB for FER2013) and gpu_augment applies the
    albumentations pipeline's own transforms and parameters, drawing each image's from one seeded
    generator per batch: the same batches after a resume, and no CPU workers to wait for.
    """

    def __init__(self, cfg, images, targets, pipeline, device):
        self.images = torch.as_tensor(images).to(device)
        self.targets = torch.as_tensor(targets).to(device)
        self.augment = BatchAugment.from_pipeline(pipeline, images.shape[-1])
        self.sampler = augment.EpochSampler(len(images), cfg.batch_size)  # the host path's order and seeds
        self.batch_size, self.device = cfg.batch_size, device
        self.generator = torch.Generator(device=device)
        self.count = len(images) // self.batch_size if len(images) > self.batch_size else 1  # drop_last

    def set_epoch_seed(self, seed):
        self.sampler.set_epoch_seed(seed)

    def __iter__(self):
        rows, seeds = (np.asarray(column) for column in zip(*self.sampler))
        order = torch.as_tensor(rows, device=self.device)
        for start in range(0, self.count * self.batch_size, self.batch_size):
            self.generator.manual_seed(int(seeds[start]))
            batch = order[start:start + self.batch_size]
            yield self.augment(self.images[batch], self.generator), self.targets[batch]

    def __len__(self):
        return self.count


def augment_on(cfg, device):
    """Where the training augmentation runs: 'device' (batched, gpu_augment) or 'host' (albumentations)."""
    if cfg.augment_on == "auto":
        return "device" if device.type == "cuda" else "host"
    return cfg.augment_on


def make_batches(cfg, images, targets, pipeline, device):
    """The training batches of a unit: an iterable of (images, targets) with set_epoch_seed and len."""
    if augment_on(cfg, device) == "device":
        return DeviceBatches(cfg, images, targets, pipeline, device)
    return HostBatches(cfg, images, targets, pipeline, device)


def train_unit(cfg, unit, workdir, data, device, deadline=None, key_settings=None, pace=None):
    """Train `unit` to the end (resuming from its checkpoint), predict, save; returns its metrics.

    `key_settings`: what the unit's key stands for (runfolder.unit_settings), kept in its config.json.

    `deadline` (time.monotonic() seconds): stop after the first epoch that ends past it; every call
    trains at least one epoch, so a run repeated with a short --time-limit always moves on.

    `pace` (a budgeted run: budget.Keeper): says how many epochs the unit gets when it starts, and after
    each epoch may move its end; the LR schedule is then refitted to reach 0 at the new last epoch.
    """
    unit_dir = unit.dir(workdir)
    cfg = unit_config(cfg, unit.backbone)
    settings = {**cfg.to_dict(), "round": unit.round, "backbone": unit.backbone, "fold": unit.fold,
                "unit_key": unit.key, "key_settings": key_settings, "train_rows": len(data.train_images),
                "device": str(device)}
    _check_config(unit, unit_dir, settings)  # first: a finished unit of other settings is never handed back
    if is_finished(unit_dir):
        return runfolder.read_metrics(unit_dir, remedy=runfolder.RERUN)
    unit_dir.mkdir(parents=True, exist_ok=True)
    mean, std = augment.normalize_stats(data.train_images, cfg.normalize)
    train_pipe = augment.train_pipeline(mean, std, cfg.augment, cfg.image_size, cfg.crop, cfg.erase)
    eval_pipe = augment.eval_pipeline(mean, std, cfg.image_size)
    write_json(unit_dir / runfolder.CONFIG_FILE, {**settings, "mean": mean, "std": std})
    _save_pipeline(train_pipe, unit_dir / runfolder.TRAIN_PIPELINE_FILE)
    _save_pipeline(eval_pipe, unit_dir / runfolder.EVAL_PIPELINE_FILE)

    state = runfolder.load_checkpoint(unit_dir, device)
    # the epochs it trains: a resumed unit keeps its own (a budget may have moved them); a new one asks the pace
    planned = state.get("planned_epochs", cfg.epochs) if state else cfg.epochs
    if pace is not None:
        planned = pace.start(unit, planned, done=state["epoch"] if state else 0)
    cfg = cfg.replace(epochs=planned)
    train_targets = recipe.targets(data.train_labels)
    loader = make_batches(cfg, data.train_images, train_targets, train_pipe, device)
    torch.manual_seed(unit.seed(cfg.seed))
    step = make_step(cfg, unit.backbone, device, len(loader), train_targets.argmax(1))
    model, optimizer, scheduler, ema, amp_dtype = step.model, step.optimizer, step.scheduler, step.ema, step.amp_dtype

    history, epoch = [], 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if step.scaler is not None and "scaler" in state:
            step.scaler.load_state_dict(state["scaler"])
        history, epoch = state["history"], state["epoch"]

    valid_x = augment.to_tensor(data.valid_images, eval_pipe)
    valid_y = torch.as_tensor(data.valid_labels)
    watch = monitor_rows(len(valid_y), cfg.monitor_rows, unit.seed(cfg.seed, MONITOR_SEED_KEY))
    while epoch < planned:
        started = time.perf_counter()
        epoch_seed = unit.seed(cfg.seed, epoch)
        torch.manual_seed(epoch_seed)  # dropout, mixup
        np.random.seed(epoch_seed % 2**32)  # timm's cutmix box draws from numpy's global RNG
        loader.set_epoch_seed(epoch_seed)
        train_loss, train_acc = _train_epoch(step, loader, desc=f"{unit.name} epoch {epoch + 1}/{planned}",
                                             unit=unit)
        valid_probs = predict_views(step.eval_model(), valid_x[watch], "none", device, amp_dtype=amp_dtype,
                                    crop=cfg.crop)[0]
        epoch += 1
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": train_loss, "train_acc": train_acc,
               "valid_loss": _nll(valid_probs, valid_y[watch]), "valid_acc": _accuracy(valid_probs, valid_y[watch]),
               "valid_rows": len(watch), "seconds": time.perf_counter() - started}
        history.append(row)
        line = (f"{unit.name} epoch {epoch}/{planned}: train loss {train_loss:.3f} acc {train_acc:.3f} | "
                f"valid loss {row['valid_loss']:.3f} acc {row['valid_acc']:.3f}")
        if pace is not None:  # after the last epoch too: the speed it measured sizes what comes next
            planned, line = _repace(pace, unit, step, epoch, planned, history, len(loader), line)
        stopping = deadline is not None and time.monotonic() > deadline and epoch < planned
        if stopping or epoch % cfg.checkpoint_every == 0 or epoch == planned:
            # up to ~135 MB with an EMA on a GPU preset: every few epochs there (--checkpoint-every)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch, "planned_epochs": planned,
                     "history": history, "backbone": unit.backbone, "mean": mean, "std": std, "crop": cfg.crop}
            if ema is not None:
                state["ema"] = ema.state_dict()
            if step.scaler is not None:
                state["scaler"] = step.scaler.state_dict()
            runfolder.save_checkpoint(unit_dir, state)
        save_csv(unit_dir / runfolder.HISTORY_FILE, pd.DataFrame(history))
        tqdm.write(line)
        if stopping:
            raise TimeLimitReached(f"{unit.name}: stopped after epoch {epoch} of {planned}")

    # a budgeted unit predicts with fewer TTA views where its plan chose them or it is behind its time (never
    # fewer than the plain image and its flip)
    count = every = len(tta.views(cfg.tta, cfg.crop))
    if pace is not None and (count := pace.views(unit, every)) < every:
        tqdm.write(f"{unit.name}: {count} TTA views instead of {every}, as the budget plans or to keep to it")
    return _predict_and_save(cfg, unit, unit_dir, step.eval_model(), valid_x, valid_y, data, eval_pipe, device,
                             amp_dtype, history, count)


def _repace(pace, unit, step, epoch, planned, history, steps_per_epoch, line):
    """After an epoch of a budgeted unit: (the epochs the pace now gives it, the epoch's line), its LR
    refitted to reach 0 at the new last epoch."""
    wanted = pace.after_epoch(unit, epoch, planned, [row["seconds"] for row in history])
    if epoch >= planned:
        return planned, line  # its last: it told the pace how fast it went, nothing to refit
    wanted = max(epoch + 1, wanted)
    if wanted == planned or not recipe.refit_schedule(step.scheduler, wanted * steps_per_epoch):
        return planned, line
    return wanted, (f"{line}\n{unit.name}: {wanted} epochs instead of {planned}, to keep to the budget; its "
                    f"learning rate now decays to 0 at epoch {wanted}")


@dataclass
class Step:
    """One optimisation step of the recipe: mix, forward in autocast, weighted soft loss, step, EMA."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    ema: object
    weights: torch.Tensor
    cfg: object
    device: torch.device
    amp_dtype: torch.dtype
    forward: object = None  # torch.compile(model) with --compile; it shares the model's weights
    scaler: object = None   # fp16: torch's gradient scaler (fp16 gradients underflow without it)

    def __call__(self, images, batch_targets):
        cfg = self.cfg
        images, mixed = recipe.mix_batch(images, batch_targets, cfg.mixup, cfg.cutmix, cfg.mix_prob)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            network = self.model if self.forward is None else self.forward  # a compiled module has no truth value
            logits = network(images.contiguous(memory_format=torch.channels_last))
        loss = recipe.loss(logits, mixed, cfg.label_smoothing, self.weights)
        # No finiteness check here: it would make the host wait for the device every step. EpochStats
        # records a non-finite loss on the device; the epoch then ends in an error before its checkpoint,
        # so no update made from it is ever saved.
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:  # skips the step (and lowers the scale) when a gradient overflowed
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=self.scheduler.last_epoch)
        return loss, logits

    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model


def make_step(cfg, backbone, device, steps_per_epoch, hard_labels):
    """A fresh model (from torch's current seed) with its optimizer, schedule, EMA and loss weights."""
    cfg = unit_config(cfg, backbone)
    model = build_model(backbone, device)
    optimizer = _optimizer(cfg, model)
    ema = recipe.make_ema(model, cfg.ema)
    weights = recipe.class_weights(hard_labels, cfg.class_balance) if cfg.class_balance else None
    scheduler = recipe.make_scheduler(cfg.schedule, optimizer, cfg.epochs, steps_per_epoch, cfg.warmup_epochs,
                                      cfg.lr)
    forward = torch.compile(model) if cfg.compile else None
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return Step(model, optimizer, scheduler, ema, weights, cfg, device, amp_dtype, forward, scaler)


class EpochStats:
    """An epoch's running loss, accuracy and first non-finite step, kept on the device: the host reads them
    once, at the epoch's end (and every POSTFIX_EVERY steps for a progress bar on a terminal)."""

    def __init__(self, device):
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.seen = 0

    def add(self, number, loss, logits, targets):
        loss = loss.detach()
        bad = ~torch.isfinite(loss)
        self.first_bad = torch.where(bad & (self.first_bad < 0), number, self.first_bad)
        self.loss_sum += loss.double() * len(targets)
        self.correct += (logits.argmax(-1) == targets.argmax(-1)).sum()
        self.seen += len(targets)

    def means(self):
        return float(self.loss_sum) / self.seen, int(self.correct) / self.seen


POSTFIX_EVERY = 50  # steps between the progress bar's loss/accuracy (each update waits for the device)


def _train_epoch(step, loader, desc, unit):
    step.model.train()
    stats = EpochStats(step.device)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=None if BATCH_BARS else True)  # None: off when not a terminal
    for number, (images, batch_targets) in enumerate(bar):
        images = images.to(step.device, non_blocking=True)
        batch_targets = batch_targets.to(step.device, non_blocking=True)
        loss, logits = step(images, batch_targets)
        stats.add(number, loss, logits, batch_targets)
        if not bar.disable and number % POSTFIX_EVERY == POSTFIX_EVERY - 1:
            loss_mean, acc = stats.means()
            bar.set_postfix(loss=f"{loss_mean:.3f}", acc=f"{acc:.3f}")
    first_bad = int(stats.first_bad)
    if first_bad >= 0:
        raise FerKaggleError(f"{unit.name}: the training loss became non-finite at {desc}, step {first_bad + 1}; "
                             f"nothing from this epoch was saved: lower --lr and run again")
    return stats.means()


def monitor_rows(n_valid, wanted, seed):
    """The held-out rows checked after each epoch: all of them, or a fixed seeded sample of `wanted`.

    The per-epoch check only draws the training curves (the unit's OOF predictions are made once,
    at the end, on every row); on a CPU, a 2,000-row sample saves about a tenth of each epoch.
    """
    if not wanted or wanted >= n_valid:
        return torch.arange(n_valid)
    return torch.as_tensor(np.sort(np.random.default_rng(seed).choice(n_valid, wanted, replace=False)))


def _nll(probs, labels):
    return float(-probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean())


def _accuracy(probs, labels):
    return float((probs.argmax(-1) == labels).float().mean())


def _accuracy_by_views(cfg, view_logits, labels):
    """{k: OOF accuracy with the first k of the views predicted (in tta.views' order for k)}: what fewer TTA
    views would have given, at no cost; bench table hands it to the planner, which weighs views against epochs."""
    predicted = tta.views(cfg.tta, cfg.crop, len(view_logits))
    return {str(k): _accuracy(tta.average(view_logits[[predicted.index(v) for v in tta.views(cfg.tta, cfg.crop, k)]],
                                          "prob"), labels)
            for k in range(1, len(predicted) + 1)}


def _predict_and_save(cfg, unit, unit_dir, model, valid_x, valid_y, data, eval_pipe, device, amp_dtype,
                      history, count=None):
    oof_views = predict_views(model, valid_x, cfg.tta, device, amp_dtype=amp_dtype, crop=cfg.crop, logits=True,
                              count=count)
    test_views = predict_views(model, augment.to_tensor(data.test_images, eval_pipe), cfg.tta, device,
                               amp_dtype=amp_dtype, crop=cfg.crop, logits=True, count=count)
    oof, oof_logit = tta.average(oof_views, "prob"), tta.average(oof_views, "logit")
    oof_plain = oof_views[0].softmax(-1)
    save_npz(unit_dir / runfolder.OOF_FILE, rows=data.valid_rows, probs=oof.numpy(), probs_logit=oof_logit.numpy(),
             probs_plain=oof_plain.numpy())
    save_npz(unit_dir / runfolder.TEST_FILE, ids=data.test_ids, probs=tta.average(test_views, "prob").numpy(),
             probs_logit=tta.average(test_views, "logit").numpy(), probs_plain=test_views[0].softmax(-1).numpy())
    metrics = {"unit": unit.name, "valid_acc": _accuracy(oof, valid_y),
               "valid_acc_logit": _accuracy(oof_logit, valid_y),
               "valid_acc_plain": _accuracy(oof_plain, valid_y), "tta": cfg.tta, "tta_views": len(oof_views),
               "valid_acc_views": _accuracy_by_views(cfg, oof_views, valid_y),
               "epochs": len(history), "train_seconds": sum(row["seconds"] for row in history),
               "train_rows": len(data.train_images), "valid_rows": len(data.valid_rows)}
    write_json(unit_dir / runfolder.FINISHED_FILE, metrics)
    return metrics
