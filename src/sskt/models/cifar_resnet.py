"""CIFAR ResNets (He et al. 2016, section 4.2) with option-A shortcuts.

Module names follow Y. Idelbayev's widely used implementation (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear``) so its published checkpoints load as is.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad the channels; no parameters."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity or option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ZeroPadShortcut(planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-6n+2 for 32 px images: 16/32/64 channels, three stages ``layer1..layer3``.

    Example:
        >>> import torch
        >>> net = CifarResNet(depth=20, num_classes=10)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"CIFAR ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        n = DEPTHS[depth]
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
