"""Augmentation of whole batches on tensors: random crop with zero padding and horizontal flip; mixup.

Each image's view is described by ``(dx, dy, flip)``, so any view can be rebuilt exactly
(:func:`apply_view`) — the soft-label cache replays stored views this way.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def apply_view(images: Tensor, view: Tensor, padding: int) -> Tensor:
    """Crop each image at offset ``(dx, dy)`` of its zero-padded copy and flip it if asked.

    Works on images (B,C,H,W) and clips (B,C,T,H,W) (the same crop for every frame).

    Example:
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> apply_view(x, torch.tensor([[1, 1, 0]]), padding=1).equal(x)  # centre offset = identity
        True
    """
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    view = view.to(images.device)
    dx, dy, flip = view[:, 0], view[:, 1], view[:, 2].bool()
    out = images
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        lead = (1,) * (images.ndim - 3)
        rows = (dy[:, None] + torch.arange(h, device=images.device)).view(b, *lead, h, 1)
        out = padded.gather(-2, rows.expand(*padded.shape[:-2], h, padded.shape[-1]))
        cols = (dx[:, None] + torch.arange(w, device=images.device)).view(b, *lead, 1, w)
        out = out.gather(-1, cols.expand(*out.shape[:-1], w))
    mask = flip.view(b, *(1,) * (images.ndim - 1))
    return torch.where(mask, out.flip(-1), out)


class BatchAugment:
    """Random crop (zero padding ``padding`` px) and horizontal flip of a batch.

    Returns float images in [0, 1] and the (B,3) long tensor of views ``(dx, dy, flip)``.

    Example:
        >>> aug = BatchAugment(padding=4, flip=True, seed=0)
        >>> x, view = aug(torch.zeros(8, 3, 32, 32, dtype=torch.uint8))
        >>> x.shape, view.shape, bool(view[:, :2].max() <= 8)
        (torch.Size([8, 3, 32, 32]), torch.Size([8, 3]), True)
    """

    def __init__(self, padding: int = 4, flip: bool = True, seed: int = 0) -> None:
        self.padding, self.flip = padding, flip
        self.generator = torch.Generator().manual_seed(seed)

    def sample_views(self, n: int) -> Tensor:
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=self.generator)
        flips = torch.randint(0, 2, (n, 1), generator=self.generator) if self.flip else torch.zeros(n, 1, dtype=torch.long)
        return torch.cat([offsets, flips], dim=1)

    def __call__(self, images: Tensor, view: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Augment ``images``; with ``view`` given (e.g. the stored views of an exact soft-label cache),
        replay those views instead of drawing new ones."""
        if view is None:
            view = self.sample_views(images.shape[0])
        return to_float(apply_view(images, view, self.padding)), view.to(images.device)


def mix_images(images: Tensor, alpha: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mixup (Zhang et al. 2018) of a batch with a shuffled copy of itself, one weight per image:
    image i becomes ``lam[i] * images[i] + (1 - lam[i]) * images[perm[i]]``, ``lam ~ Beta(alpha, alpha)``.

    Drawn from ``seed`` alone (no global generator), so a resumed run mixes what the uninterrupted one did.
    Returns ``(mixed, lam (B,), perm (B,))``.

    Example:
        >>> x = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
        >>> mixed, lam, perm = mix_images(x, alpha=1.0, seed=0)
        >>> bool(torch.allclose(mixed[0], lam[0] * x[0] + (1 - lam[0]) * x[perm[0]]))
        True
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    n = images.shape[0]
    perm = torch.from_numpy(rng.permutation(n)).to(images.device)
    lam = torch.from_numpy(rng.beta(alpha, alpha, n)).to(images.device, images.dtype)
    shape = (n,) + (1,) * (images.dim() - 1)
    return lam.view(shape) * images + (1 - lam.view(shape)) * images[perm], lam, perm


def batch_seed(batch: dict[str, Tensor]) -> int:
    """A seed that is a pure function of what a training batch is (its images' indices and views, else its
    pixels): randomness drawn from it is the same in a resumed run, whatever the global generators hold."""
    h = hashlib.blake2b(digest_size=8)
    keys = [k for k in ("index", "view") if k in batch] or ["image"]
    for key in keys:
        h.update(batch[key].detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little") >> 1
