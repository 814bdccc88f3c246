"""What is known about an architecture, apart from how the registry finds it: :class:`ModelSpec` and the
input statistics and stages of the built-in families (shared by the registry, the zoo and the weight loaders)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class OwnWeights:
    """A network registered with its trained weights (``sskt.register_model(name, module)``): a snapshot of the
    module and what its output is. ``build`` of its :class:`ModelSpec` gives copies of the snapshot."""

    module: nn.Module = field(repr=False)  # the snapshot, taken when it was registered (never trained or moved)
    outputs: int  # width of its output: its classes, or the embedding's width for a feature extractor
    features: bool  # its output is an embedding (no classifier): wrapped in an EmbeddingClassifier when built
    in_chans: int | None  # channels it takes (its first convolution's), None where unknown


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture and what is known about it."""

    build: Callable[[int, int], nn.Module]  # (num_classes, in_chans) -> module
    stages: tuple[str, ...]  # modules whose outputs are the network's stages, shallow to deep
    input_size: int | None = None  # natural input side in pixels (None: unknown)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    extra: dict = field(default_factory=dict)
    own_weights: OwnWeights | None = None  # a registered module with its weights; None: build() makes fresh ones

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
