"""``sskt distill DATA_DIR --out OUT_DIR``: a folder of images in, a small exported model and a report out."""
from __future__ import annotations

import argparse

from sskt.commands.kit import command


def distill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", metavar="DATA_DIR",
                   help="a folder of class subfolders (split here into train/validation/test), or train/ and "
                        "test/ folders of class subfolders")
    p.add_argument("items", nargs="*", metavar="key=value",
                   help="overrides of the distillation stage (e.g. train.epochs=50); data.* and target.* reach "
                        "every stage; clusters.<key> and scratch.<key> reach those stages only")
    p.add_argument("--out", required=True, metavar="OUT_DIR",
                   help="where the stages, OUT_DIR/model.pt, model.onnx, model.md and report.json go; "
                        "running the same command again resumes and reuses finished stages")
    p.add_argument("--unlabeled", metavar="DIR", default=None,
                   help="a folder of images without labels (any layout): clustered first, then learnt from")
    p.add_argument("--budget", default="90m",
                   help="CPU time for the whole job, e.g. 30m, 2h (default 90m); the schedule is sized to it")
    p.add_argument("--smoke", action="store_true",
                   help="every stage at its smallest (1 epoch, a few images): checks a setup in about a minute")
    p.add_argument("--compare-scratch", action="store_true",
                   help="also train the same target on the labelled images alone, as a reference")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (sizes, epochs, estimated CPU minutes per stage) and exit")
    p.add_argument("--seed", type=int, default=0, help="training seed (the split's seed is data.subset_seed)")


@command("distill", "from a folder of images to a small exported model (model.pt, model.onnx) with the best "
                    "recipe measured: an ImageNet source adapted to your classes, distilled into a small target",
         distill_args)
def run_distill(args: argparse.Namespace) -> int:
    from sskt.experiments.distill import distill

    distill(args.data_dir, args.out, unlabeled=args.unlabeled, budget=args.budget, smoke=args.smoke,
            compare_scratch=args.compare_scratch, seed=args.seed, overrides=args.items,
            dry_run=args.dry_run)
    return 0
