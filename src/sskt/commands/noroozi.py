"""``sskt pretext`` and ``sskt cluster-transfer`` (Noroozi et al. 2018): thin wrappers over ``fit``."""
from __future__ import annotations

import argparse
import json

from sskt.cli import _print_result, command, config_args, load_config

PRETEXT_TASKS = ("rotation", "jigsaw", "jigsaw++")


def _pretext_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=PRETEXT_TASKS, required=True, help="the pretext task (sets method.name)")
    config_args(p)


@command("pretext", "train the target on a pretext task (rotation, jigsaw, jigsaw++) without labels", _pretext_args)
def run_pretext(args: argparse.Namespace) -> int:
    from sskt.engine.run import fit

    cfg = load_config(args.items, base={"name": f"pretext-{args.task}", "out_dir": f"runs/pretext-{args.task}"})
    cfg.method = {**cfg.method, "name": args.task}  # options of the YAML / overrides are the task's
    result = fit(cfg)
    best = "" if result.best is None else f"  at best val {result.best:.2f}%"
    print(f"pretext top-1 (test split): final {result.final:.2f}%{best}  -> "
          f"{result.out_dir}/result.json")
    print(f"trunk: {result.checkpoint} (sskt evaluate --protocol linear|knn|finetune, "
          f"or method.teacher of sskt cluster-transfer)")
    return 0


@command("cluster-transfer", "cluster a teacher's features (or HOG) with k-means and train the target on the "
         "cluster ids (method options: teacher, layer, k, pca_dim, ...)", config_args)
def run_cluster_transfer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sskt.cluster.pipeline import save_centroids
    from sskt.data.datasets import load_data
    from sskt.engine.run import build_context, fit
    from sskt.methods.base import parse_options
    from sskt.methods.cluster_transfer import ClusterTransferOptions, cluster_for

    cfg = load_config(args.items, base={"name": "cluster-transfer", "out_dir": "runs/cluster-transfer"})
    cfg.method = {**cfg.method, "name": "cluster-transfer"}
    opts = parse_options(ClusterTransferOptions, {k: v for k, v in cfg.method.items() if k != "name"},
                         "cluster-transfer")
    splits = load_data(cfg.data)
    clustering = cluster_for(opts, build_context(cfg, splits), splits.train.images.shape[1])
    summary = clustering.summary()
    print("clusters:", json.dumps({k: v for k, v in summary.items() if k != "sizes"}))
    centroids = save_centroids(Path(cfg.out_dir) / "centroids.pt", clustering, opts.teacher_spec())
    print(f"centroids: {centroids} (options.centroids of a `clustered` SSKT source)")
    result = fit(cfg)  # the method reads the same clustering back from the cache
    _print_result(result)
    return 0
