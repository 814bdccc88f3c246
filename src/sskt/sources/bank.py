"""All sources of a run, evaluated together on one batch."""
from __future__ import annotations

import contextlib
from typing import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.sources.source import Source

PRECISIONS = ("fp32", "bf16", "auto")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls are fast here (CUDA with bf16, or a CPU with AVX-512 bf16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


class SourceBank(nn.Module):
    """Runs every source on the same view of a batch, once, with no autograd.

    Work shared between sources is done once per batch: the view is resized once per distinct
    input size. With ``precision="bf16"`` (or ``"auto"`` on hardware with fast bf16) sources run
    under bf16 autocast and in channels_last; outputs are always returned as float32.

    Example:
        >>> from sskt.models.factory import create_model
        >>> bank = SourceBank([Source("a", create_model("cifar_resnet20", 10), 10, input_size=32)])
        >>> {k: tuple(v.shape) for k, v in bank(torch.rand(2, 3, 32, 32)).items()}
        {'a': (2, 10)}
    """

    def __init__(self, sources: Sequence[Source], precision: str = "fp32") -> None:
        super().__init__()
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise SSKTError(f"source names must be unique, got {names}")
        if precision not in PRECISIONS:
            raise SSKTError(f"source precision must be one of {PRECISIONS}, got {precision!r}")
        self.sources = nn.ModuleList(sources)
        self.precision = precision
        if precision != "fp32":
            for s in self.sources:
                s.to(memory_format=torch.channels_last)

    def resolved_precision(self, src: Source, device: torch.device) -> str:
        """``bf16`` or ``fp32``: what ``src`` runs in on ``device`` (part of the soft-label cache key).

        ``auto`` means bf16 where the hardware is fast at it, except for networks with depthwise
        (grouped) convolutions on a CPU: oneDNN's bf16 depthwise kernels are slow, and an ImageNet
        EfficientNet-Lite0 ran 8x (64 px) to 30x (96 px) slower in bf16 than in fp32 here."""
        if self.precision != "auto":
            return self.precision
        if not bf16_supported(device):
            return "fp32"
        if device.type == "cpu" and _has_grouped_conv(src.network):
            return "fp32"
        return "bf16"

    def _autocast(self, src: Source, device: torch.device) -> contextlib.AbstractContextManager:
        if self.resolved_precision(src, device) != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def forward(self, images: Tensor, skip: Collection[str] = ()) -> dict[str, Tensor]:
        """Logits of every source (but those named in ``skip``) for a batch in [0, 1]: (B,C,H,W) images or
        (B,C,T,H,W) clips."""
        out: dict[str, Tensor] = {}
        resized: dict[tuple, Tensor] = {}
        with torch.inference_mode():
            for src in self.sources:
                if src.name in skip:
                    continue
                view, regroup = _frames_for(src, images)
                size = src.output_size(view.shape[-2])
                key = (src.frames if images.ndim == 5 else "", size)
                if key not in resized:
                    x = view
                    if size != x.shape[-2] or size != x.shape[-1]:
                        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
                    if self.precision != "fp32":
                        x = x.contiguous(memory_format=torch.channels_last)
                    resized[key] = x
                with self._autocast(src, images.device):
                    logits = src.network(src.normalize(resized[key])).float()
                if not bool(torch.isfinite(logits).all()):  # checked where computed: a cache never stores NaN
                    raise SSKTError(f"source {src.name!r} gave non-finite outputs (NaN or inf) on a batch of "
                                    f"{images.shape[0]} images; check its checkpoint for NaN weights, or remove "
                                    f"this source")
                out[src.name] = regroup(logits)
        # Leave inference mode: clones are ordinary tensors that losses may save for backward.
        return {k: v.clone() for k, v in out.items()}


def _has_grouped_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in module.modules())


def _frames_for(src: Source, images: Tensor):
    """For clips, the frames a 2D source sees and how to fold its outputs back to one per clip."""
    if images.ndim == 4:
        return images, lambda z: z
    from sskt.sources.frames import frames_for_source

    return frames_for_source(images, src.frames)
