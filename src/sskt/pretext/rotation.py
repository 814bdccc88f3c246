"""RotNet pretext task (Gidaris et al., ICLR 2018): predict which of 4 rotations was applied."""
from __future__ import annotations

import torch
from torch import Tensor

NUM_ROTATIONS = 4


def rotation_batch(images: Tensor) -> tuple[Tensor, Tensor]:
    """Every image at 0, 90, 180 and 270 degrees (counter-clockwise), with labels 0..3.

    Feeding all four rotations of an image in one batch is what the RotNet authors found best.
    Output order is rotation-major: ``out[k * B + i]`` is image ``i`` rotated by ``k * 90`` degrees.

    Args:
        images: (B, C, H, W) with H == W (a 90-degree turn must keep the shape to batch).

    Returns:
        images (4B, C, H, W), labels (4B,) long.

    Example:
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> rotated, labels = rotation_batch(x)
        >>> labels.tolist(), rotated[1, 0].tolist()
        ([0, 1, 2, 3], [[1.0, 3.0], [0.0, 2.0]])
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square (B, C, H, H), got shape {tuple(images.shape)}")
    b = images.shape[0]
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(NUM_ROTATIONS)])
    labels = torch.arange(NUM_ROTATIONS, device=images.device).repeat_interleave(b)
    return rotated, labels


def random_rotation_batch(images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One random rotation per image: a quarter of the network compute of :func:`rotation_batch`.

    Example:
        >>> x = torch.rand(8, 3, 32, 32)
        >>> rotated, labels = random_rotation_batch(x, torch.Generator().manual_seed(0))
        >>> rotated.shape, bool((labels < 4).all())
        (torch.Size([8, 3, 32, 32]), True)
    """
    every, labels = rotation_batch(images)
    b = images.shape[0]
    k = torch.randint(0, NUM_ROTATIONS, (b,), generator=generator).to(images.device)
    pick = k * b + torch.arange(b, device=images.device)
    return every[pick], labels[pick]
