"""The clustering chain of cluster-based knowledge transfer, cached on disk.

teacher features of unlabelled training images -> L2 normalisation (-> optional PCA whitening and
L2 again) -> faiss k-means -> cluster ids (pseudo-labels); test images get their nearest centroid.
Features are cached by (teacher, data, layer); assignments additionally by the k-means settings.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sskt.cluster.features import l2_normalize
from sskt.cluster.kmeans import ClusterStats, assign, cluster_stats, kmeans
from sskt.cluster.teacher import teacher_features
from sskt.io import atomic_torch_save


def images_digest(images: Tensor) -> str:
    """Content hash of an image tensor (its bytes and shape): the data part of cache keys."""
    h = hashlib.blake2b(digest_size=10)
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def _key(parts: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=10).hexdigest()


@dataclass
class Projection:
    """What turns raw teacher features into the space the centroids live in."""

    mean: Tensor | None = None  # PCA centring (None: no PCA)
    matrix: Tensor | None = None  # (D, d) PCA whitening

    def __call__(self, features: Tensor) -> Tensor:
        f = l2_normalize(features.float())
        if self.matrix is not None and self.mean is not None:
            f = l2_normalize((f - self.mean.to(f)) @ self.matrix.to(f))
        return f

    def state(self) -> dict[str, Tensor] | None:
        return None if self.matrix is None else {"mean": self.mean, "matrix": self.matrix}

    @classmethod
    def from_state(cls, state: dict | None) -> "Projection":
        return cls() if not state else cls(state["mean"], state["matrix"])


@dataclass
class Clustering:
    """Pseudo-labels of the training (and test) images, the centroids and the cluster statistics."""

    train_labels: Tensor  # (N,) long
    test_labels: Tensor | None  # (M,) long, nearest centroid of each test image
    centroids: Tensor  # (k, d) float32
    projection: Projection
    stats: ClusterStats
    test_nmi: float | None
    cached: bool

    def summary(self) -> dict[str, Any]:
        s = self.stats.summary()
        s["sizes"] = [int(v) for v in self.stats.sizes]
        s["test_nmi"] = self.test_nmi
        s["from_cache"] = self.cached
        return s


def cached_features(teacher: torch.nn.Module, images: Tensor, data_key: str, cache_dir: Path | None,
                    batch_size: int | None = None) -> Tensor:
    """Teacher features of ``images``, read from / written to ``cache_dir`` by (teacher, data)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"features-{_key({'teacher': teacher.fingerprint, 'data': data_key})}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
    feats = teacher_features(teacher, images, batch_size)
    if path is not None:
        atomic_torch_save(feats, path)
    return feats


def cluster_images(
    teacher: torch.nn.Module,
    train_images: Tensor,
    k: int,
    test_images: Tensor | None = None,
    train_labels: Tensor | None = None,
    test_labels: Tensor | None = None,
    pca_dim: int | None = None,
    seed: int = 0,
    niter: int = 50,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
) -> Clustering:
    """Cluster the teacher's features of ``train_images`` into ``k`` groups (see the module docstring).

    True labels, when given, only feed the NMI of the statistics. With ``cache_dir`` the features
    and the assignments are reused by any later call with the same teacher, images and settings.
    """
    from sskt.cluster.features import PCAWhitening

    cache = Path(cache_dir) if cache_dir is not None else None
    train_key = images_digest(train_images)
    test_key = images_digest(test_images) if test_images is not None else None
    settings = {"teacher": teacher.fingerprint, "train": train_key, "test": test_key, "k": k, "pca": pca_dim,
                "seed": seed, "niter": niter}
    path = cache / f"kmeans-{_key(settings)}.pt" if cache is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=False)  # our own file: numpy stats inside
        return Clustering(saved["train_labels"], saved["test_labels"], saved["centroids"],
                          Projection.from_state(saved["projection"]), saved["stats"], saved["test_nmi"], True)
    feats = cached_features(teacher, train_images, train_key, cache, batch_size)
    projection = Projection()
    x = l2_normalize(feats)
    if pca_dim:
        pca = PCAWhitening(dim=pca_dim).fit(x)
        projection = Projection(torch.from_numpy(pca.mean).float(), torch.from_numpy(pca.projection).float())
    x = projection(feats)
    result = kmeans(x, k, seed=seed, niter=niter, labels=train_labels)
    centroids = torch.from_numpy(result.centroids)
    test_assign, test_nmi = None, None
    if test_images is not None:
        tf = projection(cached_features(teacher, test_images, test_key or "", cache, batch_size))
        test_assign = torch.from_numpy(assign(tf.numpy(), result.centroids)[0])
        if test_labels is not None:
            test_nmi = cluster_stats(test_assign.numpy(), k, labels=test_labels).nmi
    clustering = Clustering(torch.from_numpy(result.assignments), test_assign, centroids, projection,
                            result.stats, test_nmi, False)
    if path is not None:
        atomic_torch_save({"train_labels": clustering.train_labels, "test_labels": test_assign,
                           "centroids": centroids, "projection": projection.state(), "stats": result.stats,
                           "test_nmi": test_nmi}, path)
    return clustering


def save_centroids(path: str | Path, clustering: Clustering, teacher: dict[str, Any]) -> Path:
    """Write what a ``clustered`` source needs: centroids, projection and how to rebuild the teacher."""
    return atomic_torch_save({"format": "sskt-centroids-v1", "centroids": clustering.centroids,
                              "projection": clustering.projection.state(), "teacher": teacher}, path)


def default_cache_dir() -> Path:
    """``$SSKT_CACHE_DIR/clusters`` (default ``~/.cache/sskt/clusters``)."""
    import os

    return Path(os.environ.get("SSKT_CACHE_DIR", Path.home() / ".cache" / "sskt")) / "clusters"
