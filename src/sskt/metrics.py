"""Multi-label ranking metrics: standard PASCAL per-class mAP and the SSKT code's per-image AP.

Both use scikit-learn's ``average_precision_score`` (no interpolation):
``AP = sum_n (R_n - R_{n-1}) * P_n`` over the distinct score thresholds, ties grouped. Scores may be
logits or probabilities: AP only depends on the ranking and sigmoid is monotonic.

- :func:`classwise_map` is the number to report: one AP per class over the whole test set, then the
  mean over classes. "Difficult" VOC objects are excluded from their class's ranking via ``ignore``.
- :func:`samplewise_ap_legacy` reproduces the official SSKT code (``utils.get_ap_score``), which ranks
  the classes *within each image* and averages over images. It is close to label-ranking AP and is
  **not** mAP; use it only to compare with the numbers in the SSKT README.
"""
from __future__ import annotations

from typing import Any, Literal, Union

import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[Tensor, np.ndarray]


def _as_numpy(x: ArrayLike, dtype: type) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """Average precision of one ranking: scikit-learn's ``average_precision_score``, NaN (instead of a
    warning and 0) when there is no positive.

    Args:
        scores: (N,) real scores, higher means more likely positive.
        targets: (N,) 0/1 (or bool) relevance.

    Example:
        >>> average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]))  # (1 + 2/3) / 2
        0.8333333333333333
    """
    from sklearn.metrics import average_precision_score  # imported lazily: sklearn is slow to import

    s = _as_numpy(scores, np.float64).reshape(-1)
    y = _as_numpy(targets, np.float64).reshape(-1) > 0.5
    if s.shape != y.shape:
        raise ValueError(f"scores and targets differ in length: {s.shape} vs {y.shape}")
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, s))


def classwise_map(
    scores: ArrayLike, targets: ArrayLike, ignore: ArrayLike | None = None
) -> tuple[float, Tensor]:
    """Standard PASCAL VOC classification mAP: per-class AP over the whole set, then the mean.

    Args:
        scores: (N, L) scores (logits or probabilities) for N images and L classes.
        targets: (N, L) multi-hot ground truth (1 = present).
        ignore: optional (N, L) bool mask; ``True`` entries (e.g. an image whose only instances of
            that class are "difficult") are left out of that class's ranking, as in the VOC devkit.

    Returns:
        ``(map, per_class_ap)``: the mean over classes that have at least one positive (classes
        without positives have AP NaN and are skipped, rather than counted as 0 or 1), and the
        (L,) float64 tensor of per-class APs.
    """
    s = _as_numpy(scores, np.float64)
    y = _as_numpy(targets, np.float64)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores and targets must both be (N, L); got {s.shape} and {y.shape}")
    keep = np.ones(s.shape, dtype=bool)
    if ignore is not None:
        ig = _as_numpy(ignore, bool)
        if ig.shape != s.shape:
            raise ValueError(f"ignore must be {s.shape}, got {ig.shape}")
        keep = ~ig
    aps = np.array([average_precision(s[keep[:, c], c], y[keep[:, c], c]) for c in range(s.shape[1])])
    valid = ~np.isnan(aps)
    mean = float(aps[valid].mean()) if valid.any() else float("nan")
    return mean, torch.from_numpy(aps)


def samplewise_ap_legacy(
    scores: ArrayLike, targets: ArrayLike, empty: Literal["zero", "skip"] = "zero"
) -> float:
    """The official SSKT code's VOC score: AP over the L classes of each image, averaged over images.

    This is **not** mAP (see :func:`classwise_map`); it exists to compare with the SSKT README.
    Like the official code, it has no ignore mask (difficult objects count as negatives when the
    targets were built that way).

    Args:
        scores: (N, L) scores.
        targets: (N, L) multi-hot ground truth.
        empty: what an image without any positive contributes. ``"zero"``: 0, what current
            scikit-learn returns (with a warning) and hence what the official code computes today;
            ``"skip"``: leave such images out of the mean.

    Returns:
        The mean per-image AP in [0, 1] (NaN if no image counts).
    """
    s = _as_numpy(scores, np.float64)
    y = _as_numpy(targets, np.float64)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores and targets must both be (N, L); got {s.shape} and {y.shape}")
    if empty not in ("zero", "skip"):
        raise ValueError(f"empty must be 'zero' or 'skip', got {empty!r}")
    aps = np.array([average_precision(s[i], y[i]) for i in range(s.shape[0])])
    if empty == "zero":
        aps = np.nan_to_num(aps, nan=0.0)
    else:
        aps = aps[~np.isnan(aps)]
    return float(aps.mean()) if aps.size else float("nan")


def _metric_base() -> type:
    import torchmetrics  # imported lazily: the functions above need only numpy

    return torchmetrics.Metric


class MultilabelMAP(_metric_base()):  # type: ignore[misc]
    """Accumulates (scores, targets, ignore) over an evaluation and computes :func:`classwise_map`
    and :func:`samplewise_ap_legacy` on the whole set (gathered across processes under DDP).

    Example:
        >>> m = MultilabelMAP()
        >>> m.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[1., 0.], [0., 1.]]))
        >>> round(m.compute()["map"], 3)
        1.0
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("ignore", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, targets: Tensor, ignore: Tensor | None = None) -> None:  # type: ignore[override]
        self.scores.append(scores.detach().float())
        self.targets.append(targets.detach().float())
        self.ignore.append(torch.zeros_like(targets, dtype=torch.bool) if ignore is None else ignore.detach().bool())

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        """``{"map": float, "per_class": (L,) tensor, "legacy_samplewise_ap": float}``, all in [0, 1]."""
        cat = lambda xs: torch.cat(xs) if isinstance(xs, list) else xs  # noqa: E731  (lists before sync)
        scores, targets, ignore = cat(self.scores), cat(self.targets), cat(self.ignore)
        mean, per_class = classwise_map(scores, targets, ignore)
        return {"map": mean, "per_class": per_class, "legacy_samplewise_ap": samplewise_ap_legacy(scores, targets)}
