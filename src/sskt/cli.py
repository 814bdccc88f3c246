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
    """Arguments of a command that takes ``[CONFIG.yaml] key=value ...``; its help lists the config keys."""
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value",
                   help="an optional YAML experiment file, then dotted overrides, e.g. train.epochs=5")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog_fn = config_help  # type: ignore[attr-defined]  (built when the help is shown: it imports torch)


def train_args(p: argparse.ArgumentParser) -> None:
    """:func:`config_args` plus ``--print-config``."""
    config_args(p)
    p.add_argument("--print-config", action="store_true",
                   help="print the fully resolved config as YAML and exit without training")


def config_help(width: int = 100) -> str:
    """The help's epilog: every config key with its default, the methods with their options, the datasets
    and the architectures."""
    import dataclasses
    import textwrap

    from sskt.config import DataConfig, ExperimentConfig, TargetConfig, TrainConfig
    from sskt.data import DATASETS
    from sskt.methods import METHODS
    from sskt.models import MODELS

    def show(value: object) -> str:
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(show(v) for v in value) + "]"
        if value is None or isinstance(value, bool) or value == "":
            return {None: "null", True: "true", False: "false", "": "''"}[value]  # type: ignore[index]
        return str(value)

    def keys(cls: type, only: tuple[str, ...] = ()) -> str:
        fields = [f for f in dataclasses.fields(cls) if not only or f.name in only]
        return " ".join(f"{f.name}={show(f.default if f.default is not dataclasses.MISSING else f.default_factory())}"
                        for f in fields) or "(no options)"

    def block(title: str, text: str, indent: int = 10) -> str:
        return textwrap.fill(text, width, initial_indent=f"  {title:<{indent - 2}}", subsequent_indent=" " * indent,
                             break_on_hyphens=False, break_long_words=False)

    lines = ["config keys and their defaults (set them in CONFIG.yaml, or as key=value / section.key=value):",
             block("", keys(ExperimentConfig, ("name", "seed", "out_dir"))),
             block("data", keys(DataConfig)), block("target", keys(TargetConfig)), block("train", keys(TrainConfig)),
             block("method", "name=scratch, plus the options of that method:"), "",
             "methods and their options (method.<option>=value):"]
    for name in METHODS.names():
        options = METHODS.get(name).options_class
        lines.append(block(name, keys(options) if options else "(see its docs)", indent=20))
    lines += ["", block("datasets:", ", ".join(DATASETS.names()), indent=16),
              block("archs:", ", ".join(MODELS.names()) + ", timm:<name>, hf-hub:<org>/<name>, torchvision:<name>",
                    indent=16),
              "", "A ~ in a path stands for your home folder. Every option: README.md and docs/."]
    return "\n".join(lines)


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


def _checked(cfg, print_config: bool) -> bool:
    """Check the method's options before any data is read; print the resolved config if asked.
    True when the command is done (the config was printed)."""
    import sskt.methods  # noqa: F401  (registers every method)
    from sskt.methods.base import check_method

    check_method(cfg.method)
    if print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return print_config


@command("train", "train a target with any method (scratch, sskt, kd, ...) from a YAML experiment", train_args)
def run_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.items)
    if _checked(cfg, args.print_config):
        return 0
    from sskt.engine.run import fit

    _print_result(fit(cfg))
    return 0


@command("pretrain", "train a plain classifier on any dataset, to use later as a source (writes target.pt)",
         train_args)
def run_pretrain(args: argparse.Namespace) -> int:
    cfg = load_config(args.items, base={"name": "pretrain", "out_dir": "runs/pretrain"})
    if cfg.method.get("name") != "scratch":
        cfg.method = {"name": "scratch"}
    if _checked(cfg, args.print_config):
        return 0
    from sskt.engine.run import fit

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

    from sskt import __version__

    parser = argparse.ArgumentParser(prog="sskt", description="Knowledge transfer from pretrained source networks.")
    parser.add_argument("--version", action="version", version=f"sskt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS.names():
        add_args, run, help_text = COMMANDS.get(name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


class _Parser(argparse.ArgumentParser):
    """A command's parser: ``[CONFIG.yaml] key=value`` items may stand on both sides of an option
    (``train a.yaml --print-config train.epochs=3``), and its epilog is built only when its help is shown
    (``epilog_fn``)."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        if isinstance(getattr(namespace, "items", None), list):
            namespace.items += [a for a in extras if not a.startswith("-")]
            extras = [a for a in extras if a.startswith("-")]
        return namespace, extras

    def format_help(self) -> str:
        fn = getattr(self, "epilog_fn", None)
        if fn is not None and self.epilog is None:
            self.epilog = fn()
        return super().format_help()


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
    except OSError as err:  # the filesystem (a full disk, a permission): files are written atomically, none is half there
        where = f" ({err.filename})" if err.filename else ""
        print(f"sskt: error: {err.strerror or err}{where}; free space or fix the path, then run the same command "
              f"again to resume", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m sskt.cli`: run the importable module's main, where the commands of sskt.commands register.
    from sskt import cli

    sys.exit(cli.main())
