"""Cluster-transfer (Noroozi et al. 2018): cluster a teacher's features (or HOG) with k-means, keep the
centroids, and train the target on the cluster ids."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from sskt.cluster.pipeline import save_centroids
from sskt.config import ExperimentConfig
from sskt.data.datasets import load_data
from sskt.engine.run import RunResult, build_context, fit
from sskt.engine.rundir import run_lock
from sskt.methods.base import parse_options
from sskt.methods.cluster_transfer import ClusterTransferOptions, cluster_for


def cluster_transfer(cfg: ExperimentConfig, callbacks: Sequence[Any] = ()) -> RunResult:
    """Cluster, write ``<out_dir>/centroids.pt`` and train the target on the cluster ids, holding the run
    folder's lock throughout (see :func:`_cluster_transfer`)."""
    with run_lock(Path(cfg.out_dir)):
        return _cluster_transfer(cfg, callbacks)


def _cluster_transfer(cfg: ExperimentConfig, callbacks: Sequence[Any] = ()) -> RunResult:
    """Cluster, write ``<out_dir>/centroids.pt`` (for a ``clustered`` SSKT source) and train the target on the
    cluster ids; ``cfg.method`` holds the options (teacher, layer, k, pca_dim, ...) and its name is set to
    ``cluster-transfer``. Prints the clustering's summary and where the centroids went."""
    cfg.method = {**cfg.method, "name": "cluster-transfer"}
    opts = parse_options(ClusterTransferOptions, {k: v for k, v in cfg.method.items() if k != "name"})
    splits = load_data(cfg.data)
    clustering = cluster_for(opts, build_context(cfg, splits), splits.train.images.shape[1])
    summary = clustering.summary()
    print("clusters:", json.dumps({k: v for k, v in summary.items() if k != "sizes"}))
    centroids = save_centroids(Path(cfg.out_dir) / "centroids.pt", clustering, opts.teacher_spec())
    print(f"centroids: {centroids} (options.centroids of a `clustered` SSKT source)")
    return fit(cfg, callbacks)  # the method reads the same clustering back from the cache
