"""Synthetic multi-label data: 2x2 mosaics of single-label images (e.g. CIFAR-10 -> 64x64, 10 labels).

A cheap, real-pixel stand-in for VOC: every mosaic's multi-hot target is the set of classes of its
four tiles. Distribution (per mosaic, independently, from one seeded generator):

1. the number of distinct classes k is uniform on {1, 2, 3, 4} (capped by the number of classes),
   so label sets of every size occur about equally often;
2. the k classes are a uniform random k-subset of the classes;
3. each of the k classes gets one tile, the remaining 4 - k tiles get a class drawn uniformly from
   the same k, and the four tiles are put in a random order;
4. each tile is an image drawn uniformly from that class's images.

So a class appears in a mosaic with probability E[k]/C = 2.5/10 for CIFAR-10, and no tile ever
shows a class outside the label set (there are no "difficult" entries: the ignore mask is empty).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from sskt.data.voc import MultiLabelSplit


class Mosaics(NamedTuple):
    """Generated mosaics.

    Attributes:
        images: uint8 (n, C, 2H, 2W).
        targets: float32 (n, L) multi-hot.
        tiles: long (n, 4): index into the input images of the top-left, top-right, bottom-left
            and bottom-right tile (keeps provenance, e.g. to build disjoint train/test mosaics).
    """

    images: Tensor
    targets: Tensor
    tiles: Tensor

    def to_split(self, classes: Sequence[str]) -> MultiLabelSplit:
        """Wrap as a :class:`MultiLabelSplit` (empty ignore mask, ids ``mosaic-<i>``)."""
        n = self.images.shape[0]
        return MultiLabelSplit(self.images, self.targets, torch.zeros_like(self.targets, dtype=torch.bool),
                               list(classes), [f"mosaic-{i}" for i in range(n)])


def make_mosaics(
    images: Tensor, labels: Tensor, n: int, seed: int = 0, num_classes: int | None = None, max_classes: int = 4
) -> Mosaics:
    """Build ``n`` 2x2 mosaics whose multi-hot label is the set of tile classes.

    Args:
        images: uint8 (N, C, H, W) single-label images, e.g. CIFAR-10 (N, 3, 32, 32).
        labels: (N,) integer class labels.
        n: number of mosaics.
        seed: generator seed; the same inputs and seed give the same mosaics.
        num_classes: L (default ``labels.max() + 1``).
        max_classes: largest number of distinct classes per mosaic (1 to 4).

    Example:
        >>> imgs = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
        >>> m = make_mosaics(imgs, torch.arange(100) % 10, n=8, seed=0)
        >>> m.images.shape, m.targets.shape
        (torch.Size([8, 3, 64, 64]), torch.Size([8, 10]))
    """
    if images.ndim != 4 or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"need images (N,C,H,W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}")
    labels = labels.long()
    L = int(num_classes if num_classes is not None else labels.max().item() + 1)
    counts = torch.bincount(labels, minlength=L)
    present = torch.nonzero(counts > 0).flatten()
    kmax = min(max_classes, 4, present.numel())
    if kmax < 1:
        raise ValueError("no labelled images to build mosaics from")
    g = torch.Generator().manual_seed(seed)

    k = torch.randint(1, kmax + 1, (n,), generator=g)
    # A uniform random ordering of the present classes per mosaic; its first k are the label set.
    order = present[torch.argsort(torch.rand(n, present.numel(), generator=g), dim=1)[:, :4]]
    slot = torch.arange(4).expand(n, 4)
    # Tiles j < k take class j of the set; tiles j >= k repeat a uniformly chosen member of the set.
    repeat = (torch.rand(n, 4, generator=g) * k[:, None]).long()
    pick = torch.where(slot < k[:, None], slot, repeat)
    tile_class = torch.gather(order, 1, pick)
    tile_class = torch.gather(tile_class, 1, torch.argsort(torch.rand(n, 4, generator=g), dim=1))

    # Uniform image within each tile's class, via a (L, max_count) table of indices sorted by class.
    by_class = torch.argsort(labels, stable=True)
    start = torch.cumsum(counts, 0) - counts
    offset = (torch.rand(n, 4, generator=g) * counts[tile_class]).long()
    tiles = by_class[start[tile_class] + offset]

    t = images[tiles]  # (n, 4, C, H, W)
    top = torch.cat([t[:, 0], t[:, 1]], dim=-1)
    bottom = torch.cat([t[:, 2], t[:, 3]], dim=-1)
    mosaics = torch.cat([top, bottom], dim=-2).contiguous()
    targets = torch.zeros(n, L).scatter_(1, tile_class, 1.0)
    return Mosaics(mosaics, targets, tiles)
