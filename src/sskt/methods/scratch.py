"""Training from scratch: the target on its own labels, nothing else."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sskt.methods.base import METHODS, BuildContext, Method, StepOutput, parse_options, target_loss_fn
from sskt.models.target import TargetNetwork


@dataclass
class ScratchOptions:
    """``target_loss``: auto (CE, or BCE for multi-label), ce, focal, bce, focal-bce."""

    target_loss: str = "auto"
    focal_gamma: float = 2.0


@METHODS.register("scratch")
class Scratch(Method):
    """The baseline every transfer method must beat: loss = target loss."""

    options_class = ScratchOptions

    def __init__(self, target: TargetNetwork, options: ScratchOptions, multilabel: bool = False) -> None:
        super().__init__(target)
        self.options = options
        self.loss_fn = target_loss_fn(options.target_loss, multilabel, options.focal_gamma)

    @classmethod
    def from_config(cls, options: dict, ctx: BuildContext) -> "Scratch":
        return cls(ctx.build_target(), parse_options(ScratchOptions, options), ctx.multilabel)

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        logits = self.target(batch["image"])
        return StepOutput(logits, {"target": self.loss_fn(logits, batch)})
