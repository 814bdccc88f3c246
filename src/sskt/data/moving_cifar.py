"""A synthetic video task: CIFAR images moving along one of several motions (the class is the motion),
to test video targets without a video dataset."""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sskt.errors import SSKTError

# ----------------------------------------------------------------------------- moving CIFAR

# Linear motions: (dx, dy) in image coordinates (y grows downward).
_LINEAR: dict[str, tuple[int, int]] = {
    "right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1),
    "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1), "up-left": (-1, -1),
}
MOTIONS: tuple[str, ...] = (*_LINEAR, "circle", "zoom-in", "zoom-out", "static-jitter")
DEFAULT_MOTIONS: tuple[str, ...] = (
    "right", "left", "up", "down", "up-right", "down-left", "circle", "zoom-in", "zoom-out", "static-jitter",
)


class MovingClips(NamedTuple):
    """Generated moving-object clips.

    Attributes:
        clips: uint8 (n, 3, T, H, W).
        labels: long (n,): index of the motion in the ``motions`` argument (the class to learn).
        image_index: long (n,): which input image moves (drawn independently of the motion, so the
            object's identity carries no information about the label).
    """

    clips: Tensor
    labels: Tensor
    image_index: Tensor


def _trajectories(
    motion: list[str], T: int, W: int, s: int, g: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Per clip and frame: object centre x, y and side length, in canvas pixels; all inside the canvas."""
    n = len(motion)
    t = torch.linspace(0, 1, T)
    m = float(W - s)  # free travel range of the full-size object's top-left corner
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    x0 = torch.zeros(n, T)
    y0 = torch.zeros(n, T)
    size = torch.full((n, T), float(s))
    for i, name in enumerate(motion):
        if name in _LINEAR:
            dx, dy = _LINEAR[name]
            dist = m * (0.6 + 0.4 * u(()))  # speed varies per clip, direction is the class
            for d, pos in ((dx, x0), (dy, y0)):
                if d == 0:
                    pos[i] = m * u(())  # a random fixed place on the still axis
                else:
                    progress = t if d > 0 else 1 - t
                    pos[i] = (m - dist) * u(()) + dist * progress
        elif name == "circle":  # clockwise on screen: the angle grows and y points down
            r = m / 2 * (0.6 + 0.4 * u(()))
            a = 2 * math.pi * (u(()) + t * (T - 1) / T)
            x0[i], y0[i] = m / 2 + r * torch.cos(a), m / 2 + r * torch.sin(a)
        elif name in ("zoom-in", "zoom-out"):
            scale = 0.5 + 0.5 * (t if name == "zoom-in" else 1 - t)
            size[i] = s * scale
            cx, cy = m * u(()), m * u(())  # top-left of the full-size box; the centre stays fixed
            x0[i], y0[i] = cx + (s - size[i]) / 2, cy + (s - size[i]) / 2
        elif name == "static-jitter":
            j = max(1, W // 32)  # +-j px of per-frame shake around a fixed place
            base_x, base_y = j + (m - 2 * j) * u(()), j + (m - 2 * j) * u(())
            x0[i] = base_x + torch.randint(-j, j + 1, (T,), generator=g)
            y0[i] = base_y + torch.randint(-j, j + 1, (T,), generator=g)
        else:
            raise SSKTError(f"unknown motion {name!r}; known: {', '.join(MOTIONS)}")
    # Whole-pixel positions keep full-size objects crisp (an exact copy of the input pixels).
    x0, y0 = x0.round(), y0.round()
    return x0 + size / 2, y0 + size / 2, size


def moving_cifar(
    images: Tensor,
    n: int,
    seed: int = 0,
    canvas: int = 64,
    frames: int = 16,
    motions: Sequence[str] = DEFAULT_MOTIONS,
    object_size: int | None = None,
    background: int = 0,
) -> MovingClips:
    """Clips of an image moving over a plain canvas; the class is the motion, not the object.

    Each clip draws a motion uniformly from ``motions`` and an image uniformly from ``images``
    (independently), then renders ``frames`` frames of the image, resized to ``object_size``
    (default ``canvas // 2``), moving along the motion: a straight line (``right``, ``left``, ``up``,
    ``down`` and diagonals; random start, random speed covering 60-100% of the free range), a
    clockwise ``circle`` around the centre, ``zoom-in`` / ``zoom-out`` (side from 50% to 100% or
    back, fixed centre) or ``static-jitter`` (a fixed place, +-1 px shake per 32 px of canvas).
    The object always stays fully inside the canvas. A 2D network sees one frame and cannot tell
    the class; a 3D network can, which is what makes this a test bed for 3D targets with 2D sources.

    Args:
        images: uint8 (N, 3, h, w), e.g. CIFAR-10 (N, 3, 32, 32).
        n: number of clips.
        seed: generator seed (same inputs and seed, same clips).
        canvas: H = W of the clip.
        frames: T.
        motions: the classes, in label order (see ``MOTIONS`` for all 12 names).
        object_size: side of the moving image in pixels.
        background: canvas grey level 0..255.

    Example:
        >>> imgs = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
        >>> m = moving_cifar(imgs, n=4, canvas=48, frames=8)
        >>> m.clips.shape, m.labels.shape
        (torch.Size([4, 3, 8, 48, 48]), torch.Size([4]))
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, h, w) tensor, got {tuple(images.shape)}")
    motions = list(motions)
    unknown = [m for m in motions if m not in MOTIONS]
    if unknown or not motions:
        raise SSKTError(f"unknown motion(s) {unknown}; known: {', '.join(MOTIONS)}")
    s = object_size or canvas // 2
    if not 4 <= s <= canvas:
        raise SSKTError(f"object_size must be between 4 and the canvas ({canvas}), got {s}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(motions), (n,), generator=g)
    image_index = torch.randint(0, images.shape[0], (n,), generator=g)
    cx, cy, side = _trajectories([motions[i] for i in labels.tolist()], frames, canvas, s, g)

    C = images.shape[1]
    obj = images[image_index]
    if obj.shape[-2:] != (s, s):
        obj = F.interpolate(obj.float(), size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        obj = obj.round_().clamp_(0, 255).to(torch.uint8)
    out = torch.full((n, C, frames, canvas, canvas), background, dtype=torch.uint8)
    # Full-size frames sit at whole-pixel positions: paste them (exact, no resampling), in chunks
    # of frames to bound the size of the broadcast index tensors.
    view = out.permute(0, 2, 3, 4, 1)  # (n, T, H, W, C) view of the same storage
    ar = torch.arange(s)
    full = (side == s).nonzero()
    for a in range(0, len(full), 1024):
        ii, ff = full[a:a + 1024].unbind(1)
        top = (cy[ii, ff] - s / 2).long()[:, None] + ar  # (F, s)
        left = (cx[ii, ff] - s / 2).long()[:, None] + ar
        view[ii[:, None, None], ff[:, None, None], top[:, :, None], left[:, None, :]] = obj[ii].permute(0, 2, 3, 1)
    # Scaled frames (zooms) are resampled: the map from canvas to object coordinates is a scale
    # plus a shift per axis, x_obj = x_canvas * W / side + (W - 2 cx) / side (align_corners=False).
    base = (torch.arange(canvas) * 2 + 1) / canvas - 1  # pixel centres in [-1, 1]
    todo = (side != s).nonzero()
    for a in range(0, len(todo), 1024):
        ii, ff = todo[a:a + 1024].unbind(1)
        sd, x, y = side[ii, ff][:, None], cx[ii, ff][:, None], cy[ii, ff][:, None]
        gx = (base * canvas / sd + (canvas - 2 * x) / sd)[:, None, :].expand(-1, canvas, -1)
        gy = (base * canvas / sd + (canvas - 2 * y) / sd)[:, :, None].expand(-1, -1, canvas)
        grid = torch.stack([gx, gy], dim=-1)
        src = obj[ii].float()
        # A mask channel so the background level is applied only outside the object.
        r = F.grid_sample(torch.cat([src, torch.ones_like(src[:, :1])], 1), grid, mode="bilinear",
                          padding_mode="zeros", align_corners=False)
        frame = r[:, :C] + (1 - r[:, C:]) * background
        out[ii, :, ff] = frame.round_().clamp_(0, 255).to(torch.uint8)
    return MovingClips(out, labels, image_index)
