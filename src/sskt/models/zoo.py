"""Architectures from other libraries by prefixed name: ``timm:<name>[.<tag>]``,
``timm:hf-hub:<org>/<name>`` (or ``hf-hub:<org>/<name>``) and ``torchvision:<name>``.

Each becomes a :class:`~sskt.models.factory.ModelSpec` whose input size and statistics are those of
the named weights (the timm tag's pretrained_cfg, the hub config, torchvision's DEFAULT weights).
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable

import torch
from torch import nn

from sskt.errors import SSKTError
from sskt.models.hub import hf_file
from sskt.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

PREFIXES = ("timm:", "hf-hub:", "torchvision:")
# The key of ModelSpec.extra marking a spec whose build takes timm.create_model's keyword arguments
# (``model_kwargs``: drop_rate, drop_path_rate, ...) after (num_classes, in_chans).
TAKES_MODEL_KWARGS = "takes_model_kwargs"


def split_name(name: str) -> tuple[str, str]:
    """``("timm" | "hf-hub" | "torchvision", rest)`` of a prefixed architecture name."""
    if name.startswith("timm:hf-hub:"):
        return "hf-hub", name[len("timm:hf-hub:"):]
    kind, _, rest = name.partition(":")
    if kind not in ("timm", "hf-hub", "torchvision") or not rest:
        raise SSKTError(f"unknown architecture {name!r}; use timm:<name>, hf-hub:<org>/<name> or torchvision:<name>")
    return kind, rest


@functools.lru_cache(maxsize=64)
def external_spec(name: str) -> ModelSpec:
    """The spec of a prefixed name (cached: timm and torchvision specs build a probe network)."""
    kind, rest = split_name(name)
    if kind == "timm":
        return _timm_spec(rest)
    if kind == "hf-hub":
        return hf_hub_spec(rest)
    return _torchvision_spec(rest)


def _timm_spec(name: str) -> ModelSpec:
    import timm

    # is_model ignores the pretrained tag (resnet18.a1_in1k), which list_models() does not list.
    if not timm.is_model(name):
        raise SSKTError(f"timm has no model {name!r}; see timm.list_models() (a .tag may follow the name)")
    try:
        probe = timm.create_model(name, pretrained=False)
    except RuntimeError as err:  # an unknown tag
        raise SSKTError(f"timm model {name!r}: {str(err).splitlines()[0]}; see timm.list_pretrained({name.split('.')[0]!r})") from None

    def build(num_classes: int, in_chans: int, **model_kwargs: Any) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **model_kwargs)

    return _spec_from_timm(probe, build)


def _spec_from_timm(probe: nn.Module, build: Callable[..., nn.Module]) -> ModelSpec:
    cfg = getattr(probe, "pretrained_cfg", {}) or {}
    info = getattr(probe, "feature_info", None) or []
    stages = tuple(f["module"] for f in info) if info else ()
    size = cfg.get("input_size", (3, 224, 224))[-1]
    return ModelSpec(build=build, stages=stages, input_size=size, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                     std=tuple(cfg.get("std", IMAGENET_STD)), extra={TAKES_MODEL_KWARGS: True})


def hf_hub_config(repo_id: str, allow_download: bool = False) -> tuple[dict, str, dict]:
    """``(pretrained_cfg, timm architecture, model_args)`` from a hub repo's ``config.json``."""
    from timm.models._hub import _parse_model_cfg

    path = hf_file(repo_id, "config.json", allow_download)
    if path is None:
        raise SSKTError(f"hf-hub:{repo_id} has no config.json; is it a timm model repo?")
    cfg = json.loads(path.read_text())
    return _parse_model_cfg(cfg, {"hf_hub_id": repo_id})


def hf_hub_spec(repo_id: str, allow_download: bool = False) -> ModelSpec:
    """Spec of a timm model on the Hugging Face hub (its config must be cached, or downloads allowed)."""
    import timm

    pretrained_cfg, arch, model_args = hf_hub_config(repo_id, allow_download)
    model_args = {k: v for k, v in model_args.items() if k not in ("num_classes", "in_chans")}

    def build(num_classes: int, in_chans: int, **model_kwargs: Any) -> nn.Module:
        # The user's model_kwargs win over the repo config's model_args.
        return timm.create_model(arch, pretrained=False, pretrained_cfg=pretrained_cfg, num_classes=num_classes,
                                 in_chans=in_chans, **{**model_args, **model_kwargs})

    return _spec_from_timm(timm.create_model(arch, pretrained=False, pretrained_cfg=pretrained_cfg, **model_args),
                           build)


def torchvision_names() -> list[str]:
    """Every torchvision classification model name."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def torchvision_transform_stats(weights: Any) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Crop size, mean and std of a torchvision weights enum member's eval transforms."""
    t = weights.transforms()
    crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
    return int(crop), tuple(t.mean), tuple(t.std)


def _torchvision_spec(name: str) -> ModelSpec:
    import torchvision

    if name not in torchvision_names():
        raise SSKTError(f"torchvision has no classification model {name!r}; "
                        f"see torchvision.models.list_models(module=torchvision.models)")

    def build(num_classes: int, in_chans: int) -> nn.Module:
        if in_chans != 3:
            raise SSKTError(f"{name} takes 3-channel images; set data.grayscale_to_rgb: true")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    default = torchvision.models.get_model_weights(name).DEFAULT
    size, mean, std = torchvision_transform_stats(default)
    return ModelSpec(build=build, stages=stages_by_resolution(build(10, 3), size), input_size=size, mean=mean,
                     std=std)


@torch.no_grad()
def stages_by_resolution(model: nn.Module, size: int) -> tuple[str, ...]:
    """Stage modules of a CNN: the last block before each halving of the feature map.

    Looks at ``layer1..4`` (ResNets) or the children of ``features`` (VGG, DenseNet, MobileNet,
    EfficientNet, ConvNeXt ...); an empty tuple when neither exists (then set target.stages).
    """
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return tuple(f"layer{i}" for i in range(1, 5))
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return ()
    sides: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=f"features.{n}": sides.__setitem__(n, out.shape[-1])
                                     if isinstance(out, torch.Tensor) and out.ndim == 4 else None)
             for n, m in features.named_children()]
    try:
        model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    names = list(sides)
    last = [n for n, nxt in zip(names, names[1:] + [None]) if nxt is None or sides[nxt] < sides[n]]
    return tuple(last[-4:])  # the four deepest, as ResNet's layer1..4
