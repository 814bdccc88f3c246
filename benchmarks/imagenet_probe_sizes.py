"""How much an ImageNet source knows about CIFAR-10 at each input size: the linear probe that
``adapt: probe`` fits, scored on the validation split and on 2,000 test images, with its cost.

    OMP_NUM_THREADS=2 python benchmarks/imagenet_probe_sizes.py [--sizes 64 96 128] [--arch efficientnet_lite0]

CIFAR-10 (JPEG copy), the 1,000 labelled images of the benchmarks (100 per class, subset_seed 0) and
their mirror images; the validation split (50 per class) picks the L2 penalty. Results: BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import time

import torch

from sskt.config import DataConfig
from sskt.data.datasets import load_data
from sskt.evaluation.scoring import evaluate_on_test
from sskt.sources.adapt import adapt_with_probe
from sskt.sources.source import build_source


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/datasets/cifar10-jpeg")
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    args = p.parse_args()
    splits = load_data(DataConfig(dataset="imagefolder", root=args.root, per_class=100, val_per_class=50,
                                  test_per_class=200))
    print(f"| source | input px | penalty (chosen on val) | val top-1 | test top-1 (2,000) | fit s | test img/s |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        src = build_source({"name": "imagenet", "arch": args.arch, "pretrained": True, "input_size": size})
        src.network.to(memory_format=torch.channels_last)
        started = time.perf_counter()
        info = adapt_with_probe(src, splits.train, splits.val)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        acc = evaluate_on_test(src, splits.test)
        rate = len(splits.test) / (time.perf_counter() - started)
        print(f"| {args.arch} | {size} | {info['weight_decay']:g} | {info['val_top1']:.1f} | {acc:.1f} | "
              f"{fit_s:.1f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
