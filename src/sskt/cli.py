"""The ``sskt`` command line: the entry point. Each command is a function in :mod:`sskt.commands`,
registered in COMMANDS (:mod:`sskt.commands.kit`) when its module is imported here.

Every command that trains takes an optional YAML file followed by ``key.path=value`` overrides:

    sskt train configs/cifar10_r20_sskt.yaml train.epochs=1 data.per_class=100
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from sskt import __version__
from sskt.commands import cache, compare, distill, evaluate, export, noroozi, predict, quickstart, rank_sources, train  # noqa: F401  (register)
from sskt.commands.kit import COMMANDS
from sskt.errors import SSKTError
from sskt.io import disk_full_report


def build_parser() -> argparse.ArgumentParser:
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
    except Exception as err:
        # A full disk anywhere in the chain: sskt's own writes raise DiskFullError (an SSKTError, above); this
        # catches files libraries write themselves (CSV and TensorBoard logs, torch's writer in a RuntimeError).
        full = disk_full_report(err)
        if full is not None:
            print(f"sskt: error: {full}", file=sys.stderr)
            return 2
        if isinstance(err, OSError):  # a permission, a missing folder: files are written atomically, none is half there
            where = f" ({err.filename})" if err.filename else ""
            print(f"sskt: error: {err.strerror or err}{where}; fix the path, then run the same command again to "
                  f"resume", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # python -m sskt.cli
    sys.exit(main())
