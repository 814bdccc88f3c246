"""``sskt pretext`` and ``sskt cluster-transfer`` (Noroozi et al. 2018): a pretext ``fit``, and
:func:`sskt.experiments.noroozi.cluster_transfer`.

The engine is imported when a command runs, not when the parser is built: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse

from sskt.commands.kit import command, config_args, load_config, print_run_result

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
    from sskt.experiments.noroozi import cluster_transfer

    cfg = load_config(args.items, base={"name": "cluster-transfer", "out_dir": "runs/cluster-transfer"})
    print_run_result(cluster_transfer(cfg))
    return 0
