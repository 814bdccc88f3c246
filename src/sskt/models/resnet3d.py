"""3D CNN targets for video: Hara et al.'s 3D ResNet-18/34 and torchvision's r3d/mc3/r(2+1)d-18.

Every model maps (B, 3, T, H, W) float clips to (B, num_classes) logits and names its stages
``layer1``..``layer4`` and its classifier ``fc``, so :class:`sskt.models.taps.FeatureTaps` can hook
them (stage outputs are 5-D (B, C, T', H', W') tensors, the ``fc`` input is (B, 512)).

Hara et al. 3D ResNet (the ``3D_SSKT/models/resnet.py`` backbone of the SSKT code): conv1 7x7x7 with
stride (1, 2, 2), BN, ReLU, max-pool 3x3x3 stride 2, four stages of BasicBlocks (64, 128, 256,
512 channels; stride 2 in time and space from layer2 on), global average pool, ``fc``. For the
usual 16x112x112 input the last stage is 512x1x4x4, which the original pools with a fixed
AvgPool3d((1, 4, 4)); we pool adaptively, which is identical there and also accepts other sizes.

Shortcut "A" (the SSKT README's choice) subsamples and zero-pads the channels; shortcut "B" uses a
1x1x1 convolution + BN when the shape changes. The original shortcut A builds the padded tensor
from ``out.data``, which silently cuts the gradient through every downsampling shortcut; we keep
the gradient (a deliberate fix, parameter-free either way).
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.models.factory import MODELS
from sskt.models.spec import ModelSpec


class ZeroPadShortcut3d(nn.Module):
    """Shortcut A: take every ``stride``-th voxel, then append zero channels up to ``planes``."""

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride, :: self.stride]  # == avg_pool3d(kernel 1, stride)
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.planes - x.shape[1]))


class BasicBlock3d(nn.Module):
    """Two 3x3x3 convolutions with BN, plus an identity, A or B shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.downsample = ZeroPadShortcut3d(planes, stride)
            else:
                self.downsample = nn.Sequential(
                    nn.Conv3d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm3d(planes)
                )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


class ResNet3d(nn.Module):
    """Hara et al. 3D ResNet with BasicBlocks (ResNet-18: ``layers=(2, 2, 2, 2)``, 34: ``(3, 4, 6, 3)``).

    Example:
        >>> import torch
        >>> net = ResNet3d((2, 2, 2, 2), num_classes=101, shortcut="A").eval()
        >>> net(torch.zeros(1, 3, 8, 32, 32)).shape
        torch.Size([1, 101])
    """

    def __init__(self, layers: tuple[int, int, int, int], num_classes: int = 400, shortcut: str = "A",
                 in_chans: int = 3) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise SSKTError(f"3D ResNet shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = nn.Conv3d(in_chans, 64, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        planes, blocks = (64, 128, 256, 512), []
        in_planes = 64
        for i, (p, n) in enumerate(zip(planes, layers)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock3d(in_planes, p, stride, shortcut)]
            stage += [BasicBlock3d(p, p, 1, shortcut) for _ in range(n - 1)]
            blocks.append(nn.Sequential(*stage))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(512, num_classes)
        # Hara et al.'s init: He (fan_out) for convolutions, BN to identity; Linear keeps the default.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def _torchvision(name: str) -> Callable[[int, str], nn.Module]:
    def build(num_classes: int, shortcut: str = "A") -> nn.Module:
        from torchvision.models import video as tv_video  # imported lazily: torchvision is optional here

        # weights=None: random init, nothing is downloaded. Their shortcuts are 1x1x1 conv (B) and
        # their stem differs from Hara's (r3d: 3x7x7 stride (1,2,2), no max-pool), so `shortcut` is unused.
        return getattr(tv_video, name)(weights=None, num_classes=num_classes)

    return build


def resnet3d_18(num_classes: int, shortcut: str = "A") -> ResNet3d:
    """Hara et al. 3D ResNet-18 (33M parameters)."""
    return ResNet3d((2, 2, 2, 2), num_classes, shortcut)


def resnet3d_34(num_classes: int, shortcut: str = "A") -> ResNet3d:
    """Hara et al. 3D ResNet-34 (63M parameters)."""
    return ResNet3d((3, 4, 6, 3), num_classes, shortcut)


# name -> factory(num_classes, shortcut) -> nn.Module
VIDEO_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet3d_18": resnet3d_18,
    "resnet3d_34": resnet3d_34,
    "r3d_18": _torchvision("r3d_18"),
    "mc3_18": _torchvision("mc3_18"),
    "r2plus1d_18": _torchvision("r2plus1d_18"),
}


def create_video_model(name: str, num_classes: int, shortcut: str = "A") -> nn.Module:
    """Build a randomly initialised 3D target by name (see ``VIDEO_MODELS``); no weights are downloaded.

    Args:
        name: ``resnet3d_18``, ``resnet3d_34`` (Hara et al.), ``r3d_18``, ``mc3_18``, ``r2plus1d_18``
            (torchvision).
        num_classes: size of ``fc``.
        shortcut: ``A`` (zero-pad) or ``B`` (1x1x1 conv); only for the Hara models.
    """
    if name not in VIDEO_MODELS:
        raise SSKTError(f"unknown video model {name!r}; known: {', '.join(sorted(VIDEO_MODELS))}")
    return VIDEO_MODELS[name](num_classes, shortcut)


# ----------------------------------------------------------------------------- registry entries

# Kinetics-400 statistics (torchvision's video models); set target.mean/std for other checkpoints
# (Hara et al.'s Kinetics models were trained with mean (114.8, 107.7, 99.5)/255 and std 1).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def _register() -> None:
    """Add the 3D targets to the model registry (stages layer1..layer4, classifier fc, 112 px)."""
    def build(name: str, shortcut: str) -> Callable[[int, int], nn.Module]:
        def make(num_classes: int, in_chans: int) -> nn.Module:
            if name.startswith("resnet3d"):
                depth = (2, 2, 2, 2) if name == "resnet3d_18" else (3, 4, 6, 3)
                return ResNet3d(depth, num_classes, shortcut, in_chans)
            if in_chans != 3:
                raise SSKTError(f"{name} takes 3-channel clips; set data.grayscale_to_rgb: true")
            return VIDEO_MODELS[name](num_classes)

        return make

    variants = [(n, n, "A") for n in VIDEO_MODELS] + [(f"{n}b", n, "B") for n in ("resnet3d_18", "resnet3d_34")]
    for reg_name, name, shortcut in variants:
        MODELS.register(reg_name)(ModelSpec(build=build(name, shortcut), stages=("layer1", "layer2", "layer3", "layer4"),
                                            input_size=112, mean=KINETICS_MEAN, std=KINETICS_STD,
                                            extra={"video": True}))


_register()
