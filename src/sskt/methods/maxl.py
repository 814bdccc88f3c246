"""MAXL: meta auxiliary learning (Liu, Davison, Johns, NeurIPS 2019; reference code lorenmt/maxl).

A label-generation network g (theta2) gives every training image a soft auxiliary label over psi[i]
auxiliary classes of its primary class i (hierarchical mask softmax). The multi-task network f
(theta1: the target plus an auxiliary head) learns the primary labels and the generated auxiliary
labels, both with a focal loss (gamma 2). The generator learns from the second-order gradient of
the primary loss after one virtual SGD step of f (torch.func.functional_call over the fast
weights), plus an entropy regulariser that keeps the auxiliary classes in use.

Adaptations of the reference (methods-spec section 2), said once here:
- the two passes per epoch (multi-task pass, then meta pass) are interleaved per batch (multi-task
  step, then meta step on the same batch): the same number of updates of each kind per epoch;
- f uses the run's optimiser and schedule (train.*), like every other method in a comparison; the
  generator has its own SGD (lr 1e-3, weight decay 5e-4 by default) on the same schedule;
- the virtual step's lr is f's current lr, read from its optimiser, so it follows the schedule
  exactly (the reference halves it one epoch before its StepLR does);
- the mask softmax adds log(mask) to the logits (exp(x) * 1e-8 = exp(x + log 1e-8)): the same
  result without overflow; the focal loss uses log_softmax rather than log(p + 1e-20).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from sskt.errors import SSKTError
from sskt.losses import focal_loss
from sskt.methods._util import as_list
from sskt.methods.base import METHODS, BuildContext, Method, StepOutput, parse_options
from sskt.models.heads import LinearHead
from sskt.models.target import TargetNetwork
from sskt.optim import make_optimizer, make_scheduler

OFF_BLOCK = 1e-8  # the reference's mask value outside a class's block (not 0: log and NaN safety)


@dataclass
class MAXLOptions:
    """``psi``: auxiliary classes per primary class (an int for all, or one per class; the SSKT
    README used 10 for ResNet-20 and 5 for VGG-16 on CIFAR-10). ``generator_arch``: the label
    generator's architecture (default: the target's). ``entropy_weight``: 0.2 as in the reference.
    ``generator_lr``/``generator_weight_decay``: the generator's SGD. ``inner_lr``: the virtual
    step's lr (default: the multi-task net's current lr). ``focal_gamma``: 2 on both heads."""

    psi: Any = 10
    generator_arch: str | None = None
    entropy_weight: float = 0.2
    generator_lr: float = 1e-3
    generator_weight_decay: float = 5e-4
    inner_lr: float | None = None
    focal_gamma: float = 2.0

    def psi_list(self, num_classes: int) -> list[int]:
        psi = [self.psi] * num_classes if isinstance(self.psi, int) else list(self.psi)
        if len(psi) != num_classes or any(not isinstance(p, int) or p < 1 for p in psi):
            raise SSKTError(f"method maxl: psi must be a positive int or {num_classes} positive ints "
                            f"(one per primary class), got {self.psi!r}")
        return psi


def hierarchy_mask(psi: list[int]) -> Tensor:
    """M (|psi| x sum psi): 1 where auxiliary class j belongs to primary class i, else 1e-8."""
    mask = torch.full((len(psi), sum(psi)), OFF_BLOCK)
    start = 0
    for i, n in enumerate(psi):
        mask[i, start:start + n] = 1.0
        start += n
    return mask


def mask_softmax(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """exp(x_k) M[y,k] / sum_j exp(x_j) M[y,j], computed as softmax(x + log M[y])."""
    return F.softmax(logits + mask[labels].log(), dim=1)


def soft_focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Batch mean of -sum_k t_k (1 - p_k)^gamma log p_k with p = softmax(logits), t a distribution."""
    log_p = F.log_softmax(logits, dim=1)
    return -(target * (1 - log_p.exp()) ** gamma * log_p).sum(dim=1).mean()


def batch_entropy_regulariser(aux_labels: Tensor) -> Tensor:
    """sum_k ybar_k log(ybar_k + 1e-20), ybar the batch mean: minimising it spreads the classes."""
    mean = aux_labels.mean(dim=0)
    return (mean * (mean + 1e-20).log()).sum()


@METHODS.register("maxl")
class MAXL(Method):
    """Target + auxiliary head (the multi-task net) and a label generator trained by meta-gradient.

    Example:
        >>> m = MAXL(TargetNetwork("cifar_resnet20", 2), TargetNetwork("cifar_resnet20", 6), MAXLOptions(psi=3),
        ...          example=torch.rand(2, 3, 32, 32))
        >>> m.aux_labels(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])).shape
        torch.Size([4, 6])
    """

    options_class = MAXLOptions
    single_label_only = "its hierarchy needs one primary class"
    automatic_optimization = False

    def __init__(self, target: TargetNetwork, generator: TargetNetwork, options: MAXLOptions,
                 example: Tensor) -> None:
        super().__init__(target)
        self.options = options
        psi = options.psi_list(target.num_classes)
        if generator.num_classes != sum(psi):
            raise SSKTError(f"method maxl: the generator predicts {generator.num_classes} classes, "
                            f"expected sum(psi) = {sum(psi)}")
        self.register_buffer("mask", hierarchy_mask(psi), persistent=False)
        pooled, _ = target.feature_shapes(example)
        self.aux_head = LinearHead(pooled, sum(psi))
        self.generator = generator

    @classmethod
    def from_config(cls, options: dict, ctx: BuildContext) -> "MAXL":
        opts = parse_options(MAXLOptions, options)
        target = ctx.build_target()
        generator = ctx.build_target(arch=opts.generator_arch or target.arch,
                                     num_classes=sum(opts.psi_list(ctx.num_classes)))
        return cls(target, generator, opts, torch.rand(2, *ctx.input_shape))

    # -- the pieces --------------------------------------------------------------------------
    def multitask(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(primary logits, auxiliary logits) of the multi-task net."""
        feats = self.target.forward_features(images)
        return feats.logits, self.aux_head(feats.pooled, feats.stages)

    def aux_labels(self, images: Tensor, labels: Tensor) -> Tensor:
        """The generator's soft auxiliary labels, restricted to each image's primary block."""
        return mask_softmax(self.generator(images).float(), labels, self.mask)

    def multitask_losses(self, images: Tensor, labels: Tensor, aux: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        primary, auxiliary = self.multitask(images)
        g = self.options.focal_gamma
        return primary, focal_loss(primary, labels, gamma=g), soft_focal_loss(auxiliary, aux, g)

    def multitask_parameters(self) -> list[nn.Parameter]:
        return [*self.target.parameters(), *self.aux_head.parameters()]

    def meta_loss(self, images: Tensor, labels: Tensor, inner_lr: float) -> tuple[Tensor, Tensor]:
        """(primary loss after one virtual SGD step of f, entropy regulariser), both functions of theta2."""
        aux = self.aux_labels(images, labels)
        _, pri, aux_loss = self.multitask_losses(images, labels, aux)
        names, params = zip(*[(n, p) for n, p in self.target.named_parameters() if p.requires_grad])
        # create_graph: the fast weights stay a function of theta2 through the auxiliary labels.
        grads = torch.autograd.grad(pri + aux_loss, params, create_graph=True, allow_unused=True)
        fast = {n: p if g is None else p - inner_lr * g for n, p, g in zip(names, params, grads)}
        # Batch statistics as in training, on copies of the buffers: the look-ahead moves no running average.
        buffers = {n: b.clone() for n, b in self.target.named_buffers()}
        logits = functional_call(self.target, {**fast, **buffers}, (images,))
        return focal_loss(logits, labels, gamma=self.options.focal_gamma), batch_entropy_regulariser(aux)

    # -- the loop ----------------------------------------------------------------------------
    def configure_optimizers(self, train_cfg: Any) -> Any:
        f_opt = make_optimizer(self.multitask_parameters(), train_cfg)
        # The generator's own plain SGD (no momentum), on the same schedule.
        g_opt = make_optimizer(self.generator.parameters(), train_cfg, lr=self.options.generator_lr,
                               weight_decay=self.options.generator_weight_decay, momentum=0, nesterov=False)
        return [f_opt, g_opt], [make_scheduler(f_opt, train_cfg), make_scheduler(g_opt, train_cfg)]

    def manual_step(self, batch: dict[str, Tensor], module: Any) -> StepOutput:
        images, labels = batch["image"], batch["target"]
        f_opt, g_opt = as_list(module.optimizers())
        # 1. Multi-task step on theta1; the generated labels are constants here.
        with torch.no_grad():
            aux = self.aux_labels(images, labels)
        logits, pri, aux_loss = self.multitask_losses(images, labels, aux)
        f_opt.zero_grad()
        module.manual_backward(pri + aux_loss)
        f_opt.step()
        # 2. Meta step on theta2 through the look-ahead of theta1.
        inner_lr = self.options.inner_lr or f_opt.param_groups[0]["lr"]
        meta_pri, entropy = self.meta_loss(images, labels, inner_lr)
        g_params = [p for p in self.generator.parameters() if p.requires_grad]
        # autograd.grad, not backward: nothing accumulates in theta1's .grad (a pitfall of the reference).
        g_grads = torch.autograd.grad(meta_pri + self.options.entropy_weight * entropy, g_params, allow_unused=True)
        g_opt.zero_grad()
        for p, g in zip(g_params, g_grads):
            p.grad = None if g is None else g.detach()
        g_opt.step()
        return StepOutput(logits.detach(), {"target": pri.detach(), "aux": aux_loss.detach(),
                                            "meta/primary": meta_pri.detach(),
                                            "meta/entropy": (self.options.entropy_weight * entropy).detach()})
