"""Accuracy check of the soft-label cache: SSKT with live sources vs the exact cache, 3 seeds each.

Low-label CIFAR-10 (JPEG copy, 100 labels per class), ResNet-20 target, the CIFAR ResNet-32 and
ResNet-44 checkpoints as sources (configs/cifar10_r20_sskt.yaml), a short cosine schedule.

    python benchmarks/cache_accuracy.py --epochs 10 --num-sources 1 --out runs/cache-accuracy

Writes ``<out>/summary.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from sskt.config import ExperimentConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/cache-accuracy")
    p.add_argument("--config", default="configs/cifar10_r20_sskt.yaml")
    p.add_argument("--num-sources", type=int, default=2, help="keep the config's first N sources")
    args = p.parse_args()
    from sskt.engine.run import fit

    variants = {"live": None, "exact-cache": {"mode": "exact", "views": 8, "topk": 10}}
    rows = []
    for seed in args.seeds:  # seeds outermost: an interrupted run still has pairs to compare
        for name, cache in variants.items():
            overrides = [f"seed={seed}", f"out_dir={args.out}/{name}-s{seed}", f"train.epochs={args.epochs}",
                         "train.schedule=cosine", f"train.eval_every={args.epochs}", "train.progress_bar=false",
                         "train.tensorboard=false"]
            cfg = ExperimentConfig.from_yaml(args.config, overrides)
            cfg.method["sources"] = cfg.method["sources"][:args.num_sources]
            if cache is not None:
                cfg.method["cache"] = dict(cache)
            started = time.perf_counter()
            result = fit(cfg)
            rows.append({"variant": name, "seed": seed, "top1": result.final,
                         "train_seconds": result.record["train_seconds"],
                         "wall_seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps(rows[-1]), flush=True)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=2))
    print("| variant | top-1 per seed (%) | mean ± sd | train s/run |")
    print("|---|---|---|---|")
    for name in variants:
        acc = [r["top1"] for r in rows if r["variant"] == name]
        secs = [r["train_seconds"] for r in rows if r["variant"] == name]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"| {name} | {', '.join(f'{a:.2f}' for a in acc)} | {statistics.mean(acc):.2f} ± {sd:.2f} | "
              f"{statistics.mean(secs):.0f} |")


if __name__ == "__main__":
    main()
