"""Fine-tuning: the target starts from a pretrained checkpoint, then trains on its own labels.

``target.checkpoint`` holds the weights; BuildContext.build_target loads them and starts a fresh
classifier when the checkpoint's has another number of classes. ``reset_classifier`` starts a fresh
one anyway (same number of classes, different meaning, e.g. Fashion-MNIST -> CIFAR-10), and
``backbone_lr_mult`` gives the backbone a lower learning rate than the classifier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from sskt.errors import SSKTError
from sskt.methods.base import METHODS, BuildContext, Method, StepOutput, parse_options, target_loss_fn
from sskt.models.target import TargetNetwork


@dataclass
class FinetuneOptions:
    """``backbone_lr_mult``: backbone lr = train.lr x this (1 = one lr for all, 0 = linear probe).
    ``reset_classifier``: re-initialise the classifier even when its shape fits the new task.
    ``target_loss``: auto (CE, or BCE for multi-label), ce, focal, bce, focal-bce."""

    backbone_lr_mult: float = 1.0
    reset_classifier: bool = False
    target_loss: str = "auto"
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        if self.backbone_lr_mult < 0:
            raise SSKTError(f"method finetune: backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")


@METHODS.register("finetune")
class Finetune(Method):
    """The target initialised from ``target.checkpoint`` and trained on the target labels."""

    options_class = FinetuneOptions

    def __init__(self, target: TargetNetwork, options: FinetuneOptions, multilabel: bool = False) -> None:
        super().__init__(target)
        self.options = options
        self.loss_fn = target_loss_fn(options.target_loss, multilabel, options.focal_gamma)
        if options.reset_classifier:
            head = target.model.get_submodule(target.classifier_name)
            head.reset_parameters()  # the layer's own default initialisation

    @classmethod
    def from_config(cls, options: dict, ctx: BuildContext) -> "Finetune":
        opts = parse_options(FinetuneOptions, options)
        if not ctx.target.checkpoint and not ctx.target.pretrained:
            raise SSKTError("method finetune needs target.checkpoint or target.pretrained: true (pretrained weights); "
                            "without one use method scratch")
        return cls(ctx.build_target(), opts, ctx.multilabel)

    def param_groups(self, train_cfg: Any) -> list[dict]:
        prefix = f"model.{self.target.classifier_name}."
        named = [(n, p) for n, p in self.target.named_parameters() if p.requires_grad]
        head = [p for n, p in named if n.startswith(prefix)]
        backbone = [p for n, p in named if not n.startswith(prefix)]
        # A per-group "lr" overrides the optimiser default; schedulers scale each group's own lr.
        return [{"params": backbone, "lr": train_cfg.lr * self.options.backbone_lr_mult},
                {"params": head, "lr": train_cfg.lr}]

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        logits = self.target(batch["image"])
        return StepOutput(logits, {"target": self.loss_fn(logits, batch)})
