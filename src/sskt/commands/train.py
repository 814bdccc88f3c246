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
    cfg = load_config(args.items)
    if _checked(cfg, args.print_config):
        return 0
    from sskt.engine.run import fit

    print_run_result(fit(cfg))
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
    print_run_result(result)
    print(f"source checkpoint: {result.out_dir / 'target.pt'}  (use as `checkpoint:` of a source)")
    return 0
