"""Every setting of a run, in one frozen dataclass, and the presets that bundle them.

Precedence: the dataclass defaults < the chosen preset < options given on the command line. Every run starts
from a preset; the defaults are only what the presets share where they do not say otherwise.
The resolved config is written as `config.json` beside every unit's outputs.
"""
import dataclasses
from dataclasses import dataclass, field


# What each setting changes: every Config field names one of these roles. Unit keys, the resume check and a
# budgeted run's request are derived from them (fields_with), so a new setting cannot be left out of the key
# by mistake: tests/test_config.py fails for a field without a role.
UNIT = "unit"          # the weights a unit learns or the probabilities it saves: in every unit's key
RESOLVED = "resolved"  # the same, in the key as resolved on the device ("auto" -> "bf16", "off", "device", "host")
STUDENT = "student"    # how a pseudo-labelling student learns: in round 1's keys only
RUN = "run"            # which units the run trains and how it plans them: in its request (plan.json), no key
SESSION = "session"    # how this session runs (devices, threads, time limit): nothing that is kept
ROLES = (UNIT, RESOLVED, STUDENT, RUN, SESSION)


def setting(default, help, choices=None, metavar=None, *, role):
    """A Config field with its command-line help, choices and role: cli.py builds every option from these."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: choose one of {ROLES}")
    return field(default=default, metadata={"help": help, "choices": choices, "metavar": metavar, "role": role})


@dataclass(frozen=True)
class Config:
    # --- run
    preset: str = setting("", "bundle of settings (a run always has one; empty: the bare defaults)", role=RUN)
    seed: int = setting(2013, "folds, weight init, shuffling and augmentation all derive from it", role=UNIT)
    folds: int = setting(5, "stratified folds (each unit holds one out)", role=UNIT)
    device: str = setting("auto", "where to train (auto: CUDA if present)", ["auto", "cpu", "cuda"], role=SESSION)
    # --- models: any timm name that works at 48x48 grayscale, ours are fer_*
    backbones: tuple = setting(("fer_vgg13", "fer_resnet18"), "comma-separated timm model names, e.g. "
                               "fer_vgg13,fer_resnet18 (ours: fer_*)", role=RUN)
    # --- optimisation
    epochs: int = setting(40, "epochs per unit", role=UNIT)
    batch_size: int = setting(128, "images per training step", role=UNIT)
    optimizer: str = setting("sgd", "sgd (Nesterov, momentum 0.9), adamw, or auto: AdamW (lr 2e-3, wd 0.05) for "
                             "ConvNeXt, SGD for the batch-norm nets", ["sgd", "adamw", "auto"], role=UNIT)
    lr: float = setting(0.1, "peak learning rate, reached after warm-up", role=UNIT)
    weight_decay: float = setting(5e-4, "weight decay", role=UNIT)
    warmup_epochs: float = setting(2.0, "linear warm-up, in epochs", role=UNIT)
    schedule: str = setting("cosine", "after warm-up: cosine or linear decay to 0, or torch's one-cycle",
                            ["cosine", "linear", "onecycle"], role=UNIT)
    label_smoothing: float = setting(0.1, "label smoothing of the cross-entropy", role=UNIT)
    mixup: float = setting(0.0, "mixup Beta alpha (0: off)", role=UNIT)
    cutmix: float = setting(0.0, "cutmix Beta alpha (0: off; both on: one of them per batch)", role=UNIT)
    mix_prob: float = setting(0.5, "share of batches mixed when mixup or cutmix is on", role=UNIT)
    ema: float = setting(0.0, "EMA decay of the weights, e.g. 0.999 (0: off); predictions use the EMA", role=UNIT)
    class_balance: float = setting(0.0, "class loss weights ~ count^-POWER (0: off, 0.5: sqrt, 1: inverse)", role=UNIT)
    # --- data pipeline
    image_size: int = setting(48, "resize faces to this side first (48: FER2013's own)", role=UNIT)
    augment: str = setting("full", "train-time augmentation (none: an ablation)", ["full", "light", "none"], role=UNIT)
    erase: float = setting(0.5, "probability of random erasing (one 8-16 px hole) in --augment full", role=UNIT)
    crop: int = setting(0, "train on random CROP x CROP windows (e.g. 44), predict the centre (0: off)", role=UNIT)
    normalize: bool = setting(True, "normalise by the train pixels' mean and std (off: pixels / 255, an ablation)",
                              role=UNIT)
    augment_on: str = setting("auto", "train-time augmentation batched on the device, or albumentations in "
                              "DataLoader workers (auto: device on CUDA, host on a CPU)", ["auto", "device", "host"],
                              role=RESOLVED)
    parallel_units: int = setting(1, "units trained side by side in local processes on a CPU, each with "
                                  "cores/N threads (1: one at a time with every core)", role=SESSION)
    executor: str = setting("local", "how units run: local (one at a time, or --parallel-units side by side "
                            "in local processes) or ray (Ray tasks on this machine or the cluster at "
                            "--ray-address; pip install 'fer_kaggle[ray]')", ["local", "ray"], role=SESSION)
    ray_address: str = setting("", "with --executor ray: the cluster to join, e.g. 10.0.0.1:6379 (default: "
                               "$RAY_ADDRESS, else a local Ray instance on this machine)",
                               metavar="HOST:PORT", role=SESSION)
    unit_threads: int = setting(0, "torch threads per unit on a CPU (0: the machine's cores / --parallel-units, "
                                "as one unit at a time uses them)", role=SESSION)
    workers: int = setting(-1, "DataLoader workers of the host path (-1: none on a CPU, up to 8 on CUDA)", role=SESSION)
    amp: str = setting("auto", "mixed precision: bf16 autocast, or fp16 autocast with a gradient scaler (auto: bf16 "
                       "where the device runs it natively, fp16 on CUDA devices without bf16 such as Kaggle's P100 "
                       "and T4, else off)", ["auto", "bf16", "fp16", "off"], role=RESOLVED)
    compile: bool = setting(False, "torch.compile the training model (pays on CUDA for long runs)", role=SESSION)
    checkpoint_every: int = setting(1, "epochs between a unit's checkpoints (a stopped unit resumes from its "
                                    "last one; the last epoch and a --time-limit stop always save one)", role=RUN)
    budget: float = setting(0.0, "minutes for the whole run, reading to submission: it times this machine and "
                            "plans the backbones, epochs and pseudo-labelling round predicted to give the best "
                            "OOF accuracy in that time, then keeps to it (0: no plan, the preset's work as it is)",
                            metavar="MINUTES", role=RUN)
    plan: str = setting("", "follow a plan.json that a budgeted run wrote in its run folder, exactly: the same "
                        "work, so the same submission again (no timing, no re-planning)", metavar="FILE", role=RUN)
    time_limit: float = setting(0.0, "stop cleanly after the epoch that passes this many minutes; run the same "
                                "command again to continue (0: no limit)", metavar="MINUTES", role=SESSION)
    monitor_rows: int = setting(0, "held-out rows checked after each epoch for the curves (0: the whole fold; "
                                "the OOF predictions always cover it all)", role=SESSION)
    # --- inference
    tta: str = setting("flip_shift", "test-time views: none, flip, flip_shift (flip x 5 two-pixel shifts), "
                       "ten_crop (needs --crop)", ["none", "flip", "flip_shift", "ten_crop"], role=UNIT)
    # --- pseudo-labelling
    pseudo: bool = setting(True, "a second round trained with confident test predictions added", role=RUN)
    pseudo_threshold: float = setting(0.9, "minimum teachers' probability for a pseudo-label, as a share of the "
                                      "highest probability a model trained with --label-smoothing can output",
                                      role=STUDENT)
    pseudo_soft: bool = setting(False, "train on the teachers' probabilities instead of their labels", role=STUDENT)
    strict_shift: bool = setting(False, "stop (exit status 2, nothing trained) when the test images differ "
                                 "materially from the train images, instead of a warning", role=SESSION)
    # --- analysis
    ablation: bool = setting(False, "also train the first backbone without normalisation, without "
                             "augmentation, and a plain DNN of its size (kept out of the ensemble)", role=RUN)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PRESETS = {
    # The bundled demo sample in minutes on a CPU: tiny backbones, 3 folds, few epochs. Little data and few
    # epochs: AdamW and light augmentation learn fastest there.
    "demo": Config(preset="demo", backbones=("fer_vgg_tiny", "fer_resnet_tiny"), folds=3, epochs=12,
                   batch_size=64, optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_epochs=1.0,
                   augment="light", tta="flip", pseudo_threshold=0.6, budget=3.0),
    # No GPU: the full train file planned to an hour (--budget). CPU-shaped backbones (channel widths that
    # oneDNN's kernels run fastest), full augmentation (better than light from about 30 epochs: below, the
    # plan trains the table's light arm, fer_vgg_cpu:light) batched in torch
    # (gpu_augment: cheaper than albumentations per image, on a CPU too), 44 px crops (fewer FLOPs, as
    # accurate) with ten-crop TTA, and the per-epoch check on 2,000 rows. No pseudo-labels: their round would
    # double the time. Each choice was measured on one fold of the full train file: BENCHMARKS.md.
    "cpu": Config(preset="cpu", backbones=("fer_vgg_cpu", "fer_resnet_cpu"), folds=3, epochs=40, batch_size=128,
                  optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_epochs=1.0, augment="full", crop=44,
                  tta="ten_crop", augment_on="device", monitor_rows=2000, pseudo=False, budget=60.0),
    # One GPU, planned to 8 minutes: VGG-13 and CIFAR ResNet-18 on 5 folds, 44 px crops with ten-crop TTA.
    # Never yet run on a GPU (BENCHMARKS.md).
    "fast": Config(preset="fast", backbones=("fer_vgg13", "fer_resnet18"), epochs=30, batch_size=256, optimizer="auto",
                   lr=0.1, crop=44, tta="ten_crop",
                   compile=True, checkpoint_every=5, budget=8.0),
    # One GPU, planned to 20 minutes: a third family, more epochs, EMA and cutmix.
    "full": Config(preset="full", backbones=("fer_vgg13", "fer_resnet18", "fer_convnext"), epochs=50,
                   batch_size=256, optimizer="auto", lr=0.1, crop=44, tta="ten_crop", compile=True, ema=0.999,
                   cutmix=1.0, checkpoint_every=5, budget=20.0),
}
GPU_PRESETS = {"fast", "full"}


def fields_with(*roles):
    """The names of the Config fields of these roles, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata["role"] in roles)
