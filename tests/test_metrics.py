"""Per-class mAP and the legacy per-image AP against hand computations and scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sskt.metrics import average_precision, classwise_map, samplewise_ap_legacy

# 4 images x 2 classes, small enough to rank by hand.
SCORES = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.1, 0.4]])
TARGETS = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])


def test_classwise_map_matches_hand_computation() -> None:
    # class 0 ranking: TP(P=1, R=.5), FP, TP(P=2/3, R=1)          -> AP = .5*1 + .5*2/3 = 5/6
    # class 1 ranking: FP, FP, TP(P=1/3, R=.5), TP(P=2/4, R=1)     -> AP = .5/3 + .5*.5 = 5/12
    m, per_class = classwise_map(SCORES, TARGETS)
    assert per_class.tolist() == pytest.approx([5 / 6, 5 / 12])
    assert m == pytest.approx((5 / 6 + 5 / 12) / 2)


def test_ignored_entries_leave_the_ranking() -> None:
    # Ignoring image 1 for class 1 removes its top-ranked false positive:
    # FP, TP(P=1/2, R=.5), TP(P=2/3, R=1) -> AP = .5*.5 + .5*2/3 = 7/12; class 0 is unchanged.
    ignore = torch.zeros(4, 2, dtype=torch.bool)
    ignore[1, 1] = True
    m, per_class = classwise_map(SCORES, TARGETS, ignore)
    assert per_class.tolist() == pytest.approx([5 / 6, 7 / 12])
    assert m == pytest.approx((5 / 6 + 7 / 12) / 2)


def test_legacy_is_per_image_and_differs_from_map() -> None:
    # per image: [1, empty, 1/2, 1]; the empty image counts 0 (current sklearn) or is skipped.
    assert samplewise_ap_legacy(SCORES, TARGETS) == pytest.approx(2.5 / 4)
    assert samplewise_ap_legacy(SCORES, TARGETS, empty="skip") == pytest.approx(2.5 / 3)
    # Ranking classes inside an image is a different question: a per-class offset (a calibration
    # change) leaves mAP unchanged but moves the legacy score.
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 5, generator=gen)
    targets = (torch.rand(50, 5, generator=gen) < 0.4).float()
    shifted = scores + torch.linspace(0.0, 0.8, 5)
    assert classwise_map(shifted, targets)[0] == pytest.approx(classwise_map(scores, targets)[0])
    assert abs(samplewise_ap_legacy(shifted, targets) - samplewise_ap_legacy(scores, targets)) > 0.01


def test_class_without_positives_is_nan_and_excluded() -> None:
    targets = TARGETS.clone()
    targets[:, 1] = 0
    m, per_class = classwise_map(SCORES, targets)
    assert math.isnan(per_class[1].item())
    assert m == pytest.approx(5 / 6)


def test_agrees_with_sklearn_including_ties() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(200, 5)).astype(float)  # many ties
    targets = (rng.random((200, 5)) < 0.3).astype(float)
    _, per_class = classwise_map(scores, targets)
    expected = [sk.average_precision_score(targets[:, c], scores[:, c]) for c in range(5)]
    assert per_class.tolist() == pytest.approx(expected)
    legacy = np.mean([sk.average_precision_score(targets[i], scores[i]) if targets[i].any() else 0.0
                      for i in range(200)])
    assert samplewise_ap_legacy(scores, targets) == pytest.approx(legacy)
    assert average_precision(scores[:, 0], targets[:, 0]) == pytest.approx(expected[0])
