"""Transferability scores (LEEP, NCE, LogME) against hand computations and their invariances."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sskt.evaluation.transferability import leep, logme, logme_evidence, nce

THETA = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])  # a source's softmax outputs, Z = 2
Y = np.array([0, 0, 1, 1])


def test_leep_by_hand():
    # P(y, z) = (1/4) sum_i theta_z(x_i) [y_i = y]:
    #   P(0, 0) = (0.8 + 0.6) / 4 = 0.35   P(0, 1) = (0.2 + 0.4) / 4 = 0.15
    #   P(1, 0) = (0.3 + 0.1) / 4 = 0.10   P(1, 1) = (0.7 + 0.9) / 4 = 0.40
    # P(z=0) = 0.45, P(z=1) = 0.55, so P(0|0) = 7/9, P(0|1) = 3/11, P(1|0) = 2/9, P(1|1) = 8/11.
    eep = [0.8 * 7 / 9 + 0.2 * 3 / 11,  # y = 0
           0.6 * 7 / 9 + 0.4 * 3 / 11,  # y = 0
           0.3 * 2 / 9 + 0.7 * 8 / 11,  # y = 1
           0.1 * 2 / 9 + 0.9 * 8 / 11]  # y = 1
    expected = sum(math.log(e) for e in eep) / 4
    assert leep(THETA, Y) == pytest.approx(expected, abs=1e-12)
    assert leep(torch.tensor(THETA, dtype=torch.float32), torch.tensor(Y)) == pytest.approx(expected, abs=1e-6)


def test_leep_bounds_and_source_class_order():
    assert leep(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 0])) == pytest.approx(0.0)  # perfect: log 1
    assert leep(np.full((6, 4), 0.25), np.arange(6) % 3) == pytest.approx(math.log(1 / 3))  # blind: log prior
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=30)
    y = rng.integers(0, 4, size=30)
    perm = rng.permutation(7)
    assert leep(probs[:, perm], y) == pytest.approx(leep(probs, y), abs=1e-12)
    assert leep(probs, y) <= 0.0


def test_nce_by_hand():
    z = np.array([0, 0, 0, 1, 1, 1])  # the source's hard labels
    y = np.array([0, 0, 1, 1, 1, 1])
    # P(y, z): (0, 0) = 2/6, (1, 0) = 1/6, (1, 1) = 3/6; P(z=0) = P(z=1) = 1/2
    # NCE = 2/6 log(2/6 / 1/2) + 1/6 log(1/6 / 1/2) + 3/6 log(3/6 / 1/2)
    expected = 2 / 6 * math.log(2 / 3) + 1 / 6 * math.log(1 / 3) + 3 / 6 * math.log(1.0)
    assert nce(z, y) == pytest.approx(expected, abs=1e-12)
    assert nce(torch.tensor(z), torch.tensor(y)) == pytest.approx(expected, abs=1e-12)
    # Soft outputs are reduced to their argmax
    assert nce(np.eye(2)[z] * 0.6 + 0.2, y) == pytest.approx(expected, abs=1e-12)


def test_nce_source_class_order_and_bounds():
    rng = np.random.default_rng(1)
    z = rng.integers(0, 9, size=40)
    y = rng.integers(0, 3, size=40)
    relabelled = rng.permutation(100)[z]  # any injective renaming of the source's classes
    assert nce(relabelled, y) == pytest.approx(nce(z, y), abs=1e-12)
    assert nce(z, y) <= 0.0
    assert nce(y * 3 + 1, y) == pytest.approx(0.0)  # Z determines Y
    assert nce(np.zeros(6), np.arange(6) % 2) == pytest.approx(-math.log(2))  # Z says nothing: -H(Y)


def marginal_log_likelihood(f: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
    """log N(t; 0, I/beta + F F^T / alpha): the evidence of w ~ N(0, I/alpha), t = F w + N(0, I/beta),
    evaluated directly (no SVD, no fixed point)."""
    n = len(t)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (n * math.log(2 * math.pi) + logdet + t @ np.linalg.solve(cov, t)))


@pytest.mark.parametrize("n,d,seed", [(6, 2, 63), (40, 5, 405), (8, 12, 92)])  # D > n: directions F doesn't reach
def test_logme_evidence_matches_the_direct_formula_at_its_fixed_point(n, d, seed):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d))
    t = (f[:, 0] > 0).astype(float)  # a one-hot column the features partly explain
    fit = logme_evidence(f, t)
    assert fit.iterations < 100  # an interior fixed point, reached
    assert fit.evidence == pytest.approx(marginal_log_likelihood(f, t, fit.alpha, fit.beta), abs=1e-8)
    # The paper's form with m, A written out as matrices gives the same number
    a = fit.alpha * np.eye(d) + fit.beta * f.T @ f
    m = fit.beta * np.linalg.solve(a, f.T @ t)
    paper = (n / 2 * math.log(fit.beta) + d / 2 * math.log(fit.alpha) - n / 2 * math.log(2 * math.pi)
             - fit.beta / 2 * np.sum((f @ m - t) ** 2) - fit.alpha / 2 * m @ m - np.linalg.slogdet(a)[1] / 2)
    assert fit.evidence == pytest.approx(paper, abs=1e-8)
    # The fixed point: alpha = gamma / m^T m, beta = (n - gamma) / ||F m - t||^2
    sigma = np.linalg.eigvalsh(f.T @ f).clip(min=0)
    gamma = np.sum(fit.beta * sigma / (fit.alpha + fit.beta * sigma))
    assert fit.alpha == pytest.approx(gamma / (m @ m), rel=1e-4)
    assert fit.beta == pytest.approx((n - gamma) / np.sum((f @ m - t) ** 2), rel=1e-4)
    # and a maximum: nudging alpha or beta lowers the evidence
    for da, db in [(1.1, 1), (0.9, 1), (1, 1.1), (1, 0.9)]:
        assert marginal_log_likelihood(f, t, fit.alpha * da, fit.beta * db) < fit.evidence + 1e-9


def test_logme_averages_the_one_hot_columns_over_n():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(30, 4))
    y = np.arange(30) % 3
    per_class = [logme_evidence(f, (y == c).astype(float)).evidence / 30 for c in range(3)]
    assert logme(f, y) == pytest.approx(np.mean(per_class), abs=1e-10)
    assert logme(torch.tensor(f, dtype=torch.float32), torch.tensor(y)) == pytest.approx(logme(f, y), abs=1e-4)


def test_logme_informative_features_beat_random_ones():
    rng = np.random.default_rng(4)
    y = np.arange(120) % 4
    for trial in range(3):
        informative = np.eye(4)[y] @ rng.normal(size=(4, 16)) * 2 + rng.normal(size=(120, 16))
        random = rng.normal(size=(120, 16))
        assert logme(informative, y) > logme(random, y)
    # the feature order (a rotation of the basis, in fact) does not matter
    f = rng.normal(size=(50, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    labels = np.arange(50) % 2
    assert logme(f @ q, labels) == pytest.approx(logme(f, labels), abs=1e-8)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError):
        leep(THETA, Y[:3])
    with pytest.raises(ValueError):
        logme(np.zeros(4), Y)
    with pytest.raises(ValueError):
        nce(np.zeros(4), np.array([-1, 0, 0, 0]))
    with pytest.raises(ValueError, match="all zeros"):
        logme_evidence(np.ones((4, 2)), np.zeros(4))
