"""``sskt evaluate``: score a training checkpoint with the main head, linear / k-NN probes or fine-tuning.

The engine and the protocols are imported when the command runs: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json

from sskt.commands.kit import command


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a training checkpoint (out_dir/checkpoints/last.ckpt)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/other/path data.per_class=100")
    p.add_argument("--protocol", choices=("main", "linear", "knn", "finetune"), default="main",
                   help="main: the main head on the test split (default); linear / knn: a probe on the frozen "
                        "features of each stage; finetune: train the whole target on the labelled data")
    p.add_argument("--layers", nargs="+", default=None, help="stages to probe (default: the target's stages)")
    p.add_argument("--spatial", type=int, default=None, help="pool stage maps to SxS before probing (default 1x1)")
    p.add_argument("--knn-k", type=int, default=20, help="neighbours of the k-NN protocol")


@command("evaluate", "score a training checkpoint: main head, or linear / k-NN probes, or fine-tuning", _evaluate_args)
def run_evaluate(args: argparse.Namespace) -> int:
    from sskt.engine.run import evaluate
    from sskt.experiments.protocols import finetune_checkpoint, probe_checkpoint

    def probe(protocol: str):
        return lambda ckpt, overrides: probe_checkpoint(ckpt, protocol, overrides, args.layers, args.spatial,
                                                        args.knn_k)

    protocols = {"main": evaluate, "linear": probe("linear"), "knn": probe("knn"), "finetune": finetune_checkpoint}
    print(json.dumps(protocols[args.protocol](args.checkpoint, args.overrides), indent=2))
    return 0
