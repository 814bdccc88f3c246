"""Loss functions: pure functions of tensors, registered by name.

Target losses take ``(logits, target)`` (multi-label ones also an optional ``ignore`` mask);
auxiliary (soft-label) losses take ``(student_logits, teacher_logits, temperature)``. All return a scalar averaged over the batch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sskt.registry import Registry

TargetLoss = Callable[..., Tensor]
SoftLoss = Callable[[Tensor, Tensor, float], Tensor]

TARGET_LOSSES: Registry[TargetLoss] = Registry("target loss")
SOFT_LOSSES: Registry[SoftLoss] = Registry("auxiliary loss")


@TARGET_LOSSES.register("ce")
def cross_entropy(logits: Tensor, target: Tensor, **_: float) -> Tensor:
    """Cross-entropy for single-label targets (class indices or a soft distribution)."""
    return F.cross_entropy(logits, target)


@TARGET_LOSSES.register("focal")
def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, **_: float) -> Tensor:
    """Focal loss (Lin et al. 2017) for single-label targets: mean of -(1 - p_y)^gamma log p_y.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0]]); y = torch.tensor([0])
        >>> p = torch.softmax(logits, 1)[0, 0]
        >>> torch.allclose(focal_loss(logits, y, gamma=2.0), -(1 - p) ** 2 * p.log())
        True
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()


def _masked_mean(per_entry: Tensor, ignore: Tensor | None) -> Tensor:
    """Mean over the entries not in ``ignore`` (all entries when it is None)."""
    if ignore is None:
        return per_entry.mean()
    keep = (~ignore.bool()).to(per_entry.dtype)
    return (per_entry * keep).sum() / keep.sum().clamp_min(1.0)


@TARGET_LOSSES.register("bce")
def bce_with_logits(logits: Tensor, target: Tensor, ignore: Tensor | None = None, **_: float) -> Tensor:
    """Binary cross-entropy on logits for multi-label (multi-hot) targets, mean over the batch x class
    entries not marked in ``ignore`` (e.g. VOC classes present only as "difficult" objects).

    Example:
        >>> logits = torch.tensor([[2.0, -1.0]]); y = torch.tensor([[1.0, 0.0]])
        >>> ignored = torch.tensor([[False, True]])
        >>> torch.allclose(bce_with_logits(logits, y, ignored), -F.logsigmoid(torch.tensor(2.0)))
        True
    """
    return _masked_mean(F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none"), ignore)


@TARGET_LOSSES.register("focal-bce")
def focal_bce(logits: Tensor, target: Tensor, ignore: Tensor | None = None, gamma: float = 2.0,
              **_: float) -> Tensor:
    """Sigmoid focal loss for multi-label targets, mean over the entries not marked in ``ignore``."""
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return _masked_mean((1 - p_t) ** gamma * bce, ignore)


def soft_targets(teacher_logits: Tensor, temperature: float) -> Tensor:
    """softmax(teacher / T), in float32 whatever the teacher's precision."""
    return F.softmax(teacher_logits.float() / temperature, dim=1)


@SOFT_LOSSES.register("kd")
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), summed over classes, mean over the batch.

    Zero when the student's logits equal the teacher's. This is the formula of Hinton et al. 2015
    and of the SSKT paper; see :func:`kd_legacy_loss` for the reference code's scaled-down form.

    Example:
        >>> z = torch.randn(4, 10)
        >>> abs(float(kd_loss(z, z, 3.0))) < 1e-5
        True
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_teacher = soft_targets(teacher_logits, temperature)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


@SOFT_LOSSES.register("kd-legacy")
def kd_legacy_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """The SSKT reference code's "kd": KLDivLoss with element-wise mean, i.e. :func:`kd_loss` / K.

    PyTorch's default ``reduction='mean'`` divides by batch x classes, so with an ImageNet source
    (K = 1000) the auxiliary signal is 1000x weaker than the formula says. Use only to reproduce
    the reference numbers.
    """
    return kd_loss(student_logits, teacher_logits, temperature) / student_logits.shape[1]


@SOFT_LOSSES.register("soft-ce")
def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * mean over batch of -sum_k softmax(teacher/T)_k log_softmax(student/T)_k.

    Equals :func:`kd_loss` plus T^2 times the teacher's entropy (which carries no gradient).
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_teacher = soft_targets(teacher_logits, temperature)
    return -(p_teacher * log_p_student).sum(dim=1).mean() * temperature**2


def feature_regression(predicted: Tensor, embedding: Tensor) -> Tensor:
    """Mean squared error between an auxiliary head's (B, D) output and a source's (B, D) standardised
    embedding, averaged over features and batch: FitNets' hint loss (Romero et al., ICLR 2015) on the
    source's final embedding. With a standardised embedding, 1.0 is what predicting its mean scores and
    ``1 - loss`` is the share of its variance the head explains.

    Example:
        >>> e = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> float(feature_regression(torch.zeros(2, 2), e)), float(feature_regression(e, e))
        (1.0, 0.0)
    """
    return (predicted.float() - embedding.float()).pow(2).mean()


def uncertainty_weighted(loss: Tensor, log_variance: Tensor) -> Tensor:
    """exp(-s) * loss + s / 2 with s = log sigma^2 learned (Kendall, Gal and Cipolla, CVPR 2018, eq. 10 for a
    classification-like task): minimising over s gives exp(-s) = 1 / (2 * loss), so a task whose loss stays
    high is weighted down, and s / 2 keeps the weight from vanishing for free.

    Example:
        >>> s = torch.tensor(0.5)
        >>> float(uncertainty_weighted(torch.tensor(2.0), s)) == float(torch.exp(-s) * 2.0 + s / 2)
        True
    """
    return torch.exp(-log_variance) * loss + log_variance / 2


def gradient_cosine(a: Sequence[Tensor | None], b: Sequence[Tensor | None], eps: float = 1e-12) -> Tensor:
    """Cosine similarity of two gradients given per parameter (None = no gradient, i.e. zeros), as one vector.

    Example:
        >>> g = [torch.tensor([1.0, 0.0]), None]
        >>> h = [torch.tensor([1.0, 1.0]), torch.tensor([5.0])]
        >>> round(float(gradient_cosine(g, h)), 4)  # (1) / (1 * sqrt(27))
        0.1925
    """
    dot, norm_a, norm_b = 0.0, 0.0, 0.0
    for x, y in zip(a, b):
        if x is not None:
            norm_a = norm_a + x.float().pow(2).sum()
        if y is not None:
            norm_b = norm_b + y.float().pow(2).sum()
        if x is not None and y is not None:
            dot = dot + (x.float() * y.float()).sum()
    return torch.as_tensor(dot / max(float(norm_a) ** 0.5 * float(norm_b) ** 0.5, eps), dtype=torch.float32)
