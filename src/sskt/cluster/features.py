"""Feature extraction from any layer of a frozen network, plus L2 normalisation and PCA whitening.

Used to cluster a teacher's features (Noroozi et al. 2018, "cluster classification"; VISSL
ClusterFit: L2-normalise, optional PCA, k-means) and to probe representations layer by layer.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sskt.progress import Progress

Data = Tensor | Iterable


def _batches(data: Data, batch_size: int) -> Iterator[Tensor]:
    """Image batches from a tensor (N, C, H, W) or a loader yielding tensors, tuples or dicts."""
    if isinstance(data, Tensor):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
        return
    for item in data:
        if isinstance(item, dict):
            item = item["image"]
        elif isinstance(item, (tuple, list)):
            item = item[0]
        yield item


def _to_float01(x: Tensor) -> Tensor:
    # Loaders of this project yield uint8; the networks take float [0, 1] and normalise themselves.
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def _pool(x: Tensor, spatial: int | None) -> Tensor:
    if x.ndim <= 2:
        return x.flatten(1)
    if spatial is None:
        return x.flatten(2).mean(dim=2)  # global average pool
    pool = F.adaptive_avg_pool2d if x.ndim == 4 else F.adaptive_avg_pool3d
    return pool(x, spatial).flatten(1)


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    # Eval mode (BatchNorm running statistics, no dropout), restored afterwards.
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def l2_normalize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Rows divided by their L2 norm plus ``eps`` (VISSL ClusterFit's ``f / (||f|| + 1e-5)``).

    Example:
        >>> l2_normalize(torch.tensor([[3.0, 4.0]])).round(decimals=3).tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    return x / (x.norm(dim=1, keepdim=True) + eps)


def extract_multi(
    model: nn.Module,
    data: Data,
    layers: Sequence[str | None],
    batch_size: int = 256,
    device: str | torch.device | None = None,
    spatial: int | None = None,
    normalize: bool = False,
) -> dict[str | None, Tensor]:
    """Features of several named modules in one pass over the data.

    Args:
        model: any network; it is run in eval mode under ``torch.inference_mode`` and its mode is restored.
        data: images (N, C, H, W) as a tensor (uint8 is scaled to [0, 1]) or an iterable of batches
            (tensors, ``(images, labels)`` tuples or dicts with ``"image"``).
        layers: names from ``model.named_modules()``; ``None`` means the model's output.
        spatial: ``None`` averages feature maps over space; an integer s pools them to s x s first
            (the per-layer linear-probe protocol keeps some spatial layout).
        normalize: L2-normalise every feature vector.

    Returns:
        name -> float32 CPU tensor (N, D).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3))
        >>> out = extract_multi(net, torch.rand(5, 3, 16, 16), ["0", "2", None], spatial=2)
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'0': (5, 16), '2': (5, 32), None: (5, 32)}
    """
    modules = dict(model.named_modules())
    missing = [name for name in layers if name is not None and name not in modules]
    if missing:
        raise ValueError(f"{type(model).__name__} has no module(s) {missing}; pick names from model.named_modules()")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    captured: dict[str, Tensor] = {}

    def hook(name: str):
        def fn(_m: nn.Module, _i: tuple, output: Tensor | tuple) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            captured[name] = _pool(output, spatial).float().cpu()
        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in layers if n is not None]
    chunks: dict[str | None, list[Tensor]] = {n: [] for n in layers}
    total = len(data) if isinstance(data, Tensor) else 0
    try:
        with _frozen(model), Progress(total, f"features of {type(model).__name__}", "images") as bar:
            for images in _batches(data, batch_size):
                bar.update(len(images))
                out = model(_to_float01(images.to(device)))
                if isinstance(out, (tuple, list)):
                    out = out[0]
                for n in layers:
                    chunks[n].append(_pool(out, spatial).float().cpu() if n is None else captured[n])
                captured.clear()
    finally:
        for h in handles:
            h.remove()
    result = {n: torch.cat(c) if c else torch.empty(0) for n, c in chunks.items()}
    if normalize:
        result = {n: l2_normalize(f) for n, f in result.items()}
    return result


def extract_features(
    model: nn.Module,
    data: Data,
    layer: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    spatial: int | None = None,
    normalize: bool = True,
) -> Tensor:
    """Features (N, D) of one named module (``None``: the model output), L2-normalised by default.

    Spatial maps are global-average-pooled (or pooled to ``spatial`` x ``spatial``). See
    :func:`extract_multi` for the accepted ``data``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        >>> f = extract_features(net, torch.rand(10, 3, 8, 8), layer="1", batch_size=4)
        >>> f.shape, bool(torch.allclose(f.norm(dim=1), torch.ones(10), atol=1e-3))
        (torch.Size([10, 8]), True)
    """
    return extract_multi(model, data, [layer], batch_size, device, spatial, normalize)[layer]


class PCAWhitening:
    """PCA projection to ``dim`` components, each scaled to unit variance (then optionally L2-normalised).

    Fitted on numpy float64 for stability; ``transform`` accepts and returns the input's type
    (torch tensor or numpy array) as float32.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(200, 10)) * np.arange(1, 11)
        >>> pca = PCAWhitening(dim=4).fit(x)
        >>> y = pca.transform(x)
        >>> y.shape, bool(np.allclose(y.std(axis=0, ddof=1), 1.0, atol=1e-3))
        ((200, 4), True)
    """

    def __init__(self, dim: int | None = None, eps: float = 1e-8, normalize: bool = False) -> None:
        self.dim, self.eps, self.normalize = dim, eps, normalize
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None  # (D, dim), already divided by sqrt(eigenvalue)

    def fit(self, x: Tensor | np.ndarray) -> "PCAWhitening":
        a = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
        self.mean = a.mean(axis=0)
        centred = a - self.mean
        # SVD of the data, not the covariance: fine for N x D up to a few thousand dimensions.
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        dim = min(self.dim or len(s), len(s))
        std = s[:dim] / np.sqrt(max(len(a) - 1, 1))
        self.projection = vt[:dim].T / (std + self.eps)
        return self

    def transform(self, x: Tensor | np.ndarray) -> Tensor | np.ndarray:
        if self.projection is None or self.mean is None:
            raise RuntimeError("PCAWhitening.transform called before fit")
        is_tensor = isinstance(x, Tensor)
        a = np.asarray(x.detach().cpu() if is_tensor else x, dtype=np.float64)
        y = ((a - self.mean) @ self.projection).astype(np.float32)
        if self.normalize:
            y /= np.linalg.norm(y, axis=1, keepdims=True) + 1e-5
        return torch.from_numpy(y) if is_tensor else y

    def fit_transform(self, x: Tensor | np.ndarray) -> Tensor | np.ndarray:
        return self.fit(x).transform(x)
