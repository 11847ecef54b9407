"""Every setting of a run, in one frozen dataclass, and the presets that bundle them.

Precedence: the dataclass defaults < the chosen preset < options given on the command line.
The resolved config is written as `config.json` beside every unit's outputs.
"""
import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    # --- run
    preset: str = "full"
    seed: int = 2013                 # folds, weight init, shuffling and augmentation all derive from it
    folds: int = 5
    device: str = "auto"             # auto | cpu | cuda
    # --- models: any timm name that works at 48x48 grayscale, ours are fer_*
    backbones: tuple = ("fer_vgg13", "fer_resnet18")
    # --- optimisation
    epochs: int = 40
    batch_size: int = 128
    optimizer: str = "sgd"           # sgd (Nesterov, momentum 0.9) | adamw | auto (per backbone: models.py)
    lr: float = 0.1                  # peak learning rate, reached after warm-up, then cosine to 0
    weight_decay: float = 5e-4
    warmup_epochs: float = 2.0
    schedule: str = "cosine"         # cosine (linear warm-up, cosine to 0) | onecycle (torch's OneCycleLR)
    label_smoothing: float = 0.1
    mixup: float = 0.0               # Beta(alpha, alpha) of mixup; 0: off
    cutmix: float = 0.0              # Beta(alpha, alpha) of cutmix; 0: off (both on: one of them per batch)
    mix_prob: float = 0.5            # share of batches mixed when mixup or cutmix is on
    ema: float = 0.0                 # decay of an exponential moving average of the weights; 0: off
    class_balance: float = 0.0       # loss weight of a class ~ count^-power (0: off, 0.5: sqrt, 1: inverse)
    # --- data pipeline
    image_size: int = 48             # faces are resized to this side first (48: FER2013's own)
    augment: str = "full"            # full | light (flip, small shifts) | none (ablation)
    erase: float = 0.5               # probability of random erasing (one 8-16 px hole) in `full`
    crop: int = 0                    # train on random crop x crop windows (e.g. 44), predict the centre; 0: off
    normalize: bool = True           # False: pixels/255 instead of (pixels - mean) / std (ablation)
    augment_on: str = "auto"         # device (batched on the GPU, gpu_augment) | host (albumentations in
                                     # DataLoader workers) | auto: device on CUDA, host on a CPU
    parallel_units: int = 1          # units trained side by side on a CPU, in local processes (executor.py)
    workers: int = -1                # DataLoader workers of the host path; -1: none on CPU, up to 8 on CUDA
    amp: str = "auto"                # auto (bf16 where the device runs it natively) | bf16 | off
    compile: bool = False            # torch.compile the training model (pays on CUDA for long runs)
    time_limit: float = 0.0          # minutes; stop cleanly after the epoch that passes it, resume on re-run
    monitor_rows: int = 0            # held-out rows checked after each epoch for the curves (0: the whole fold);
                                     # the unit's OOF predictions always cover the whole fold
    # --- inference
    tta: str = "flip_shift"          # none | flip | flip_shift (flip x 5 two-pixel shifts) | ten_crop (--crop)
    # --- pseudo-labelling
    pseudo: bool = True              # a second round with confident test predictions added to training
    pseudo_threshold: float = 0.9    # minimum ensemble probability for a test image to be added
    pseudo_soft: bool = False        # train on the teachers' probabilities instead of their argmax
    # --- analysis
    ablation: bool = False           # also train the first backbone without normalisation, without
                                     # augmentation, and a plain DNN of its size (kept out of the ensemble)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PRESETS = {
    # A CPU run in minutes: tiny backbones, 3 folds, few epochs.
    # Little data and few epochs: AdamW and light augmentation learn fastest there.
    "demo": Config(preset="demo", backbones=("fer_vgg_tiny", "fer_resnet_tiny"), folds=3, epochs=12,
                   batch_size=64, optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_epochs=1.0,
                   augment="light", tta="flip", pseudo_threshold=0.6),
    # No GPU: the whole run on the full train file within an hour on two cores (measured: 50.5 min, OOF
    # 0.682 on 2 cores; BENCHMARKS.md). CPU-shaped backbones (channel widths that oneDNN's bf16 kernels run
    # fastest), full augmentation (3.8 points above light at this scale) batched in torch (gpu_augment: 5x
    # cheaper than albumentations per image, on a CPU too), 44 px crops (16% fewer FLOPs; fer_resnet_cpu was
    # as accurate as at 48 px) with ten-crop TTA, and the per-epoch check on 2,000 rows. No pseudo-labels:
    # their round would double the time. Each choice was measured on one fold of the full train file.
    "cpu": Config(preset="cpu", backbones=("fer_vgg_cpu", "fer_resnet_cpu"), folds=3, epochs=40, batch_size=128,
                  optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_epochs=1.0, augment="full", crop=44,
                  tta="ten_crop", augment_on="device", monitor_rows=2000, pseudo=False),
    # One GPU, the whole run.sh in at most 10 minutes on an H100 (target; see BENCHMARKS.md for what was
    # measured): VGG-13 and CIFAR ResNet-18 on 5 folds, 44 px crops with ten-crop TTA.
    "fast": Config(preset="fast", epochs=30, batch_size=256, optimizer="auto", lr=0.1, crop=44, tta="ten_crop",
                   compile=True),
    # One GPU, at most 20 minutes: a third family, more epochs, EMA and cutmix.
    "full": Config(preset="full", backbones=("fer_vgg13", "fer_resnet18", "fer_convnext"), epochs=50,
                   batch_size=256, optimizer="auto", lr=0.1, crop=44, tta="ten_crop", compile=True, ema=0.999,
                   cutmix=1.0),
}
GPU_PRESETS = {"fast", "full"}


# Fields that change what a unit learns; a resumed unit must match them exactly.
TRAINING_FIELDS = ("seed", "folds", "image_size", "epochs", "batch_size", "optimizer", "lr", "weight_decay",
                   "warmup_epochs", "schedule", "label_smoothing", "mixup", "cutmix", "mix_prob", "ema",
                   "class_balance", "augment", "erase", "crop", "normalize", "pseudo_threshold", "pseudo_soft")
