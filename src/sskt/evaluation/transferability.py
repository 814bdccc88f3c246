"""Transferability scores: how well a pretrained source suits a labelled target task, before any training.

Each score is computed once from a source's outputs on the target's labelled images; higher is better.

- :func:`leep` (Nguyen et al., ICML 2020, "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations"): the log-likelihood of the target labels under the "expected empirical predictor"
  built from the source's softmax outputs. At most 0; needs the source's own classifier.
- :func:`nce` (Tran et al., ICCV 2019, "Transferability and Hardness of Supervised Classification
  Tasks"): the negative conditional entropy -H(Y|Z) of the target labels Y given the source's hard
  predictions Z. At most 0.
- :func:`logme` (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning"): the per-sample log marginal evidence of a Bayesian linear regression from the source's
  penultimate features to each one-hot target column, maximised over the prior and noise precisions,
  averaged over classes. Uses only the features, so it also ranks sources whose classifier is foreign.

Inputs are torch tensors or numpy arrays; all arithmetic is in float64 numpy. The functions are pure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _array(x: ArrayLike, dtype: type = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _labels(labels: ArrayLike, n: int) -> np.ndarray:
    y = _array(labels, np.int64).reshape(-1)
    if len(y) != n:
        raise ValueError(f"{n} samples but {len(y)} labels")
    if n == 0:
        raise ValueError("no samples to score")
    if y.min() < 0:
        raise ValueError("labels must be class indices >= 0")
    return y


def _joint(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(C, Z) empirical joint: (1/n) sum_i rows_i [y_i = y], C = max label + 1."""
    joint = np.zeros((int(y.max()) + 1, rows.shape[1]))
    np.add.at(joint, y, rows)
    return joint / len(y)


def leep(probs: ArrayLike, labels: ArrayLike) -> float:
    """LEEP of a source: ``probs`` (n, Z) its softmax outputs theta(x_i) over its Z classes (rows sum to
    1), ``labels`` (n,) the target classes y_i. With P(y, z) = (1/n) sum_i theta_z(x_i) [y_i = y] and
    P(y|z) = P(y, z) / P(z): LEEP = (1/n) sum_i log sum_z P(y_i|z) theta_z(x_i). At most 0, higher is
    better; it does not depend on the order of the source's classes.

    Example (a source that separates the two target classes perfectly scores log 1 = 0):
        >>> leep(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), np.array([1, 1, 0]))
        0.0
        >>> round(leep(np.full((4, 3), 1 / 3), np.array([0, 0, 1, 1])), 4)  # uninformative: log 1/2
        -0.6931
    """
    theta = _array(probs)
    if theta.ndim != 2:
        raise ValueError(f"probs must be (n, Z), got shape {theta.shape}")
    y = _labels(labels, len(theta))
    joint = _joint(theta, y)
    marginal = joint.sum(0, keepdims=True)  # P(z)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y|z)
    eep = np.einsum("iz,iz->i", conditional[y], theta)  # sum_z P(y_i|z) theta_z(x_i)
    return float(np.mean(np.log(eep)))


def nce(source_labels: ArrayLike, labels: ArrayLike) -> float:
    """NCE of a source: -H(Y|Z) = sum_{y,z} P(y, z) log P(y|z), with P the empirical distribution of the
    pairs (y_i, z_i) of target labels and source predictions. ``source_labels`` are the hard labels
    z_i (n,) or the source's (n, Z) outputs (then z_i = argmax). At most 0 (Z determines Y), higher is
    better; it does not depend on the order of the source's classes.

    Example (z = 0 always means y = 0, z = 1 is a coin flip: -(2/4) log 2):
        >>> round(nce(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])), 4)
        -0.3466
        >>> nce(np.array([2, 2, 5]), np.array([1, 1, 0]))
        0.0
    """
    z = _array(source_labels)
    z = z.argmax(1) if z.ndim == 2 else z.reshape(-1)
    z = z.astype(np.int64)
    y = _labels(labels, len(z))
    _, z = np.unique(z, return_inverse=True)  # dense ids 0..K-1 for the source classes that occur
    joint = _joint(np.eye(int(z.max()) + 1)[z], y)  # P(y, z)
    marginal = joint.sum(0, keepdims=True)  # P(z) > 0 for every column
    nonzero = joint > 0  # 0 log 0 = 0
    return float(np.sum(joint[nonzero] * np.log((joint / marginal)[nonzero])))


@dataclass(frozen=True)
class EvidenceFit:
    """One Bayesian linear regression of LogME: the maximised log evidence (total over the n samples,
    not divided by n), the prior precision ``alpha`` and noise precision ``beta`` it is maximised at,
    and the fixed-point iterations it took."""

    evidence: float
    alpha: float
    beta: float
    iterations: int


def logme_evidence(features: ArrayLike, target: ArrayLike, max_iter: int = 100, tol: float = 1e-6) -> EvidenceFit:
    """Maximise the evidence p(t | F, alpha, beta) of t = F w + noise, w ~ N(0, I/alpha), noise ~ N(0, 1/beta),
    over alpha and beta by the fixed-point iterations of LogME (You et al. 2021, Algorithm 2): with
    F = U S V^T and sigma_i = s_i^2,
    gamma = sum_i beta sigma_i / (alpha + beta sigma_i), m = beta A^-1 F^T t (A = alpha I + beta F^T F),
    alpha <- gamma / m^T m, beta <- (n - gamma) / ||F m - t||^2, until alpha / beta changes by less than
    ``tol`` (relative). The log evidence at the fixed point is
    n/2 log beta + D/2 log alpha - n/2 log 2 pi - beta/2 ||F m - t||^2 - alpha/2 m^T m - 1/2 log|A|.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> f = rng.normal(size=(50, 3))
        >>> fit = logme_evidence(f, f @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=50))
        >>> 50 < fit.beta < 200, fit.alpha > 0  # beta ~ 1 / 0.1^2: the noise is found
        (True, True)
    """
    f = _array(features)
    t = _array(target).reshape(-1)
    if f.ndim != 2 or len(f) != len(t):
        raise ValueError(f"features must be (n, D) with one target per row, got {f.shape} and {t.shape}")
    if not np.any(t):
        raise ValueError("the target is all zeros: its evidence is unbounded (alpha, beta -> infinity)")
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    return _fit_evidence(s ** 2, u.T @ t, float(t @ t), f.shape[0], f.shape[1], max_iter, tol)


def _fit_evidence(sigma: np.ndarray, z: np.ndarray, t_sq: float, n: int, d: int,
                  max_iter: int, tol: float) -> EvidenceFit:
    """The fixed point in the singular basis: ``sigma`` the squared singular values, ``z = U^T t``."""
    sigma = np.where(sigma > 1e-12 * max(float(sigma.max(initial=0.0)), 1e-300), sigma, 0.0)
    out_of_span = max(t_sq - float(z @ z), 0.0)  # ||t||^2 off the column space of F: residual whatever m
    alpha, beta = 1.0, 1.0
    iterations = 0
    for iterations in range(1, max_iter + 1):
        gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
        m = beta * np.sqrt(sigma) * z / (alpha + beta * sigma)  # m in the basis V
        m_sq = float(m @ m)
        residual = out_of_span + float(np.sum((z - np.sqrt(sigma) * m) ** 2))
        new_alpha = gamma / max(m_sq, 1e-300)
        new_beta = (n - gamma) / max(residual, 1e-300)
        ratio, new_ratio = alpha / beta, new_alpha / new_beta
        alpha, beta = new_alpha, new_beta
        if abs(new_ratio - ratio) / new_ratio < tol:
            break
    m = beta * np.sqrt(sigma) * z / (alpha + beta * sigma)
    m_sq = float(m @ m)
    residual = out_of_span + float(np.sum((z - np.sqrt(sigma) * m) ** 2))
    # log|A|: the k = len(sigma) singular directions, and alpha for the D - k directions F does not reach
    log_det = float(np.sum(np.log(alpha + beta * sigma))) + (d - len(sigma)) * math.log(alpha)
    evidence = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                - beta / 2 * residual - alpha / 2 * m_sq - log_det / 2)
    return EvidenceFit(evidence, alpha, beta, iterations)


def logme(features: ArrayLike, labels: ArrayLike, max_iter: int = 100, tol: float = 1e-6) -> float:
    """LogME of a source: ``features`` (n, D) its penultimate features of the target's labelled images,
    ``labels`` (n,) their classes. The maximised log evidence (:func:`logme_evidence`) of each one-hot
    column of the labels, divided by n and averaged over the classes present. Higher is better; the
    SVD of the features is computed once and shared by the classes.

    Example (features that carry the label beat features that don't):
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(60) % 3
        >>> informative = np.eye(3)[y] * 4 + rng.normal(size=(60, 3))
        >>> logme(informative, y) > logme(rng.normal(size=(60, 3)), y)
        True
    """
    f = _array(features)
    if f.ndim != 2:
        raise ValueError(f"features must be (n, D), got shape {f.shape}")
    y = _labels(labels, len(f))
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    scores = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        fit = _fit_evidence(sigma, u.T @ t, float(t @ t), f.shape[0], f.shape[1], max_iter, tol)
        scores.append(fit.evidence / len(y))
    return float(np.mean(scores))
