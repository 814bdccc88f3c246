"""``sskt train`` and ``sskt pretrain``: one run of ``fit`` from a YAML experiment and overrides.

The engine is imported when a command runs, not when the parser is built: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse

from sskt.commands.kit import command, load_config, print_run_result, train_args


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
    cfg = load_config(args.items, recipe=args.recipe)
    if _checked(cfg, args.print_config):
        return 0
    from sskt.engine.run import fit

    print_run_result(fit(cfg))
    return 0


@command("pretrain", "train a plain classifier on any dataset, to use later as a source (writes target.pt)",
         train_args)
def run_pretrain(args: argparse.Namespace) -> int:
    cfg = load_config(args.items, base={"name": "pretrain", "out_dir": "runs/pretrain"}, recipe=args.recipe)
    if cfg.method.get("name") != "scratch":
        cfg.method = {"name": "scratch"}
    if _checked(cfg, args.print_config):
        return 0
    from sskt.engine.run import fit

    result = fit(cfg)
    print_run_result(result)
    print(f"source checkpoint: {result.out_dir / 'target.pt'}  (use as `checkpoint:` of a source)")
    return 0


def _init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", metavar="NAME", help="the recipe to write (see --list)")
    p.add_argument("path", nargs="?", metavar="FILE.yaml", help="where to write it (default: NAME.yaml here)")
    p.add_argument("--list", action="store_true", help="list the recipes shipped with sskt")
    p.add_argument("--force", action="store_true", help="overwrite FILE.yaml if it exists")


@command("init", "write a recipe shipped with sskt to a YAML file to edit (then: sskt train FILE.yaml)", _init_args)
def run_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sskt.errors import SSKTError
    from sskt.io import atomic_text_write
    from sskt.recipes import recipe_names, recipe_path

    if args.list or args.recipe is None:
        for name in recipe_names():
            first = recipe_path(name).read_text().splitlines()[0].lstrip("# ")
            print(f"{name:<32} {first}")
        return 0
    source = recipe_path(args.recipe)
    target = Path(args.path or f"{args.recipe}.yaml")
    if target.exists() and not args.force:
        raise SSKTError(f"{target} exists; choose another file name or add --force to overwrite it")
    atomic_text_write(source.read_text(), target)
    print(f"wrote {target}; edit it (data.root first), then: sskt train {target}")
    return 0
