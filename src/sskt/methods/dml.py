"""Deep mutual learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018).

K >= 2 peers (same or different architectures) train together from scratch, with no pretrained
teacher. Peer k minimises CE(z_k, y) + mean over l != k of KL(softmax(z_l) || softmax(z_k)), the
peers' predictions z_l being constants. ``update: sequential`` follows the paper's Algorithm 1
(update peer 1, recompute its prediction, update peer 2, ...); ``simultaneous`` updates every peer
from one forward pass, as most reimplementations do. Peer 0 is the target: its test accuracy is
the method's number (result.json's final); the other peers' accuracies are recorded beside it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.evaluation.scoring import evaluate_on_test
from sskt.losses import kd_loss
from sskt.methods._util import as_list
from sskt.methods.base import METHODS, BuildContext, Method, StepOutput, parse_options
from sskt.models.target import TargetNetwork
from sskt.optim import make_optimizer, make_scheduler

UPDATES = ("sequential", "simultaneous")


@dataclass
class DMLOptions:
    """``peers``: architectures of the peers besides the target (``same`` = the target's), so the
    default is two identical networks. ``update``: ``sequential`` (paper) or ``simultaneous``.
    ``temperature``: 1 in the paper. ``evaluate_peers``: record every peer's test accuracy."""

    peers: list[str] = field(default_factory=lambda: ["same"])
    update: str = "sequential"
    temperature: float = 1.0
    evaluate_peers: bool = True

    def __post_init__(self) -> None:
        if not self.peers:
            raise SSKTError("method dml needs at least one peer besides the target, e.g. peers: [same]")
        if self.update not in UPDATES:
            raise SSKTError(f"method dml: update must be one of {UPDATES}, got {self.update!r}")
        if self.temperature <= 0:
            raise SSKTError(f"method dml: temperature must be > 0, got {self.temperature}")


def peer_loss(logits: Sequence[Tensor], k: int, target: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(CE, mean KL from every other peer's detached prediction) for peer ``k``."""
    others = [z.detach() for i, z in enumerate(logits) if i != k]
    # kd_loss is T^2 * batch-mean KL(softmax(teacher/T) || softmax(student/T)); T = 1 is the paper's KL.
    kl = torch.stack([kd_loss(logits[k], z, temperature) for z in others]).mean()
    return F.cross_entropy(logits[k], target), kl


@contextlib.contextmanager
def frozen_bn_statistics(module: nn.Module) -> Iterator[None]:
    """Forward in train mode (batch statistics) without moving BatchNorm running averages: a
    recomputed prediction must not count the batch twice."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@METHODS.register("dml")
class DML(Method):
    """The target and its peers, each learning from the labels and from the others' predictions.

    One optimiser per peer (same SGD settings and schedule): in the sequential update each peer
    steps on its own after its own backward, and its momentum never mixes with another peer's.

    Example:
        >>> m = DML([TargetNetwork("cifar_resnet20", 10), TargetNetwork("cifar_resnet20", 10)], DMLOptions())
        >>> losses = m.peer_losses(m.peer_logits(torch.rand(4, 3, 32, 32)), torch.arange(4))
        >>> sorted(losses[1])
        ['ce', 'kl']
    """

    options_class = DMLOptions
    single_label_only = "softmax KL between peers"
    automatic_optimization = False

    def __init__(self, peers: Sequence[TargetNetwork], options: DMLOptions, test_data: Any = None) -> None:
        super().__init__(peers[0])
        self.options = options
        self.others = nn.ModuleList(peers[1:])
        self._test_data = test_data

    @classmethod
    def from_config(cls, options: dict, ctx: BuildContext) -> "DML":
        opts = parse_options(DMLOptions, options)
        target = ctx.build_target()
        peers = [target] + [ctx.build_target(arch=target.arch if a == "same" else a) for a in opts.peers]
        return cls(peers, opts, ctx.test_data)

    @property
    def peers(self) -> list[TargetNetwork]:
        return [self.target, *self.others]

    def peer_logits(self, images: Tensor) -> list[Tensor]:
        return [p(images) for p in self.peers]

    def peer_losses(self, logits: Sequence[Tensor], target: Tensor) -> list[dict[str, Tensor]]:
        return [dict(zip(("ce", "kl"), peer_loss(logits, k, target, self.options.temperature)))
                for k in range(len(logits))]

    def configure_optimizers(self, train_cfg: Any) -> Any:
        optimizers = [make_optimizer(peer.parameters(), train_cfg) for peer in self.peers]
        return optimizers, [make_scheduler(opt, train_cfg) for opt in optimizers]

    @staticmethod
    def _named(per_peer: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        # Peer 0's CE is logged as "target" like every other method's main loss.
        out: dict[str, Tensor] = {}
        for k, parts in enumerate(per_peer):
            out["target" if k == 0 else f"ce/peer{k}"] = parts["ce"]
            out[f"kl/peer{k}"] = parts["kl"]
        return out

    def manual_step(self, batch: dict[str, Tensor], module: Any) -> StepOutput:
        images, target = batch["image"], batch["target"]
        optimizers = as_list(module.optimizers())
        logits = self.peer_logits(images)
        first = logits[0].detach()
        per_peer: list[dict[str, Tensor]] = []
        if self.options.update == "simultaneous":
            per_peer = self.peer_losses(logits, target)
            for opt in optimizers:
                opt.zero_grad()
            # Each loss reaches only its own peer (the others are detached): one backward serves all.
            module.manual_backward(sum(p["ce"] + p["kl"] for p in per_peer))
            for opt in optimizers:
                opt.step()
        else:
            for k, (peer, opt) in enumerate(zip(self.peers, optimizers)):
                ce, kl = peer_loss(logits, k, target, self.options.temperature)
                opt.zero_grad()
                module.manual_backward(ce + kl)
                opt.step()
                per_peer.append({"ce": ce.detach(), "kl": kl.detach()})
                # The later peers learn from this peer's updated prediction (paper, Algorithm 1);
                # their own predictions are unchanged because their weights are.
                with torch.no_grad(), frozen_bn_statistics(peer):
                    logits[k] = peer(images)
        return StepOutput(first, {k: v.detach() for k, v in self._named(per_peer).items()})

    def extra_results(self) -> dict[str, Any]:
        # Peer 0 is the target: its accuracy is the run's "final" (the method's number), so only
        # the other peers are evaluated here (one full test pass each).
        out: dict[str, Any] = {"dml_reported_peer": "peer0 (the target) = final"}
        if self.options.evaluate_peers and self._test_data is not None:
            out["dml_peer_acc"] = {f"peer{k}_{p.arch}": evaluate_on_test(p, self._test_data)
                                   for k, p in enumerate(self.peers) if k > 0}
        return out
