"""The ``sskt`` command line. Each command is a function registered in COMMANDS.

Every command that trains takes an optional YAML file followed by ``key.path=value`` overrides:

    sskt train configs/cifar10_r20_sskt.yaml train.epochs=1 data.per_class=100
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from sskt.errors import SSKTError
from sskt.registry import Registry

Command = Callable[[argparse.Namespace], int]
COMMANDS: Registry[tuple[Callable[[argparse.ArgumentParser], None], Command, str]] = Registry("command")


def config_args(p: argparse.ArgumentParser) -> None:
    """Arguments of a command that takes ``[CONFIG.yaml] key=value ...``."""
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value",
                   help="an optional YAML experiment file, then dotted overrides, e.g. train.epochs=5")


def command(name: str, help: str, args: Callable[[argparse.ArgumentParser], None] = config_args):
    """Register the decorated function as ``sskt <name>``; ``args`` adds its arguments."""

    def wrap(run: Command) -> Command:
        COMMANDS.register(name)((args, run, help))
        return run

    return wrap


def load_config(items: Sequence[str], base: dict | None = None):
    """An ExperimentConfig from ``[CONFIG.yaml] key=value ...`` (and defaults in ``base``)."""
    from sskt.config import ExperimentConfig, apply_overrides

    items = list(items)
    if items and "=" not in items[0]:
        path = items.pop(0)
        cfg = ExperimentConfig.from_yaml(path)
        raw = cfg.to_dict()
    else:
        raw = dict(base or {})
    bad = [i for i in items if "=" not in i]
    if bad:
        raise SSKTError(f"expected key=value overrides after the config file, got {bad}")
    return ExperimentConfig.from_dict(apply_overrides(raw, items))


def _print_result(result) -> None:
    name = "mAP" if result.metric == "map" else "top-1"
    best = "" if result.best is None else f"  at best val: {result.best:.2f}%"
    print(f"test {name}: final {result.final:.2f}%{best}  ({len(result.history)} evaluations) -> "
          f"{result.out_dir}/result.json")


@command("train", "train a target with any method (scratch, sskt, kd, ...) from a YAML experiment")
def run_train(args: argparse.Namespace) -> int:
    from sskt.engine.run import fit

    _print_result(fit(load_config(args.items)))
    return 0


@command("pretrain", "train a plain classifier on any dataset, to use later as a source (writes target.pt)")
def run_pretrain(args: argparse.Namespace) -> int:
    from sskt.engine.run import fit

    cfg = load_config(args.items, base={"name": "pretrain", "out_dir": "runs/pretrain"})
    if cfg.method.get("name") != "scratch":
        cfg.method = {"name": "scratch"}
    result = fit(cfg)
    _print_result(result)
    print(f"source checkpoint: {result.out_dir / 'target.pt'}  (use as `checkpoint:` of a source)")
    return 0


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
    from sskt.evaluation.protocols import finetune_checkpoint, probe_checkpoint

    def probe(protocol: str):
        return lambda ckpt, overrides: probe_checkpoint(ckpt, protocol, overrides, args.layers, args.spatial,
                                                        args.knn_k)

    protocols = {"main": evaluate, "linear": probe("linear"), "knn": probe("knn"), "finetune": finetune_checkpoint}
    print(json.dumps(protocols[args.protocol](args.checkpoint, args.overrides), indent=2))
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a training checkpoint (out_dir/checkpoints/last.ckpt)")
    p.add_argument("output", help="where to write the model file, e.g. target.pt, target.onnx; a model card "
                                  "goes to <output>.md")
    p.add_argument("--format", choices=["sskt", "torchscript", "onnx", "safetensors"], default=None,
                   help="default: from the output's suffix (.pt sskt, .ts/.torchscript, .onnx, .safetensors), "
                        "else sskt")


@command("export", "write the target alone (main head only, no auxiliary heads or sources)", _export_args)
def run_export(args: argparse.Namespace) -> int:
    from sskt.engine.export import export

    written = export(args.checkpoint, args.output, args.format)
    print(f"wrote {written.path} ({written.format})")
    print(f"wrote {written.card} (model card)")
    return 0


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="runs/quickstart")


@command("quickstart", "a 30-second demo on bundled digits: scratch vs SSKT over 3 seeds, no download", _quickstart_args)
def run_quickstart(args: argparse.Namespace) -> int:
    from sskt.quickstart import quickstart

    quickstart(seeds=args.seeds, out_dir=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    import sskt.commands  # noqa: F401  (commands contributed by other modules register on import)

    parser = argparse.ArgumentParser(prog="sskt", description="Knowledge transfer from pretrained source networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS.names():
        add_args, run, help_text = COMMANDS.get(name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SSKTError as err:
        print(f"sskt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sskt: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
