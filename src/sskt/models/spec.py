"""What is known about an architecture, apart from how the registry finds it: :class:`ModelSpec` and the
input statistics and stages of the built-in families (shared by the registry, the zoo and the weight loaders)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture and what is known about it."""

    build: Callable[[int, int], nn.Module]  # (num_classes, in_chans) -> module
    stages: tuple[str, ...]  # modules whose outputs are the network's stages, shallow to deep
    input_size: int | None = None  # natural input side in pixels (None: unknown)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    extra: dict = field(default_factory=dict)

# The TF EfficientNet-Lite builder normalises with MEAN_RGB = 127 and STDDEV_RGB = 128 (on 0..255).
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
# name -> (timm architecture, natural input size); same width/depth/resolution as the TF builder.
EFFICIENTNET_LITE = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", 224),
    "efficientnet_lite1": ("tf_efficientnet_lite1", 240),
    "efficientnet_lite2": ("tf_efficientnet_lite2", 260),
}
# timm's feature_info modules of tf_efficientnet_lite* (strides 2, 4, 8, 16, 32); a test checks them.
LITE_STAGES = ("blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6")
