"""Layer 3: how one unit (round, backbone, fold) learns.

    augment      the albumentations pipelines (the one definition of the augmentation)
    gpu_augment  the same augmentation as batched torch ops
    recipe       targets, mixup/cutmix, loss, schedule, EMA
    train        one unit trained, checkpointed, resumed; its probabilities saved
"""
