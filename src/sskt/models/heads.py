"""Auxiliary heads: one per source, predicting that source's classes from the target's features."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class LinearHead(nn.Module):
    """A linear layer on the target's pooled final features (the reference's plain head).

    Example:
        >>> head = LinearHead(64, 1000)
        >>> head(pooled=torch.zeros(2, 64), stages=[]).shape
        torch.Size([2, 1000])
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, pooled: Tensor, stages: Sequence[Tensor]) -> Tensor:
        return self.fc(pooled)


def _branch(in_ch: int, width: int, dims: int) -> nn.Sequential:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    mid = max(width // 2, 1)
    return nn.Sequential(
        conv(in_ch, mid, 1), bn(mid), nn.ReLU(inplace=True),
        conv(mid, mid, 3, stride=2, padding=1), bn(mid), nn.ReLU(inplace=True),
        conv(mid, width, 1), bn(width), nn.ReLU(inplace=True),
    )


class TransferModule(nn.Module):
    """The SSKT transfer module: merges several target stages into one auxiliary prediction.

    Each tapped stage goes through its own bottleneck branch (1x1 conv to width/2, 3x3 conv with
    stride 2, 1x1 conv to ``width``; BatchNorm and ReLU after each), is globally average-pooled,
    the pooled vectors are averaged (not concatenated) and a linear layer maps them to the
    source's classes. Works on 2D (B,C,H,W) and 3D (B,C,T,H,W) stage maps.

    Example:
        >>> head = TransferModule([16, 32, 64], width=64, num_classes=10)
        >>> feats = [torch.zeros(2, 16, 32, 32), torch.zeros(2, 32, 16, 16), torch.zeros(2, 64, 8, 8)]
        >>> head(pooled=None, stages=feats).shape
        torch.Size([2, 10])
    """

    def __init__(self, stage_channels: Sequence[int], width: int, num_classes: int, dims: int = 2) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"TransferModule works on 2D or 3D feature maps, got dims={dims}")
        self.branches = nn.ModuleList(_branch(c, width, dims) for c in stage_channels)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, pooled: Tensor | None, stages: Sequence[Tensor]) -> Tensor:
        return self.fc(merge_stages(self.branches, stages))


def merge_stages(branches: Sequence[nn.Module], stages: Sequence[Tensor]) -> Tensor:
    """Each stage through its branch, globally average-pooled, then averaged over the stages: (B, width)."""
    return torch.stack([b(s).flatten(2).mean(dim=2) for b, s in zip(branches, stages)]).mean(dim=0)


class SharedTransferHeads(nn.Module):
    """One transfer trunk (the stage branches of :class:`TransferModule`) shared by every source, and one
    linear layer per source on its merged features: the cost of many sources is then the cost of one
    (a branch per stage) plus a linear layer each.

    Example:
        >>> heads = SharedTransferHeads([16, 32, 64], width=64, classes={"a": 10, "b": 1000})
        >>> feats = [torch.zeros(2, 16, 32, 32), torch.zeros(2, 32, 16, 16), torch.zeros(2, 64, 8, 8)]
        >>> {k: tuple(v.shape) for k, v in heads(None, feats).items()}
        {'a': (2, 10), 'b': (2, 1000)}
    """

    def __init__(self, stage_channels: Sequence[int], width: int, classes: dict[str, int], dims: int = 2) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"SharedTransferHeads works on 2D or 3D feature maps, got dims={dims}")
        self.branches = nn.ModuleList(_branch(c, width, dims) for c in stage_channels)
        self.fcs = nn.ModuleDict({name: nn.Linear(width, k) for name, k in classes.items()})

    def merge(self, stages: Sequence[Tensor]) -> Tensor:
        """The shared features every source's linear layer reads: (B, width)."""
        return merge_stages(self.branches, stages)

    def forward(self, pooled: Tensor | None, stages: Sequence[Tensor]) -> dict[str, Tensor]:
        merged = self.merge(stages)
        return {name: fc(merged) for name, fc in self.fcs.items()}
