"""What a training step is shown: each image's augmented view, and the soft labels stored for that view.

One place for the "view" concept while training. :class:`TrainingViews` draws each image's random crop and
flip (:class:`~sskt.data.augment.BatchAugment`, seeded per run, epoch and rank, so a resumed run sees the
views the uninterrupted one did), or replays the views a :class:`SoftLabelStore` (SSKT's exact soft-label
cache) stored for the epoch, and attaches the store's soft labels to the batch as ``batch["soft_labels"]``.
The engine calls it on every training batch; a method only reads the batch.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from sskt.data.augment import BatchAugment


class SoftLabelStore(Protocol):
    """Soft labels stored per training image (and per view): e.g. :class:`sskt.sources.cache.SoftLabelCache`."""

    def stored_views(self, index: Tensor, epoch: int, seed: int) -> tuple[Tensor, Tensor] | None:
        """(views (B, 3), slots (B,)) the images ``index`` must be shown this epoch, or None for random views."""
        ...

    def soft_labels(self, index: Tensor, slot: Tensor | None, device: torch.device | str | None = None
                    ) -> dict[str, Tensor]:
        """Per-source (B, C) logits stored for images ``index`` in ``slot`` (None: their only slot)."""
        ...


class TrainingViews:
    """Augments training batches (random or stored views) and attaches stored soft labels.

    Example:
        >>> views = TrainingViews(padding=4, flip=True, seed=0)
        >>> views.start_epoch(0)
        >>> out = views({"image": torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "index": torch.tensor([0, 1])})
        >>> out["image"].dtype, tuple(out["view"].shape), "soft_labels" in out
        (torch.float32, (2, 3), False)
    """

    def __init__(self, padding: int, flip: bool, seed: int, store: SoftLabelStore | None = None) -> None:
        self.padding, self.flip, self.seed, self.store = padding, flip, seed, store
        self.epoch = 0
        self._augment: BatchAugment | None = None

    def start_epoch(self, epoch: int, rank: int = 0) -> None:
        """A generator per run seed, epoch and rank: the views do not depend on where a run was resumed."""
        self.epoch = epoch
        self._augment = BatchAugment(self.padding, self.flip, seed=self.seed * 100_003 + epoch * 101 + rank)

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch with its float images in [0, 1] as shown, ``view`` (B, 3) and, with a store,
        ``soft_labels`` (source name -> (B, C) logits on the images' device)."""
        if self._augment is None:
            raise RuntimeError("TrainingViews.start_epoch(epoch) must be called before the epoch's first batch")
        stored = self.store.stored_views(batch["index"], self.epoch, self.seed) if self.store is not None else None
        views, slots = stored if stored is not None else (None, None)
        images, view = self._augment(batch["image"], views)
        out = {**batch, "image": images, "view": view}
        if self.store is not None:
            out["soft_labels"] = self.store.soft_labels(batch["index"], slots, device=images.device)
        return out
