"""Per-source weights of SSKT's auxiliary losses: fixed, or set while training.

``fixed``: each source's ``alpha``, as in the paper.
``gradsim`` (Du et al. 2018, "Adapting Auxiliary Losses Using Gradient Similarity", their weighted variant):
every ``every`` steps, the cosine between the gradient of the target loss and that of each auxiliary loss
on the target's deepest stage (the shared layers nearest the heads; the whole trunk would cost a backward
pass through the whole network per source), smoothed over steps; what reaches the shared layers from a
source is scaled by ``max(0, cosine)``. A source whose gradient does not point where the target's does is
switched off, so a pool of candidate sources cannot pull the target below what its own labels teach.
Each auxiliary head's own layers still learn from their source at full ``alpha``: at initialisation two
random heads give near-orthogonal gradients (cosines near 0, even for a source that teaches the labels
themselves), and a head starved by its own gate would never learn to agree with the target.
With ``relative: true`` the factors are divided by the largest of them: the source most aligned with the
target keeps its full ``alpha`` and the others keep their share of it (plain cosines are well below 1 even
for the best sources of a pool, so they would get only a fraction of their alpha).
``uncertainty`` (Kendall, Gal and Cipolla 2018): a learned log-variance per source,
``alpha * (exp(-s) * loss + s / 2)``; the weight is ``alpha * exp(-s)``, about ``alpha / (2 * loss)``.
It weights down sources whose loss stays high, and *up* those that are easy to imitate, such as a random
network's near-uniform soft labels (see docs/research-notes.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.losses import gradient_cosine, uncertainty_weighted
from sskt.validation import validate

Weighting = Literal["fixed", "gradsim", "uncertainty"]


@dataclass
class WeightingOptions:
    """How SSKT weights its sources (``method.weighting``): ``mode``, and for ``gradsim`` how often the
    gradients are compared (``every`` steps: each comparison costs one backward pass per source through
    the deepest stage), how much of the last weight is kept at each comparison (``momentum``) and whether
    the cosines are divided by the largest one (``relative``: the best-aligned source keeps its alpha)."""

    mode: Weighting = "fixed"
    every: int = 5
    momentum: float = 0.8
    relative: bool = False

    def __post_init__(self) -> None:
        if self.every < 1:
            raise SSKTError(f"method.weighting.every must be >= 1, got {self.every}")
        if not 0 <= self.momentum < 1:
            raise SSKTError(f"method.weighting.momentum must be in [0, 1), got {self.momentum}")
        if self.relative and self.mode != "gradsim":
            raise SSKTError(f"method.weighting.relative is for mode gradsim, not {self.mode}")


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` unchanged going forward; its gradient multiplied by ``factor`` going back.

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> scale_gradient(x, 0.25).sum().backward()
        >>> x.grad
        tensor([0.2500, 0.2500])
    """
    return _ScaleGradient.apply(x, factor)


# A switched-off source's gradient is scaled by this rather than 0: its direction stays measurable.
GATE_FLOOR = 1e-3


class SourceWeighting(nn.Module):
    """Turns each source's raw auxiliary loss into its weighted loss, and says the weight it used.

    Its state (gradient-similarity averages, learned log-variances; none for ``fixed``, so checkpoints of
    fixed-weight runs are unchanged) is part of the method's checkpoint, so a resumed run weighs its
    sources as the uninterrupted run did.

    Example:
        >>> w = SourceWeighting(["a", "b"], [1.0, 0.5], WeightingOptions("uncertainty"))
        >>> losses, weights = w({"a": torch.tensor(2.0), "b": torch.tensor(1.0)})
        >>> weights
        {'a': 1.0, 'b': 0.5}
    """

    def __init__(self, names: Sequence[str], alphas: Sequence[float], options: WeightingOptions,
                 gated_in_graph: bool = False) -> None:
        super().__init__()
        self.names, self.options = list(names), options
        # gradsim with auxiliary heads: the method applies gates() to the features its heads read, so the
        # heads learn at full alpha; without heads (head: main) the gate multiplies the loss.
        self.gated_in_graph = gated_in_graph and options.mode == "gradsim"
        self.alphas = [float(a) for a in alphas]
        if options.mode == "uncertainty":
            self.log_variance = nn.Parameter(torch.zeros(len(self.names)))
        if options.mode == "gradsim":  # the smoothed cosine per source (1 until first measured), the steps taken
            self.register_buffer("similarity", torch.ones(len(self.names)))
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def leave_out(self, name: str) -> None:
        """Give source ``name`` weight 0 from now on (logged as 0; its loss never reaches the optimiser)."""
        if name not in self.names:
            raise KeyError(f"no source named {name!r} to leave out (sources: {', '.join(self.names)})")
        self.alphas[self.names.index(name)] = 0.0

    def _gradsim_factors(self) -> list[float]:
        factors = self.similarity.clamp_min(0)
        if self.options.relative:
            factors = factors / factors.max().clamp_min(1e-12)
        return factors.tolist()

    def effective(self) -> dict[str, float]:
        """Each source's current weight on its raw auxiliary loss."""
        if self.options.mode == "gradsim":
            factors = self._gradsim_factors()
        elif self.options.mode == "uncertainty":
            factors = torch.exp(-self.log_variance.detach()).tolist()
        else:
            factors = [1.0] * len(self.names)
        return {name: a * f for name, a, f in zip(self.names, self.alphas, factors)}

    def gates(self) -> dict[str, float] | None:
        """gradsim with heads: the factor on the gradient each source sends into the shared layers."""
        if not self.gated_in_graph:
            return None
        return {n: max(f, GATE_FLOOR) for n, f in zip(self.names, self._gradsim_factors())}

    def measure(self, target_loss: Tensor, raw: dict[str, Tensor], shared: Sequence[nn.Parameter]) -> None:
        """gradsim: compare the gradients on ``shared`` and update the smoothed similarities, every
        ``every`` steps of training (needs the losses' graphs; keeps them for the step's backward)."""
        if self.options.mode != "gradsim" or not (self.training and torch.is_grad_enabled()):
            return
        step = int(self.steps)
        self.steps += 1
        if step % self.options.every:
            return
        params = [p for p in shared if p.requires_grad]
        main = torch.autograd.grad(target_loss, params, retain_graph=True, allow_unused=True)
        cosines = torch.stack([
            gradient_cosine(main, torch.autograd.grad(raw[n], params, retain_graph=True, allow_unused=True))
            for n in self.names]).to(self.similarity.device)
        if dist.is_available() and dist.is_initialized():  # every rank weighs its sources alike
            dist.all_reduce(cosines)
            cosines /= dist.get_world_size()
        keep = 0.0 if step == 0 else self.options.momentum
        self.similarity.mul_(keep).add_((1 - keep) * cosines)

    def forward(self, raw: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The weighted losses (what the optimiser sees) and the effective weights (what the user sees)."""
        weights = self.effective()
        if self.options.mode == "uncertainty":
            losses = {n: a * uncertainty_weighted(raw[n], s)
                      for n, a, s in zip(self.names, self.alphas, self.log_variance)}
        elif self.gated_in_graph:
            losses = {n: a * raw[n] for n, a in zip(self.names, self.alphas)}
        else:
            losses = {n: weights[n] * raw[n] for n in self.names}
        return losses, weights


def weighting_options(raw: "str | dict | WeightingOptions | None", where: str = "method.weighting") -> WeightingOptions:
    """``weighting: gradsim`` or ``weighting: {mode: gradsim, every: 5, momentum: 0.8}``; errors name the key."""
    if raw is None:
        return WeightingOptions()
    if isinstance(raw, str):
        raw = {"mode": raw}
    return raw if isinstance(raw, WeightingOptions) else validate(WeightingOptions, raw, where)
