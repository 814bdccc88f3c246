"""The target network: a plain classifier plus its input normalisation and feature taps."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.models.factory import classifier_name, create_model, model_spec
from sskt.models.taps import FeatureTaps

EXPORT_FORMAT = "sskt-model-v1"


class Normalize(nn.Module):
    """(x - mean) / std over the channel axis (dim 1), for images and clips alike."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


def _per_channel(values: Sequence[float], channels: int) -> tuple[float, ...]:
    """Statistics for ``channels`` channels; RGB statistics collapse to their mean for grey input."""
    values = tuple(float(v) for v in values)
    return values if len(values) == channels else (sum(values) / len(values),) * channels


class NormalizedClassifier(nn.Module):
    """What ``sskt export`` writes: images in [0, 1] -> logits, no auxiliary heads, no source."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.normalize(x))


@dataclass
class Features:
    """One forward of the target: main logits, pooled final features and tapped stage maps."""

    logits: Tensor
    pooled: Tensor
    stages: list[Tensor]


class TargetNetwork(nn.Module):
    """A classifier built by architecture name, with normalisation and hooks on its stages.

    ``model_kwargs``: more arguments for the architecture (timm's ``drop_rate``, ``drop_path_rate``, ...;
    see :func:`~sskt.models.factory.create_model`), kept for :meth:`export`'s copy.

    Example:
        >>> net = TargetNetwork("cifar_resnet20", num_classes=10)
        >>> f = net.forward_features(torch.rand(2, 3, 32, 32))
        >>> f.logits.shape, f.pooled.shape, [tuple(s.shape[1:]) for s in f.stages]
        (torch.Size([2, 10]), torch.Size([2, 64]), [(16, 32, 32), (32, 16, 16), (64, 8, 8)])
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        in_chans: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        stages: Sequence[str] | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        spec = model_spec(arch)
        self.arch, self.num_classes, self.in_chans = arch, num_classes, in_chans
        self.model_kwargs = dict(model_kwargs or {})
        self.model = create_model(arch, num_classes, in_chans, self.model_kwargs)
        self.normalize = Normalize(_per_channel(mean or spec.mean, in_chans), _per_channel(std or spec.std, in_chans))
        self.stage_names = list(stages or spec.stages)
        if not self.stage_names:
            raise SSKTError(f"stages of {arch!r} are unknown; set target.stages to module names")
        self.classifier_name = classifier_name(self.model)
        self.taps = FeatureTaps(self.model, self.stage_names, self.classifier_name)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.normalize(x))

    def forward_features(self, x: Tensor) -> Features:
        with self.taps:
            logits = self.model(self.normalize(x))
        assert self.taps.pooled is not None
        return Features(logits, self.taps.pooled, self.taps.stages)

    @torch.no_grad()
    def feature_shapes(self, example: Tensor) -> tuple[int, list[tuple[int, ...]]]:
        """Pooled width and stage shapes (without batch) for an example input; keeps train/eval mode."""
        was_training = self.training
        self.eval()
        f = self.forward_features(example)
        self.train(was_training)
        return f.pooled.shape[1], [tuple(s.shape[1:]) for s in f.stages]

    def export(self) -> NormalizedClassifier:
        """The classifier alone (a copy of its weights), for inference or as a later source."""
        clone = create_model(self.arch, self.num_classes, self.in_chans, self.model_kwargs)
        clone.load_state_dict(self.model.state_dict())
        return NormalizedClassifier(clone, self.normalize.mean.tolist(), self.normalize.std.tolist()).eval()

    def save(self, path: str | os.PathLike, classes: Sequence[str] | None = None, **meta: object) -> Path:
        """Write a self-describing model file (loadable by :func:`sskt.models.weights.load_network`)."""
        from sskt.io import atomic_torch_save

        payload = {
            "format": EXPORT_FORMAT,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "mean": self.normalize.mean.tolist(),
            "std": self.normalize.std.tolist(),
            "classes": list(classes) if classes else None,
            "state_dict": self.model.state_dict(),
            **meta,
        }
        return atomic_torch_save(payload, path)
