"""``sskt evaluate``: score a training checkpoint (main head, linear / k-NN probes, fine-tuning), or any
trained model file on a folder of class folders (accuracy, per-class accuracy, confusion matrix + picture).

The engine and the protocols are imported when the command runs: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sskt.commands.kit import command
from sskt.errors import SSKTError


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="MODEL",
                   help="a training checkpoint (out_dir/checkpoints/last.ckpt), or with DATA_DIR any trained model "
                        "file (a run's target.pt, an `sskt export` .pt / .pt2 / .safetensors / .ts)")
    p.add_argument("overrides", nargs="*", metavar="DATA_DIR | key=value",
                   help="DATA_DIR: a folder of class folders (DATA_DIR/<class>/<image>, or DATA_DIR/test/<class>/) "
                        "to score MODEL on; or, for a checkpoint's test split, dotted overrides, e.g. "
                        "data.root=/other/path data.per_class=100")
    p.add_argument("--protocol", choices=("main", "linear", "knn", "finetune"), default="main",
                   help="main: the main head on the test split (default); linear / knn: a probe on the frozen "
                        "features of each stage; finetune: train the whole target on the labelled data")
    p.add_argument("--layers", nargs="+", default=None, help="stages to probe (default: the target's stages)")
    p.add_argument("--spatial", type=int, default=None, help="pool stage maps to SxS before probing (default 1x1)")
    p.add_argument("--knn-k", type=int, default=20, help="neighbours of the k-NN protocol")
    p.add_argument("--json", action="store_true",
                   help="with DATA_DIR: print one JSON object instead of the tables (a checkpoint's scores are JSON)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="with DATA_DIR: where the confusion-matrix picture goes (a folder, or a .png file; "
                        "default: beside MODEL, <MODEL>.confusion.png)")
    p.add_argument("--batch-size", type=int, default=64, help="with DATA_DIR: images scored at a time (default 64)")


@command("evaluate", "score a checkpoint (main head, probes, fine-tuning), or a model file on a folder of classes",
         _evaluate_args)
def run_evaluate(args: argparse.Namespace) -> int:
    folders = [o for o in args.overrides if "=" not in o]
    if folders or not _is_training_checkpoint(Path(args.checkpoint)):
        return _evaluate_on_folder(args, folders)
    if args.out is not None:
        raise SSKTError("--out is for scoring a model on a folder: sskt evaluate MODEL DATA_DIR --out DIR")
    from sskt.engine.run import evaluate
    from sskt.experiments.protocols import finetune_checkpoint, probe_checkpoint

    def probe(protocol: str):
        return lambda ckpt, overrides: probe_checkpoint(ckpt, protocol, overrides, args.layers, args.spatial,
                                                        args.knn_k)

    protocols = {"main": evaluate, "linear": probe("linear"), "knn": probe("knn"), "finetune": finetune_checkpoint}
    print(json.dumps(protocols[args.protocol](args.checkpoint, args.overrides), indent=2))
    return 0


def _is_training_checkpoint(path: Path) -> bool:
    """A ``.ckpt`` is taken at its word (the existing path reports what is wrong with it); any other file is
    looked into only when no DATA_DIR is given."""
    if path.suffix.lower() == ".ckpt" or not path.is_file():
        return True
    from sskt.engine.model_file import file_kind
    from sskt.models.weights import read_checkpoint

    if file_kind(path) != "torch":
        return False
    try:
        obj = read_checkpoint(path)
    except SSKTError:
        return True  # the existing path names the problem
    return isinstance(obj, dict) and "sskt_config" in obj


def _evaluate_on_folder(args: argparse.Namespace, folders: list[str]) -> int:
    from sskt.experiments.predict import PICTURE_MAX_CLASSES, confusion_picture, default_picture_path, evaluate_folder

    if not folders:
        raise SSKTError(f"{args.checkpoint} is a model file: name the folder to score it on, sskt evaluate "
                        f"{args.checkpoint} DATA_DIR (DATA_DIR/<class>/<image>)")
    if len(folders) > 1 or len(args.overrides) > 1:
        raise SSKTError(f"give one DATA_DIR after the model, got {' '.join(args.overrides)} (key=value overrides "
                        f"are for a checkpoint's own test split)")
    if args.protocol != "main":
        raise SSKTError(f"--protocol {args.protocol} trains on a checkpoint's data; on a folder, evaluate scores "
                        f"the model's own head (drop --protocol)")
    result = evaluate_folder(args.checkpoint, folders[0], batch_size=args.batch_size)
    shown = len(result["confusion_matrix"]["labels"])
    if shown <= PICTURE_MAX_CLASSES:
        result["confusion_picture"] = str(confusion_picture(result, default_picture_path(args.checkpoint, args.out)))
    else:  # the counts are all in the JSON
        result["confusion_picture"] = None
        print(f"sskt: no confusion picture: {shown} classes are too many to read; --json has every count",
              file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else format_evaluation(result))
    return 0


def format_evaluation(result: dict[str, Any]) -> str:
    """Accuracy, per-class accuracy and the confusion matrix as plain-text tables."""
    lines = [f"{result['model']} on {result['data']}: {result['images']} images",
             f"accuracy {result['accuracy']:.2f}%   macro-averaged accuracy {result['macro_accuracy']:.2f}%", ""]
    per_class = result["per_class"]
    width = max(len("class"), *(len(c) for c in per_class))
    lines.append(f"{'class':<{width}}  images  correct  accuracy")
    lines += [f"{c:<{width}}  {v['images']:>6}  {v['correct']:>7}  {v['accuracy']:>7.2f}%"
              for c, v in per_class.items()]
    labels, counts = result["confusion_matrix"]["labels"], result["confusion_matrix"]["counts"]
    corner = "true \\ predicted"
    cell = max(5, min(6, max(len(c) for c in labels)), *(len(str(x)) for row in counts for x in row))
    lab = max(len(corner), *(len(c) for c in labels))
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              f"{corner:<{lab}}  " + "  ".join(f"{c[:cell]:>{cell}}" for c in labels)]
    lines += [f"{c:<{lab}}  " + "  ".join(f"{x:>{cell}}" for x in row) for c, row in zip(labels, counts)]
    if result.get("confusion_picture"):
        lines += ["", f"wrote {result['confusion_picture']} (confusion matrix)"]
    return "\n".join(lines)
