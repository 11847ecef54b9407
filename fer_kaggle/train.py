"""Stage 4-5: train one unit (round, backbone, fold) and save its probabilities; resume if interrupted.

Reads  the unit's train/valid/test arrays (from the pipeline).
Writes `<workdir>/round<r>/<backbone>/fold<k>/` (ablations: `ablation/<variant>/<backbone>/fold<k>/`):
       config.json, train_pipeline.json, eval_pipeline.json  (what was run)
       checkpoint.pt   model, optimizer and scheduler after the last finished epoch
       history.csv     per-epoch train/valid loss and accuracy
       oof.npz         rows, probs (TTA), probs_plain: validation-fold probabilities
       test.npz        ids, probs (TTA), probs_plain: test probabilities
       metrics.json    written last: the unit is finished once it exists
"""
import json
import math
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import timm
import torch
from tqdm.auto import tqdm

from . import augment
from .atomic import atomic_path, save_csv, save_npz, save_torch, write_json
from .config import TRAINING_FIELDS
from .data import NUM_CLASSES
from .errors import FerKaggleError
from .tta import predict_views


@dataclass(frozen=True)
class Unit:
    round: int
    backbone: str
    fold: int
    variant: str = ""  # an ablation ("no_normalize", "no_augment", "dnn"): kept out of the ensemble

    @property
    def name(self):
        if self.variant:
            return f"ablation/{self.variant}/{self.backbone}/fold{self.fold}"
        return f"round{self.round}/{self.backbone}/fold{self.fold}"

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
    train_labels: np.ndarray
    valid_rows: np.ndarray
    valid_images: np.ndarray
    valid_labels: np.ndarray
    test_ids: np.ndarray
    test_images: np.ndarray


def is_finished(unit_dir):
    return (Path(unit_dir) / "metrics.json").exists()


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FerKaggleError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")
    return torch.device(name)


def build_model(backbone, device):
    try:
        model = timm.create_model(backbone, in_chans=1, num_classes=NUM_CLASSES)
    except RuntimeError as exc:
        raise FerKaggleError(f"backbone '{backbone}': {exc}; our own are {timm.list_models('fer_*')}") from None
    return model.to(device, memory_format=torch.channels_last)  # faster convolutions on GPU and CPU


def autocast_dtype(amp, device):
    """bf16 autocast on CUDA, and on CPUs with native bf16 (about 2x there); None for float32."""
    if amp == "off":
        return None
    native = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if amp == "bf16" or native:
        return torch.bfloat16
    return None


def _optimizer(cfg, model):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise FerKaggleError(f"unknown optimizer '{cfg.optimizer}'; choose sgd or adamw")


def _warmup_cosine(total_steps, warmup_steps):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _check_config(unit, unit_dir, unit_config):
    """Write the unit's config, or check that a resumed unit was started with the same one."""
    path = unit_dir / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        changed = [k for k in TRAINING_FIELDS if saved.get(k) != unit_config.get(k)]
        if changed:
            was = ", ".join(f"{k}={saved.get(k)}" for k in changed)
            raise FerKaggleError(f"{unit.name} was started with {was}; finish it with the same options, "
                                 f"or delete {unit_dir} to retrain it")
    write_json(path, unit_config)


def _save_pipeline(pipeline, path):
    with atomic_path(path) as tmp:
        A.save(pipeline, str(tmp), data_format="json")


def _workers(cfg, device):
    if cfg.workers >= 0:
        return cfg.workers
    return 0 if device.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))


def train_unit(cfg, unit, workdir, data, device):
    """Train `unit` to the end (resuming from its checkpoint), predict, save; returns its metrics."""
    unit_dir = unit.dir(workdir)
    if is_finished(unit_dir):
        return json.loads((unit_dir / "metrics.json").read_text())
    unit_dir.mkdir(parents=True, exist_ok=True)
    mean, std = augment.normalize_stats(data.train_images, cfg.normalize)
    train_pipe = augment.train_pipeline(mean, std, cfg.augment, cfg.image_size)
    eval_pipe = augment.eval_pipeline(mean, std, cfg.image_size)
    _check_config(unit, unit_dir, {**cfg.to_dict(), "round": unit.round, "backbone": unit.backbone,
                                   "fold": unit.fold, "mean": mean, "std": std,
                                   "train_rows": len(data.train_images), "device": str(device)})
    _save_pipeline(train_pipe, unit_dir / "train_pipeline.json")
    _save_pipeline(eval_pipe, unit_dir / "eval_pipeline.json")

    torch.manual_seed(unit.seed(cfg.seed))
    model = build_model(unit.backbone, device)
    optimizer = _optimizer(cfg, model)
    dataset = augment.FaceDataset(data.train_images, data.train_labels, train_pipe)
    sampler = augment.EpochSampler(len(dataset), cfg.batch_size)
    workers = _workers(cfg, device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=len(dataset) > cfg.batch_size,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    steps = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(cfg.epochs * steps, max(1, round(cfg.warmup_epochs * steps))))
    amp_dtype = autocast_dtype(cfg.amp, device)

    checkpoint_path = unit_dir / "checkpoint.pt"
    history, start_epoch = [], 0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"]

    valid_x = augment.to_tensor(data.valid_images, eval_pipe)
    valid_y = torch.as_tensor(data.valid_labels)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        epoch_seed = unit.seed(cfg.seed, epoch)
        torch.manual_seed(epoch_seed)  # dropout
        sampler.set_epoch_seed(epoch_seed)
        train_loss, train_acc = _train_epoch(model, loader, optimizer, scheduler, loss_fn, device, amp_dtype,
                                             desc=f"{unit.name} epoch {epoch + 1}/{cfg.epochs}", unit=unit)
        valid_probs = predict_views(model, valid_x, "none", device, amp_dtype=amp_dtype)[0]
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": train_loss, "train_acc": train_acc,
               "valid_loss": _nll(valid_probs, valid_y), "valid_acc": _accuracy(valid_probs, valid_y),
               "seconds": time.perf_counter() - started}
        history.append(row)
        save_torch(checkpoint_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                                     "history": history, "backbone": unit.backbone, "mean": mean, "std": std})
        save_csv(unit_dir / "history.csv", pd.DataFrame(history))
        tqdm.write(f"{unit.name} epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.3f} "
                   f"acc {train_acc:.3f} | valid loss {row['valid_loss']:.3f} acc {row['valid_acc']:.3f}")

    return _predict_and_save(cfg, unit, unit_dir, model, valid_x, valid_y, data, eval_pipe, device,
                             amp_dtype, history)


def _train_epoch(model, loader, optimizer, scheduler, loss_fn, device, amp_dtype, desc, unit):
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)  # None: off when not a terminal
    for step, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        if not torch.isfinite(loss):
            raise FerKaggleError(f"{unit.name}: the training loss became {loss.item()} at {desc}, "
                                 f"step {step + 1}; lower --lr and run again")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(-1) == labels).sum().item()
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / seen, correct / seen


def _nll(probs, labels):
    return float(-probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean())


def _accuracy(probs, labels):
    return float((probs.argmax(-1) == labels).float().mean())


def _predict_and_save(cfg, unit, unit_dir, model, valid_x, valid_y, data, eval_pipe, device, amp_dtype,
                      history):
    oof_views = predict_views(model, valid_x, cfg.tta, device, amp_dtype=amp_dtype)
    test_views = predict_views(model, augment.to_tensor(data.test_images, eval_pipe), cfg.tta, device,
                               amp_dtype=amp_dtype)
    oof = oof_views.mean(0)
    save_npz(unit_dir / "oof.npz", rows=data.valid_rows, probs=oof.numpy(), probs_plain=oof_views[0].numpy())
    save_npz(unit_dir / "test.npz", ids=data.test_ids, probs=test_views.mean(0).numpy(),
             probs_plain=test_views[0].numpy())
    metrics = {"unit": unit.name, "valid_acc": _accuracy(oof, valid_y),
               "valid_acc_plain": _accuracy(oof_views[0], valid_y), "tta": cfg.tta,
               "epochs": len(history), "train_seconds": sum(row["seconds"] for row in history),
               "train_rows": len(data.train_images), "valid_rows": len(data.valid_rows)}
    write_json(unit_dir / "metrics.json", metrics)
    return metrics
