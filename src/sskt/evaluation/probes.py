"""Evaluation protocols for frozen representations: linear probes (per layer) and weighted k-NN.

* Linear probe: a multinomial logistic regression on frozen features of a labelled train set,
  scored on a test set (the per-layer ImageNet/Places protocol of Noroozi et al. 2018 and
  split-brain, at small scale).
* k-NN: cosine similarity, the k nearest train features vote with weight exp(sim / T), T = 0.07
  (InstDisc, Wu et al. 2018; solo-learn's ``WeightedKNNClassifier``).

All accuracies are fractions in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sskt.cluster.features import extract_multi


def _check(feats: Tensor, labels: Tensor, name: str) -> None:
    if feats.ndim != 2 or labels.ndim != 1 or len(feats) != len(labels):
        raise ValueError(f"{name}: expected features (N, D) and labels (N,), got {tuple(feats.shape)} and "
                         f"{tuple(labels.shape)}")


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> Tensor:
    """Weighted k-NN class prediction (M,) for each test feature.

    Features are L2-normalised here (cosine similarity); the ``k`` most similar train features
    vote for their label with weight ``exp(similarity / temperature)``.

    Example:
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> knn_predict(train, torch.tensor([0, 0, 1, 1]), torch.tensor([[1.0, 0.2], [0.2, 1.0]]), k=3).tolist()
        [0, 1]
    """
    _check(train_features, train_labels, "train")
    num_classes = num_classes or int(train_labels.max()) + 1
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    k = min(k, len(train))
    preds = []
    for i in range(0, len(test_features), batch_size):
        q = F.normalize(test_features[i:i + batch_size].float().to(train.device), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)  # (b, k), batched so (M, N) never materialises
        votes = torch.zeros(len(q), num_classes, device=q.device)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of :func:`knn_predict`.

    Example:
        >>> x = torch.eye(4)
        >>> knn_accuracy(x, torch.arange(4), x, torch.arange(4), k=1)
        1.0
    """
    _check(test_features, test_labels, "test")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_features, train_labels, test_features, k, temperature, num_classes)
    return float((pred.cpu() == test_labels.long().cpu()).float().mean())


@dataclass
class ProbeResult:
    """Linear-probe scores and the fitted classifier (applied to ``(x - mean) / std``)."""

    train_top1: float
    test_top1: float
    classifier: nn.Linear
    mean: Tensor
    std: Tensor

    def predict(self, features: Tensor) -> Tensor:
        with torch.no_grad():
            return self.classifier((features.float() - self.mean) / self.std).argmax(dim=1)


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    weight_decay: float = 1e-4,
    max_iter: int = 100,
    standardize: bool = True,
) -> ProbeResult:
    """Multinomial logistic regression on frozen features, fitted by full-batch L-BFGS.

    Full-batch L-BFGS reaches the regularised optimum without a learning-rate search, which makes
    probes of different layers comparable. Features are standardised with train statistics.
    Memory is that of the feature matrix (fine up to ~50k x 4k floats on a CPU).

    Args:
        weight_decay: L2 penalty ``weight_decay / 2 * ||W||^2`` added to the mean cross-entropy.
        max_iter: L-BFGS iterations.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 5, generator=g); y = (x[:, 0] > 0).long()
        >>> res = linear_probe(x[:100], y[:100], x[100:], y[100:])
        >>> res.test_top1 > 0.9
        True
    """
    _check(train_features, train_labels, "train")
    _check(test_features, test_labels, "test")
    x = train_features.detach().float().cpu()
    y = train_labels.detach().long().cpu()
    num_classes = int(max(y.max(), test_labels.max())) + 1
    mean = x.mean(0) if standardize else torch.zeros(x.shape[1])
    std = x.std(0).clamp_min(1e-6) if standardize else torch.ones(x.shape[1])
    xs = (x - mean) / std
    with torch.random.fork_rng(devices=[]):  # a utility never moves the caller's random stream
        clf = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(clf.weight)  # convex problem: a fixed start makes the result deterministic
    nn.init.zeros_(clf.bias)
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-5, tolerance_change=1e-7)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(clf(xs), y) + 0.5 * weight_decay * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    result = ProbeResult(0.0, 0.0, clf.requires_grad_(False), mean, std)
    result.train_top1 = float((result.predict(x) == y).float().mean())
    result.test_top1 = float((result.predict(test_features.cpu()) == test_labels.long().cpu()).float().mean())
    return result


def probe_layers(
    model: nn.Module,
    layers: Sequence[str | None],
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    spatial: int | None = None,
    linear: bool = True,
    knn: bool = True,
    k: int = 20,
    temperature: float = 0.07,
    weight_decay: float = 1e-4,
    max_iter: int = 100,
    batch_size: int = 256,
) -> dict[str | None, dict[str, float]]:
    """Linear-probe and k-NN top-1 of each named layer of a frozen model.

    Images are tensors (N, C, H, W), uint8 or float in [0, 1] (the model normalises, as in this
    project). Spatial maps are average-pooled to vectors, or to ``spatial`` x ``spatial`` first.

    Returns:
        layer -> {"linear_top1": ..., "knn_top1": ..., "dim": ...}.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> x, y = torch.rand(40, 3, 8, 8), torch.arange(40) % 2
        >>> scores = probe_layers(net, ["0", "2"], x[:20], y[:20], x[20:], y[20:])
        >>> sorted(scores["2"])
        ['dim', 'knn_top1', 'linear_top1']
    """
    train = extract_multi(model, train_images, layers, batch_size=batch_size, spatial=spatial)
    test = extract_multi(model, test_images, layers, batch_size=batch_size, spatial=spatial)
    out: dict[str | None, dict[str, float]] = {}
    for name in layers:
        scores: dict[str, float] = {"dim": float(train[name].shape[1])}
        if linear:
            scores["linear_top1"] = linear_probe(train[name], train_labels, test[name], test_labels,
                                                 weight_decay=weight_decay, max_iter=max_iter).test_top1
        if knn:
            scores["knn_top1"] = knn_accuracy(train[name], train_labels, test[name], test_labels, k, temperature)
        out[name] = scores
    return out
