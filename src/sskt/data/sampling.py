"""Training batches as a pure function of (seed, epoch, rank): labelled images, plus unlabelled ones.

The order of every epoch is drawn from a generator seeded by the run's seed and the epoch, so a
resumed run sees exactly the batches the uninterrupted run would have seen, and DDP ranks take
disjoint slices of the same global order instead of needing Lightning's DistributedSampler.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Epoch:
    """Holds the epoch; Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` before each epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class MixedBatchSampler:
    """Batches of ``batch_size`` labelled images (dataset rows ``0..n_labeled-1``, reshuffled every epoch,
    last partial batch dropped) and ``round(batch_size * ratio)`` unlabelled ones (rows
    ``n_labeled..n_labeled+n_unlabeled-1``, a stream of seeded permutations that continues across
    epochs, so every unlabelled image is seen once before any is seen twice).

    An epoch is one pass over the labelled images, as without unlabelled ones: the number of steps
    and the schedule don't change when unlabelled images are added.

    Example:
        >>> s = MixedBatchSampler(n_labeled=8, n_unlabeled=100, batch_size=4, ratio=2.0, seed=0)
        >>> batches = list(s)
        >>> len(batches), len(batches[0]), sum(i < 8 for i in batches[0])
        (2, 12, 4)
    """

    def __init__(self, n_labeled: int, n_unlabeled: int, batch_size: int, ratio: float = 1.0, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, labels: Tensor | None = None) -> None:
        self.n_labeled, self.n_unlabeled = n_labeled, n_unlabeled
        # Class-balanced draws: each labelled image weighted by 1 / its class's count (with replacement).
        self.weights = None if labels is None else class_balanced_weights(labels)
        self.batch_size, self.seed = batch_size, seed
        self.unlabeled_per_batch = max(1, round(batch_size * ratio)) if n_unlabeled else 0
        self._rank, self._world = rank, world_size
        self.sampler = _Epoch()

    def _placement(self) -> tuple[int, int]:
        if self._rank is not None and self._world is not None:
            return self._rank, self._world
        return _rank_and_world()

    def __len__(self) -> int:
        _, world = self._placement()
        return self.n_labeled // (self.batch_size * world)

    def _unlabeled_stream(self, start: int, count: int) -> Tensor:
        """Positions ``start .. start+count-1`` of the endless stream of unlabelled permutations."""
        out = []
        pos = start
        while len(out) < count:
            cycle, offset = divmod(pos, self.n_unlabeled)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + cycle * 7_919 + 1)
            perm = torch.randperm(self.n_unlabeled, generator=g)
            take = perm[offset:offset + count - len(out)]
            out.extend(take.tolist())
            pos += len(take)
        return torch.tensor(out, dtype=torch.long) + self.n_labeled

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = self._placement()
        epoch = self.sampler.epoch
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 104_729 + 3)
        if self.weights is None:
            order = torch.randperm(self.n_labeled, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n_labeled, replacement=True, generator=g)
        steps = len(self)
        b, u = self.batch_size, self.unlabeled_per_batch
        if u:
            # Where this epoch starts in the unlabelled stream: every earlier epoch used steps * world * u.
            stream = self._unlabeled_stream(epoch * steps * world * u, steps * world * u)
        for step in range(steps):
            first = (step * world + rank) * b
            batch = order[first:first + b].tolist()
            if u:
                first_u = (step * world + rank) * u
                batch += stream[first_u:first_u + u].tolist()
            yield batch


def class_balanced_weights(labels: Tensor) -> Tensor:
    """Per-image weights 1 / (images of its class): every class drawn equally often.

    Example:
        >>> class_balanced_weights(torch.tensor([0, 0, 1, 1, 1, 1])).tolist()
        [0.5, 0.5, 0.25, 0.25, 0.25, 0.25]
    """
    return (1.0 / torch.bincount(labels).float())[labels]


def needs_balancing(labels: Tensor, ratio: float = 3.0) -> bool:
    """True when the largest class has more than ``ratio`` times the images of the smallest present one."""
    counts = torch.bincount(labels)
    counts = counts[counts > 0]
    return len(counts) > 1 and int(counts.max()) > ratio * int(counts.min())


def epochs_per_unlabeled_pass(n_labeled: int, n_unlabeled: int, batch_size: int, ratio: float) -> float:
    """How many epochs it takes to show every unlabelled image once (for the run's log line)."""
    per_epoch = (n_labeled // batch_size) * max(1, round(batch_size * ratio))
    return math.inf if per_epoch == 0 else n_unlabeled / per_epoch
