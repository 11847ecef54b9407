"""Backbones sized for 1x48x48 faces, registered in timm's registry under `fer_*` names.

Importing fer_kaggle registers them, so every backbone, ours or timm's own, is built
the same way: `timm.create_model(name, in_chans=1, num_classes=7)`.
No pretrained weights exist for these: they train from scratch.
"""
import timm
import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.layers import trunc_normal_
from timm.models.convnext import ConvNeXt

from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.data.competition import NUM_CLASSES


def conv_bn_relu(in_chs, out_chs, stride=1):
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


class _ClassifierMixin:
    """timm's classifier interface: forward_features, forward_head, get/reset_classifier."""

    def _init_head(self, num_features, num_classes, drop_rate):
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes) if num_classes else nn.Identity()

    def get_classifier(self):
        return self.fc

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_head(self, x, pre_logits=False):
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class FerVgg(_ClassifierMixin, nn.Module):
    """VGG-style: stages of 3x3 conv-BN-ReLU, each followed by a 2x2 max-pool (48 -> 3 px)."""

    def __init__(self, widths=(64, 128, 256, 512), depth=2, in_chans=1, num_classes=7, drop_rate=0.3):
        super().__init__()
        layers, chs = [], in_chans
        for width in widths:
            for _ in range(depth):
                layers.append(conv_bn_relu(chs, width))
                chs = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self._init_head(chs, num_classes, drop_rate)

    def forward_features(self, x):
        return self.features(x)


class BasicBlock(nn.Module):
    def __init__(self, in_chs, out_chs, stride):
        super().__init__()
        self.conv1 = conv_bn_relu(in_chs, out_chs, stride)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.shortcut = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_chs))

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class FerResNet(_ClassifierMixin, nn.Module):
    """ResNet with a CIFAR-style stem: one 3x3 conv (stride 1 by default), no max-pool (48 -> 6 px)."""

    def __init__(self, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), in_chans=1, num_classes=7,
                 drop_rate=0.2, stem_stride=1):
        super().__init__()
        self.stem = conv_bn_relu(in_chans, widths[0], stride=stem_stride)
        stages, chs = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            for j in range(count):
                stages.append(BasicBlock(chs, width, stride=2 if i > 0 and j == 0 else 1))
                chs = width
        self.stages = nn.Sequential(*stages)
        self._init_head(chs, num_classes, drop_rate)

    def forward_features(self, x):
        return self.stages(self.stem(x))


class FerDnn(_ClassifierMixin, nn.Module):
    """A plain fully-connected network on the 2,304 pixels: the report's DNN-against-CNN baseline.

    Blocks of Linear-BatchNorm-ReLU-Dropout; no convolution, so no notion of neighbouring pixels.
    """

    def __init__(self, hidden=(1536, 768), in_chans=1, num_classes=7, drop_rate=0.3, img_size=48):
        super().__init__()
        layers, width = [nn.Flatten()], in_chans * img_size * img_size
        for size in hidden:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
            width = size
        self.features = nn.Sequential(*layers)
        self._init_head(width, num_classes, 0.0)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.fc(x)


class FerConvNeXt(ConvNeXt):
    """timm's ConvNeXt with a CIFAR-style stem: a 3x3 conv (stride 1 or 2) and LayerNorm, no 4x4 patchify.

    At 48 px timm's patch-4 stem leaves 12 px for stage 0 and 1.5 px after the third downsample,
    and patch_size=2 does not help (timm then downsamples in stage 0 too: 24 -> 12 -> 6 -> 3 -> 1).
    So the stages are built as for patch_size=1 (stage 0 keeps the stem's resolution, stages 1-3
    halve it: 48 -> 6 px with a stride-1 stem, 24 -> 3 px with stride 2) and the 1x1 patch conv,
    which on one grey channel feeds LayerNorm a single number per pixel, is replaced by a 3x3 conv
    with timm's ConvNeXt init. Everything else (blocks, layer scale, drop path, head, init) is timm's.
    """

    def __init__(self, stem_stride=1, **kwargs):
        super().__init__(patch_size=1, **kwargs)
        patch = self.stem[0]
        self.stem[0] = nn.Conv2d(patch.in_channels, patch.out_channels, 3, stride=stem_stride, padding=1,
                                 device=patch.weight.device, dtype=patch.weight.dtype)
        trunc_normal_(self.stem[0].weight, std=0.02)  # as timm's ConvNeXt init does for every conv
        nn.init.zeros_(self.stem[0].bias)
        for info in self.feature_info:
            info["reduction"] *= stem_stride


# Each DNN is sized to within 10% of the parameters of the CNN it is compared with.
DNN_COUNTERPARTS = {"fer_dnn": "fer_vgg13", "fer_dnn_tiny": "fer_vgg_tiny"}

# `--optimizer auto`: batch-norm nets train well with SGD-Nesterov at the preset's lr; LayerNorm
# ConvNeXts, as timm trains them, with AdamW (SGD at lr 0.1 jumped to loss 6.9 and stalled on 256 rows).
AUTO_OPTIMIZERS = {
    "fer_convnext": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05},
    "fer_convnext_tiny": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05},
}


def unit_config(cfg, backbone):
    """`cfg` with `--optimizer auto` resolved for `backbone` (SGD unless AUTO_OPTIMIZERS says otherwise)."""
    if cfg.optimizer != "auto":
        return cfg
    return cfg.replace(**AUTO_OPTIMIZERS.get(backbone, {"optimizer": "sgd"}))


def _cfg(**kwargs):
    return {"input_size": (1, 48, 48), "num_classes": 7, "mean": (0.5,), "std": (0.25,),
            "first_conv": "", "classifier": "fc", **kwargs}


default_cfgs = generate_default_cfgs({
    "fer_vgg13": _cfg(),
    "fer_vgg_tiny": _cfg(),
    "fer_resnet18": _cfg(),
    "fer_resnet_tiny": _cfg(),
    "fer_dnn": _cfg(),
    "fer_dnn_tiny": _cfg(),
    "fer_resnet_cpu": _cfg(),
    "fer_resnet_cpu2": _cfg(),
    "fer_vgg_cpu": _cfg(),
    "fer_convnext": _cfg(first_conv="stem.0", classifier="head.fc"),
    "fer_convnext_tiny": _cfg(first_conv="stem.0", classifier="head.fc"),
})


def _create(cls, variant, pretrained=False, **kwargs):
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights: fer_kaggle trains from scratch")
    return build_model_with_cfg(cls, variant, pretrained=False, **kwargs)


def _create_convnext(variant, pretrained=False, **kwargs):
    # feature_cfg as timm's own ConvNeXt, so features_only=True works too
    return _create(FerConvNeXt, variant, pretrained,
                   feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True), **kwargs)


@register_model
def fer_vgg13(pretrained=False, **kwargs):
    """VGG-13 layout with batch norm: 4 stages x 2 convs, 64-512 channels (4.7M params)."""
    return _create(FerVgg, "fer_vgg13", pretrained, **kwargs)


@register_model
def fer_vgg_tiny(pretrained=False, **kwargs):
    """VGG layout at 1/4 width (0.36 fer_vgg_cpu's FLOPs), for CPU demos and tests, and the cpu preset's plan on
    a float32 CPU: there it trains 2.4 times fer_vgg_cpu's epochs in the same time (BENCHMARKS.md)."""
    return _create(FerVgg, "fer_vgg_tiny", pretrained, **{"widths": (16, 32, 64, 128), **kwargs})


@register_model
def fer_resnet18(pretrained=False, **kwargs):
    """CIFAR-style ResNet-18 (11.2M params)."""
    return _create(FerResNet, "fer_resnet18", pretrained, **kwargs)


@register_model
def fer_resnet_tiny(pretrained=False, **kwargs):
    """ResNet at 1/4 width, one block per stage and a stride-2 stem (48 -> 3 px), for CPU demos and tests.

    The stride-2 stem makes it much faster than a stride-1 one on a CPU and, on the demo's 1,600 images,
    it learned faster too (BENCHMARKS.md history).
    """
    return _create(FerResNet, "fer_resnet_tiny", pretrained,
                   **{"widths": (16, 32, 64, 128), "blocks": (1, 1, 1, 1), "stem_stride": 2, **kwargs})


@register_model
def fer_resnet_cpu(pretrained=False, **kwargs):
    """CPU-sized ResNet: widths 32-256 (multiples of 32: oneDNN's bf16 kernels run them fastest),
    one block per stage, stride-2 stem (48 -> 24 -> 3 px); 1.2M params, 0.21 GFLOP per training image."""
    return _create(FerResNet, "fer_resnet_cpu", pretrained,
                   **{"widths": (32, 64, 128, 256), "blocks": (1, 1, 1, 1), "stem_stride": 2, **kwargs})


@register_model
def fer_resnet_cpu2(pretrained=False, **kwargs):
    """fer_resnet_cpu with two blocks per stage (2.8M params, 0.47 GFLOP per training image)."""
    return _create(FerResNet, "fer_resnet_cpu2", pretrained,
                   **{"widths": (32, 64, 128, 256), "blocks": (2, 2, 2, 2), "stem_stride": 2, **kwargs})


@register_model
def fer_vgg_cpu(pretrained=False, **kwargs):
    """CPU-sized VGG: thin where the maps are large, wide where they are small (16, 48, 128, 256);
    1.1M params, 0.50 GFLOP per training image."""
    return _create(FerVgg, "fer_vgg_cpu", pretrained, **{"widths": (16, 48, 128, 256), **kwargs})


@register_model
def fer_dnn(pretrained=False, **kwargs):
    """Fully-connected 2304-1536-768-7 (4.7M params, as fer_vgg13)."""
    return _create(FerDnn, "fer_dnn", pretrained, **kwargs)


@register_model
def fer_dnn_tiny(pretrained=False, **kwargs):
    """Fully-connected 2304-120-60-7 (0.28M params, as fer_vgg_tiny)."""
    return _create(FerDnn, "fer_dnn_tiny", pretrained, **{"hidden": (120, 60), **kwargs})


@register_model
def fer_convnext(pretrained=False, **kwargs):
    """ConvNeXt with ResNet-18's widths (64-512), ConvNeXt-Pico's depths (2, 2, 6, 2) and a
    stride-1 3x3 stem: stages at 48, 24, 12, 6 px like fer_resnet18 (8.5M params); drop path 0.1.
    """
    return _create_convnext("fer_convnext", pretrained, **{
        "dims": (64, 128, 256, 512), "depths": (2, 2, 6, 2), "stem_stride": 1,
        "drop_rate": 0.2, "drop_path_rate": 0.1, **kwargs})


@register_model
def fer_convnext_tiny(pretrained=False, **kwargs):
    """ConvNeXt at fer_resnet_tiny's size: widths 16-128, one block per stage, stride-2 stem
    (stages at 24, 12, 6, 3 px; 0.23M params), for CPU demos and tests.
    """
    return _create_convnext("fer_convnext_tiny", pretrained, **{
        "dims": (16, 32, 64, 128), "depths": (1, 1, 1, 1), "stem_stride": 2, "drop_rate": 0.2, **kwargs})


def build_model(backbone, device):
    """A backbone by its timm name, for 1x48x48 faces and the 7 classes, in channels-last memory on `device`."""
    try:
        model = timm.create_model(backbone, in_chans=1, num_classes=NUM_CLASSES)
    except RuntimeError as exc:
        raise FerKaggleError(f"backbone '{backbone}': {exc}; our own are {timm.list_models('fer_*')}") from None
    return model.to(device, memory_format=torch.channels_last)  # faster convolutions on GPU and CPU
