"""Datasets held as decoded uint8 tensors and served a whole batch at a time."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset


class ImageTensorDataset(Dataset):
    """Decoded images (uint8, (N,C,H,W) or clips (N,C,T,H,W)) with targets, batched on fetch.

    ``__getitems__`` lets the DataLoader fetch a whole batch with one indexing operation instead of
    one Python call per image (use :func:`collate_batch` as the loader's ``collate_fn``).

    Example:
        >>> ds = ImageTensorDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4))
        >>> sorted(ds.__getitems__([0, 2]))
        ['image', 'index', 'target']
    """

    def __init__(self, images: Tensor, targets: Tensor, extras: dict[str, Tensor] | None = None) -> None:
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {images.dtype}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets
        self.extras = extras or {}  # e.g. an ignore mask for multi-label "difficult" objects

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {"image": self.images[idx], "target": self.targets[idx], "index": idx}
        batch.update({k: v[idx] for k, v in self.extras.items()})
        return batch

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def subset(self, indices: Sequence[int] | Tensor) -> "ImageTensorDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageTensorDataset(self.images[idx], self.targets[idx], {k: v[idx] for k, v in self.extras.items()})


def collate_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The loader's collate_fn: ``__getitems__`` already returns a batch."""
    return batch


@dataclass
class ImageSplits:
    """A dataset's train and test splits, its class names and task kind; optionally a validation split
    (held out of the training split, for every selection) and unlabelled training images."""

    train: ImageTensorDataset
    test: ImageTensorDataset
    classes: list[str]
    multilabel: bool = False
    meta: dict = field(default_factory=dict)
    val: ImageTensorDataset | None = None
    unlabeled: Tensor | None = None  # uint8 images without labels, shaped like train.images

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def training_set(self) -> ImageTensorDataset:
        """What a method trains on: the labelled images, then the unlabelled ones (if any).

        Every batch carries ``labeled`` (bool per image); unlabelled rows have target -1 (single-label)
        or all zeros (multi-label). Target losses see only labelled rows; auxiliary losses see all.
        """
        n = len(self.train)
        if self.unlabeled is None:
            return ImageTensorDataset(self.train.images, self.train.targets,
                                      {**self.train.extras, "labeled": torch.ones(n, dtype=torch.bool)})
        u = self.unlabeled
        if u.shape[1:] != self.train.images.shape[1:]:
            raise ValueError(f"unlabelled images are {tuple(u.shape[1:])}, training images "
                             f"{tuple(self.train.images.shape[1:])}")
        t = self.train.targets
        fill = torch.full((len(u),), -1, dtype=t.dtype) if t.ndim == 1 else torch.zeros(len(u), *t.shape[1:], dtype=t.dtype)
        extras = {k: torch.cat([v, torch.zeros(len(u), *v.shape[1:], dtype=v.dtype)]) for k, v in self.train.extras.items()}
        extras["labeled"] = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(len(u), dtype=torch.bool)])
        return ImageTensorDataset(torch.cat([self.train.images, u]), torch.cat([t, fill]), extras)
