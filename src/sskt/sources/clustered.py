"""Source kind ``clustered``: a k-means-clustered teacher (network or HOG) as an SSKT source.

Its logits are negative squared distances of the teacher's (L2-normalised, optionally whitened)
features to the k centroids, divided by ``options.temperature``; SSKT's per-source temperature then
applies on top, so with ``temperature: 1`` on the source the soft label is exactly
``softmax(-||f - c_j||^2 / options.temperature)``. A self-supervised network or HOG can then join
ImageNet-style classifier sources in one SSKT run.

Config (``kind: clustered``; the centroids come from a file or are fitted here)::

    - name: hog
      kind: clustered
      temperature: 1
      options:
        centroids: runs/ct-hog/centroids.pt      # written by `sskt cluster-transfer` (knows its teacher)
    - name: rot
      kind: clustered
      temperature: 1
      options:
        teacher: runs/rot32/checkpoints/last.ckpt  # or hog, target.pt, a state_dict (+ arch)
        layer: layer3
        k: 100
        data: {dataset: imagefolder, root: /data/cifar10-jpeg}   # images to fit k-means on (train split)
        temperature: 0.1
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from annotated_types import Gt
from torch import Tensor, nn

from sskt.config import DataConfig
from sskt.errors import SSKTError
from sskt.models.weights import file_digest
from sskt.sources.source import SOURCE_OPTIONS, SOURCES, Source, SourceConfig
from sskt.validation import Parsed


@SOURCE_OPTIONS.register("clustered")
@dataclass
class ClusteredOptions:
    """``options`` of a ``clustered`` source (see the module docstring); ``data``: a data section
    (:class:`~sskt.config.DataConfig`) of the images to fit k-means on."""

    centroids: str | None = None
    teacher: str | None = None
    arch: str | None = None
    layer: str | None = None
    spatial: int | None = None
    hog_cell: int = 8
    input_size: int | None = None  # the size (px) a network teacher sees the images at
    k: int | None = None
    data: Annotated[DataConfig | None, Parsed(DataConfig)] = None
    pca_dim: int | None = None
    seed: int = 0
    niter: int = 50
    temperature: Annotated[float, Gt(0)] = 0.1
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        # Types and ranges are checked when the config is read (sskt.validation); this is what they can't say.
        if self.centroids is None and (self.teacher is None or self.k is None or self.data is None):
            raise SSKTError("clustered source: give options.centroids (a file), or options.teacher, k and data")


class ClusterHead(nn.Module):
    """teacher features -> projection -> -squared distance to each centroid / temperature."""

    def __init__(self, teacher: nn.Module, centroids: Tensor, projection: Any, temperature: float) -> None:
        super().__init__()
        self.teacher = teacher
        self.projection = projection
        self.temperature = temperature
        self.register_buffer("centroids", centroids.float())

    def forward(self, images: Tensor) -> Tensor:
        from sskt.cluster.kmeans import centroid_logits

        # Distances of nearly equal unit vectors need fp32: never under the bank's bf16 autocast.
        with torch.autocast(device_type=images.device.type, enabled=False):
            f = self.projection(self.teacher(images.float()).float())
            return centroid_logits(f, self.centroids) / self.temperature


@SOURCES.register("clustered")
def build_clustered_source(cfg: SourceConfig, in_chans: int = 3) -> Source:
    """A :class:`Source` whose k "classes" are the clusters of a teacher's features."""
    from sskt.cluster.pipeline import Projection, cluster_images, default_cache_dir
    from sskt.cluster.teacher import load_teacher
    opts: ClusteredOptions = cfg.options  # read by source_config
    spec: dict[str, Any] = {"teacher": opts.teacher, "arch": opts.arch, "layer": opts.layer,
                            "spatial": opts.spatial, "hog_cell": opts.hog_cell, "input_size": opts.input_size}
    if opts.centroids is not None:
        path = Path(opts.centroids)
        if not path.is_file():
            raise SSKTError(f"source {cfg.name!r}: centroids file {path} not found")
        saved = torch.load(path, weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != "sskt-centroids-v1":
            raise SSKTError(f"source {cfg.name!r}: {path} is not a centroids file from `sskt cluster-transfer`")
        spec = {**saved["teacher"], **{k: v for k, v in spec.items() if v is not None and k != "hog_cell"}}
        teacher = load_teacher(spec["teacher"], spec.get("arch"), spec.get("layer"), spec.get("spatial"), in_chans,
                               cfg.trust_pickle, spec.get("hog_cell", 8), spec.get("input_size"))
        centroids, projection = saved["centroids"], Projection.from_state(saved["projection"])
        fingerprint = file_digest(path)[:16]
    else:
        from sskt.data.datasets import load_data

        teacher = load_teacher(opts.teacher or "", opts.arch, opts.layer, opts.spatial, in_chans, cfg.trust_pickle,
                               opts.hog_cell, opts.input_size)
        images = load_data(opts.data).train.images
        clustering = cluster_images(teacher, images, int(opts.k or 0), pca_dim=opts.pca_dim, seed=opts.seed,
                                    niter=opts.niter, cache_dir=opts.cache_dir or default_cache_dir())
        centroids, projection = clustering.centroids, clustering.projection
        fingerprint = f"{teacher.fingerprint}-k{opts.k}-{opts.pca_dim}-{opts.seed}"
    head = ClusterHead(teacher, centroids, projection, opts.temperature)
    zeros, ones = (0.0,) * in_chans, (1.0,) * in_chans  # the teacher normalises itself
    return Source(cfg.name, head, int(centroids.shape[0]), cfg.input_size, cfg.input_scale, zeros, ones,
                  cfg.bn_mode, cfg.frames, fingerprint=f"{fingerprint}-t{opts.temperature}")
