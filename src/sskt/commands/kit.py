"""What every ``sskt`` command uses: the COMMANDS registry, the ``command`` decorator, ``[CONFIG.yaml]
key=value`` arguments and their help, loading the config they name, and printing a run's result.

Imports of sskt.config, sskt.methods, ... inside functions keep ``sskt --help`` fast (they load torch).
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Callable, Sequence

from sskt.errors import SSKTError
from sskt.registry import Registry

if TYPE_CHECKING:  # imported for the hint only: sskt.engine loads torch
    from sskt.engine.run import RunResult

Command = Callable[[argparse.Namespace], int]
COMMANDS: Registry[tuple[Callable[[argparse.ArgumentParser], None], Command, str]] = Registry("command")


def config_args(p: argparse.ArgumentParser) -> None:
    """Arguments of a command that takes ``[CONFIG.yaml] key=value ...``; its help lists the config keys."""
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value",
                   help="an optional YAML experiment file, then dotted overrides, e.g. train.epochs=5")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog_fn = config_help  # type: ignore[attr-defined]  (built when the help is shown: it imports torch)


def train_args(p: argparse.ArgumentParser) -> None:
    """:func:`config_args` plus ``--recipe`` and ``--print-config``."""
    config_args(p)
    p.add_argument("--recipe", metavar="NAME", default=None,
                   help="start from a recipe shipped with sskt instead of a YAML file (`sskt init --list` lists "
                        "them); overrides apply on top, e.g. --recipe imagenet-source data.root=PATH")
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
    from sskt.sources.source import SourceConfig

    def show(value: object) -> str:
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(show(v) for v in value) + "]"
        if value is None or isinstance(value, bool) or value == "":
            return {None: "null", True: "true", False: "false", "": "''"}[value]  # type: ignore[index]
        return str(value)

    def default(f: dataclasses.Field) -> str:
        if f.default is not dataclasses.MISSING:
            return show(f.default)
        return "(required)" if f.default_factory is dataclasses.MISSING else show(f.default_factory())

    def keys(cls: type, only: tuple[str, ...] = ()) -> str:
        fields = [f for f in dataclasses.fields(cls) if not only or f.name in only]
        return " ".join(f"{f.name}={default(f)}" for f in fields) or "(no options)"

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
    lines += ["", "a source (each entry of method.sources; a KD teacher, whose name defaults to teacher):",
              block("", keys(SourceConfig))]
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


def load_config(items: Sequence[str], base: dict | None = None, recipe: str | None = None):
    """An ExperimentConfig from ``[CONFIG.yaml] key=value ...`` (and defaults in ``base``), or from the shipped
    ``recipe`` and ``key=value ...``."""
    from sskt.config import ExperimentConfig, apply_overrides

    items = list(items)
    if recipe is not None:
        from sskt.recipes import recipe_path

        if items and "=" not in items[0]:
            raise SSKTError(f"give a config file or --recipe, not both ({items[0]} and --recipe {recipe})")
        items.insert(0, str(recipe_path(recipe)))
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


def print_run_result(result: "RunResult") -> None:
    """One line: the run's final test metric (and at the best validation score, with its epoch counted from 1),
    and where result.json is."""
    name = "mAP" if result.metric == "map" else "top-1"
    epoch = result.record.get("best_epoch")
    at = f" (epoch {epoch})" if epoch is not None else ""
    best = "" if result.best is None else f"  at best val{at}: {result.best:.2f}%"
    print(f"test {name}: final {result.final:.2f}%{best}  ({len(result.history)} evaluations) -> "
          f"{result.out_dir}/result.json")
