"""Forward hooks that expose a model's stages and pooled features without editing its code."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from sskt.errors import SSKTError


class FeatureTaps:
    """Records the outputs of named stage modules and the input of the classifier.

    Hooks stay registered; recording is on only inside :meth:`recording` so plain forwards
    (evaluation, export) keep no references to activations.

    Example:
        >>> import torch
        >>> from sskt.models.factory import create_model
        >>> net = create_model("cifar_resnet20", 10)
        >>> taps = FeatureTaps(net, ["layer1", "layer3"], "linear")
        >>> with taps.recording():
        ...     _ = net(torch.zeros(1, 3, 32, 32))
        >>> [tuple(t.shape) for t in taps.stages], tuple(taps.pooled.shape)
        ([(1, 16, 32, 32), (1, 64, 8, 8)], (1, 64))
    """

    def __init__(self, model: nn.Module, stages: Sequence[str], classifier: str) -> None:
        modules = dict(model.named_modules())
        missing = [s for s in [*stages, classifier] if s not in modules]
        if missing:
            raise SSKTError(
                f"{type(model).__name__} has no module(s) {missing}; set target.stages to names from "
                f"model.named_modules()"
            )
        self.stage_names = list(stages)
        self._active = False
        self._stages: dict[str, Tensor] = {}
        self.pooled: Tensor | None = None
        self._handles = [modules[s].register_forward_hook(self._stage_hook(s)) for s in stages]
        self._handles.append(modules[classifier].register_forward_pre_hook(self._classifier_hook))

    def _stage_hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            if self._active:
                self._stages[name] = output

        return hook

    def _classifier_hook(self, _module: nn.Module, inputs: tuple) -> None:
        if self._active:
            self.pooled = inputs[0].flatten(1)

    @property
    def stages(self) -> list[Tensor]:
        return [self._stages[s] for s in self.stage_names]

    def recording(self) -> "FeatureTaps":
        return self

    def __enter__(self) -> "FeatureTaps":
        self._active = True
        self._stages, self.pooled = {}, None
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
