"""What a 2D source network sees of a video clip: its centre frame, or n frames averaged.

The SSKT 3D code feeds the ImageNet/Places365 sources the centre frame ``clip[:, :, T // 2]``
(:func:`centre_frame`). :func:`sample_frames` + :func:`average_frame_outputs` generalise this to n
evenly spaced frames whose source outputs are averaged per clip; with ``n = 1`` both paths pick the
same frame. These helpers only move tensors: the :class:`~sskt.sources.source.Source` still resizes
and normalises its input with its own statistics (which also fixes the official code's missing
ImageNet normalisation of 3D source inputs).

Averaging choice: **logits** by default. The auxiliary loss applies ``softmax(q / T)`` to the source
output, so the average must still be a logit vector for the temperature to keep its meaning; the mean
of logits is (up to normalisation) the geometric mean of the per-frame distributions, a standard way
to pool an ensemble before distillation, and it is exact for ``n = 1``. ``mode="probs"`` instead
averages softmax probabilities (the arithmetic mixture, closer to Hara et al.'s clip averaging) and
returns their log, so the caller still receives logits and ``softmax`` of the result is that mixture
at temperature 1 (at other temperatures it is the mixture sharpened or flattened as a whole).
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor


def _check(clips: Tensor) -> None:
    if clips.ndim != 5:
        raise ValueError(f"clips must be (B, C, T, H, W), got shape {tuple(clips.shape)}")


def centre_frame(clips: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B, C, H, W): frame ``T // 2``, as the official SSKT 3D code does."""
    _check(clips)
    return clips[:, :, clips.shape[2] // 2]


def frame_indices(num_frames: int, n: int) -> Tensor:
    """``n`` evenly spaced frame indices: the centres of n equal segments of the clip.

    ``n = 1`` gives ``T // 2`` (the centre frame); ``n = T`` gives every frame.
    """
    if not 1 <= n <= num_frames:
        raise ValueError(f"n must be between 1 and the clip length {num_frames}, got {n}")
    return ((torch.arange(n) * 2 + 1) * num_frames) // (2 * n)


def sample_frames(clips: Tensor, n: int) -> Tensor:
    """(B, C, T, H, W) -> (B * n, C, H, W): n evenly spaced frames per clip, clip-major order.

    Rows ``b * n .. b * n + n - 1`` are the frames of clip ``b``, which is the layout
    :func:`average_frame_outputs` expects.
    """
    _check(clips)
    idx = frame_indices(clips.shape[2], n).to(clips.device)
    frames = clips.index_select(2, idx)  # (B, C, n, H, W)
    return frames.transpose(1, 2).reshape(-1, clips.shape[1], *clips.shape[3:])


def average_frame_outputs(outputs: Tensor, n: int, mode: Literal["logits", "probs"] = "logits") -> Tensor:
    """(B * n, K) per-frame source logits -> (B, K) per-clip logits.

    Args:
        outputs: source logits for :func:`sample_frames`'s rows.
        n: frames per clip.
        mode: ``logits`` (default): mean of the logits. ``probs``: log of the mean softmax
            probability. See the module docstring for why logits is the default.
    """
    if outputs.ndim != 2 or outputs.shape[0] % n:
        raise ValueError(f"outputs must be (B * {n}, K), got shape {tuple(outputs.shape)}")
    per_clip = outputs.view(-1, n, outputs.shape[1])
    if mode == "logits":
        return per_clip.mean(1)
    if mode == "probs":
        # logsumexp form of log(mean(softmax)) for numerical stability.
        log_p = torch.log_softmax(per_clip.float(), dim=-1)
        return (torch.logsumexp(log_p, dim=1) - torch.log(torch.tensor(float(n)))).to(outputs.dtype)
    raise ValueError(f"mode must be 'logits' or 'probs', got {mode!r}")


def clip_source_logits(
    source: Callable[[Tensor], Tensor], clips: Tensor, frames: int | None = None,
    mode: Literal["logits", "probs"] = "logits",
) -> Tensor:
    """Run a 2D source on clips: centre frame when ``frames`` is None, else ``frames`` averaged.

    Args:
        source: maps (N, C, H, W) images to (N, K) logits (e.g. a ``Source``).
        clips: (B, C, T, H, W), in whatever range ``source`` expects (float [0, 1] in sskt).
        frames: None for the centre frame (the SSKT default), or the number of frames to average.
        mode: how to average, see :func:`average_frame_outputs`.

    Returns:
        (B, K) logits.
    """
    if frames is None:
        return source(centre_frame(clips))
    return average_frame_outputs(source(sample_frames(clips, frames)), frames, mode)


def frames_for_source(clips: Tensor, spec: str) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The frames a 2D source sees of (B, C, T, H, W) clips, and how to fold its logits per clip.

    Args:
        clips: (B, C, T, H, W) clips (float in [0, 1] in sskt; the source normalises them itself).
        spec: a source's ``frames`` setting: ``centre`` (or ``center``) for frame ``T // 2``, as the
            SSKT 3D code does; ``mean<N>`` (e.g. ``mean4``) for N evenly spaced frames whose logits
            are averaged per clip; ``mean`` for all T frames averaged.

    Returns:
        ``(frames, regroup)``: frames (B, C, H, W) or (B * N, C, H, W), and a function mapping the
        source's logits on them to (B, K) logits, one row per clip.

    Example:
        >>> x, regroup = frames_for_source(torch.rand(2, 3, 8, 4, 4), "mean4")
        >>> x.shape, regroup(torch.zeros(8, 10)).shape
        (torch.Size([8, 3, 4, 4]), torch.Size([2, 10]))
    """
    from sskt.errors import SSKTError

    if clips.ndim != 5:
        raise SSKTError(f"2D sources on clips need (B, C, T, H, W) input, got shape {tuple(clips.shape)}")
    t = clips.shape[2]
    key = spec.strip().lower()
    if key in ("centre", "center"):
        return centre_frame(clips), lambda z: z
    if key.startswith("mean"):
        rest = key[len("mean"):]
        if rest and not rest.isdigit():
            raise SSKTError(f"source frames {spec!r}: use 'centre', 'mean' or 'mean<N>' (e.g. mean4)")
        n = int(rest) if rest else t
        if not 1 <= n <= t:
            raise SSKTError(f"source frames {spec!r}: N must be between 1 and the clip length {t}")
        return sample_frames(clips, n), lambda z: average_frame_outputs(z, n)
    raise SSKTError(f"source frames {spec!r}: use 'centre', 'mean' or 'mean<N>' (e.g. mean4)")
