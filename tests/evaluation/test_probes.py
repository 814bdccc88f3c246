"""Linear probe and weighted k-NN on frozen features."""
from __future__ import annotations

import torch
from torch import nn

from sskt.evaluation import knn_accuracy, knn_predict, linear_probe, probe_layers


def separable(n: int, classes: int = 5, dim: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, dim, generator=g), y


def test_knn_separable_near_perfect_random_labels_near_chance():
    x, y = separable(1000)
    assert knn_accuracy(x[:800], y[:800], x[800:], y[800:], k=20) > 0.98
    y_rand = torch.randint(0, 5, (1000,), generator=torch.Generator().manual_seed(1))
    acc = knn_accuracy(x[:800], y_rand[:800], x[800:], y_rand[800:], k=20)
    assert abs(acc - 0.2) < 0.1


def test_knn_weights_votes_by_similarity():
    # Two far-but-many neighbours of class 1 lose against one very close neighbour of class 0.
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_predict(train, labels, query, k=3, temperature=0.07).item() == 0
    assert knn_predict(train, labels, query, k=3, temperature=100.0).item() == 1  # ~ majority vote


def test_linear_probe_separable_near_perfect_random_labels_near_chance():
    x, y = separable(1000)
    res = linear_probe(x[:800], y[:800], x[800:], y[800:])
    assert res.test_top1 > 0.98 and res.train_top1 > 0.98
    assert torch.equal(res.predict(x[800:]), res.classifier((x[800:] - res.mean) / res.std).argmax(1))
    y_rand = torch.randint(0, 5, (1000,), generator=torch.Generator().manual_seed(1))
    res = linear_probe(x[:800], y_rand[:800], x[800:], y_rand[800:])
    assert abs(res.test_top1 - 0.2) < 0.1


def test_linear_probe_is_deterministic():
    x, y = separable(300, dim=8, seed=2)
    a = linear_probe(x[:200], y[:200], x[200:], y[200:])
    b = linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert torch.equal(a.classifier.weight, b.classifier.weight)


def test_probe_layers_scores_each_stage_of_a_model():
    # Class = which colour channel is bright: linearly readable from every stage of a small CNN.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.rand(300, 3, 8, 8, generator=g) * 0.3
    x[torch.arange(300), y] += 0.7
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU())
    scores = probe_layers(net, ["1", "3"], x[:200], y[:200], x[200:], y[200:], spatial=2)
    assert set(scores) == {"1", "3"}
    assert scores["1"]["dim"] == 32
    for name in scores:
        assert scores[name]["linear_top1"] > 0.9 and scores[name]["knn_top1"] > 0.9
