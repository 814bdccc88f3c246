"""k-means pseudo-labels (faiss) and centroid-based soft labels.

Noroozi et al. 2018 transfer knowledge by clustering a teacher's features and training a student
from scratch on the cluster ids. :func:`centroid_soft_labels` / :class:`CentroidClassifier` also let
a clustered teacher act like a classifier with logits, so it can serve as an SSKT source.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import Tensor, nn


def _as_float32(x: Tensor | np.ndarray) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    return np.ascontiguousarray(a, dtype=np.float32)  # faiss takes contiguous float32 only


@dataclass
class ClusterStats:
    """Health of a clustering: sizes, empty clusters, objective and (given labels) NMI."""

    sizes: np.ndarray
    num_empty: int
    inertia: float  # sum of squared distances to the assigned centroid
    nmi: float | None = None  # normalised mutual information with the true labels, if given

    def summary(self) -> dict[str, float | int | None]:
        return {
            "num_clusters": int(len(self.sizes)), "num_empty": self.num_empty,
            "min_size": int(self.sizes.min()), "max_size": int(self.sizes.max()),
            "inertia": self.inertia, "nmi": self.nmi,
        }


@dataclass
class KMeansResult:
    """Output of :func:`kmeans`: ``assignments`` (N,) int64, ``centroids`` (k, D) float32, ``stats``."""

    assignments: np.ndarray
    centroids: np.ndarray
    stats: ClusterStats = field(repr=False)


def assign(features: Tensor | np.ndarray, centroids: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (squared L2) of every row: (assignments int64 (N,), squared distances (N,)).

    Example:
        >>> assign(np.array([[0.0, 0.1], [5.0, 5.0]]), np.array([[5.0, 5.0], [0.0, 0.0]]))[0].tolist()
        [1, 0]
    """
    x, c = _as_float32(features), _as_float32(centroids)
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c)
    dist, idx = index.search(x, 1)
    return idx[:, 0].astype(np.int64), dist[:, 0]


def cluster_stats(assignments: np.ndarray, k: int, inertia: float = float("nan"),
                  labels: Tensor | np.ndarray | None = None) -> ClusterStats:
    """Sizes, number of empty clusters and NMI (sklearn) against ``labels`` if given (rows labelled -1,
    unlabelled images, are left out of the NMI).

    Example:
        >>> s = cluster_stats(np.array([0, 0, 2, 2]), k=3, labels=np.array([1, 1, 0, 0]))
        >>> s.sizes.tolist(), s.num_empty, round(s.nmi, 3)
        ([2, 0, 2], 1, 1.0)
    """
    sizes = np.bincount(assignments, minlength=k)
    nmi = None
    if labels is not None:
        y = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        known = y >= 0
        if known.any():
            nmi = float(normalized_mutual_info_score(y[known], assignments[known]))
    return ClusterStats(sizes=sizes, num_empty=int((sizes == 0).sum()), inertia=float(inertia), nmi=nmi)


def kmeans(
    features: Tensor | np.ndarray,
    k: int,
    seed: int = 0,
    niter: int = 50,
    nredo: int = 1,
    labels: Tensor | np.ndarray | None = None,
    spherical: bool = False,
    max_points_per_centroid: int | None = None,
    threads: int | None = None,
    verbose: bool = False,
) -> KMeansResult:
    """Seeded faiss k-means on float32 features; assignments by nearest centroid.

    Args:
        features: (N, D); L2-normalise them first (see ``extract_features``) as VISSL ClusterFit does.
        k: number of clusters (the paper used 2000 on ImageNet; use about 10x the classes on small sets).
        niter: Lloyd iterations (50 as in VISSL).
        nredo: restarts; the one with the lowest objective is kept.
        labels: optional true labels; ``stats.nmi`` is then filled.
        spherical: renormalise centroids to unit norm after each iteration.
        max_points_per_centroid: faiss subsamples to ``k * this`` training points (faiss default 256);
            ``None`` trains on every point.
        threads: faiss OpenMP threads for this call. ``None`` uses 1 thread for small problems
            (N * k * D < 1e7), where OpenMP start-up and spinning cost more than the work (measured
            0.7 s vs 0.5 ms on a busy 2-core machine), and faiss's own setting otherwise.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(c, 0.1, size=(50, 2)) for c in (0, 5)]).astype(np.float32)
        >>> res = kmeans(x, k=2, labels=np.repeat([0, 1], 50))
        >>> res.centroids.shape, res.stats.num_empty, res.stats.nmi
        ((2, 2), 0, 1.0)
    """
    x = _as_float32(features)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of points), got {k}")
    previous = faiss.omp_get_max_threads()
    if threads is None and n * k * d < 1e7:
        threads = 1
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        km = faiss.Kmeans(
            d, k, niter=niter, nredo=nredo, seed=seed, spherical=spherical, verbose=verbose,
            max_points_per_centroid=max_points_per_centroid or max(n // k + 1, 256),
            min_points_per_centroid=1,  # silence faiss's warning on small sets; stats report sizes anyway
        )
        km.train(x)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        assignments, dist = assign(x, centroids)
    finally:
        faiss.omp_set_num_threads(previous)
    stats = cluster_stats(assignments, k, float(dist.sum()), labels)
    return KMeansResult(assignments=assignments, centroids=centroids, stats=stats)


def centroid_logits(features: Tensor, centroids: Tensor, squared: bool = True) -> Tensor:
    """Negative (squared) Euclidean distance to every centroid: (N, k) "logits" of a cluster teacher.

    Example:
        >>> centroid_logits(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])).tolist()
        [[-1.0, -4.0]]
    """
    c = centroids.to(features)
    if squared:
        # ||x||^2 - 2 x.c + ||c||^2, clamped at 0: one matmul instead of (N, k, D) differences.
        d = features.pow(2).sum(1, keepdim=True) - 2 * features @ c.T + c.pow(2).sum(1)
        return -d.clamp_min(0)
    return -torch.cdist(features, c)


def centroid_soft_labels(
    features: Tensor, centroids: Tensor, temperature: float = 1.0, squared: bool = True
) -> Tensor:
    """softmax(-distance / temperature) over centroids: (N, k) distributions, nearest centroid highest.

    With L2-normalised features, squared distances lie in [0, 4]; temperatures around 0.05-0.2 give
    peaked but not one-hot targets.

    Example:
        >>> p = centroid_soft_labels(torch.tensor([[0.0, 0.1]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]]), 0.5)
        >>> round(float(p.sum()), 4), int(p.argmax())
        (1.0, 0)
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(centroid_logits(features, centroids, squared) / temperature, dim=1)


class CentroidClassifier(nn.Module):
    """A frozen feature extractor + k-means centroids, used as a classifier over k clusters.

    ``forward(images)`` returns centroid logits (negative squared distances); a method applies its
    own temperature, so this plugs in wherever source logits are expected.

    Args:
        encoder: maps images to features (N, D), e.g. a trunk ending in global pooling.
        centroids: (k, D) from :func:`kmeans` on the same (normalised) features.
        normalize: L2-normalise encoder features first (must match how the centroids were fitted).

    Example:
        >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
        >>> head = CentroidClassifier(enc, torch.randn(7, 4))
        >>> head(torch.rand(2, 3, 2, 2)).shape
        torch.Size([2, 7])
    """

    def __init__(self, encoder: nn.Module, centroids: Tensor | np.ndarray, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        self.register_buffer("centroids", torch.as_tensor(_as_float32(centroids)))

    def forward(self, images: Tensor) -> Tensor:
        f = self.encoder(images)
        if f.ndim > 2:
            f = f.flatten(2).mean(dim=2)
        if self.normalize:
            f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
        return centroid_logits(f, self.centroids)
