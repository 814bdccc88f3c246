"""``sskt quickstart``: the 2-minute demo of :mod:`sskt.experiments.quickstart`.

The demo (and with it the engine) is imported when the command runs: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse

from sskt.commands.kit import command


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=3, metavar="N",
                   help="runs of scratch and of SSKT each, one per seed; the table gives mean ± std (default: 3)")
    p.add_argument("--out", default="runs/quickstart", metavar="DIR",
                   help="folder of the runs: the source's, then one per method and seed (default: runs/quickstart)")


@command("quickstart", "a 2-minute demo on bundled digits: scratch vs SSKT over 3 seeds, no download", _quickstart_args)
def run_quickstart(args: argparse.Namespace) -> int:
    from sskt.experiments.quickstart import quickstart

    quickstart(seeds=args.seeds, out_dir=args.out)
    return 0
