"""``sskt cache``: build (or resume, or check) the soft-label cache of an SSKT experiment ahead of training.

The cache builder (and with it the engine) is imported when the command runs: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse
import time

from sskt.commands.kit import command, config_args, load_config


@command("cache", "precompute the soft-label cache of an SSKT experiment (resumable; training then reuses it)",
         config_args)
def run_cache(args: argparse.Namespace) -> int:
    from sskt.experiments.cache import build_cache

    cfg = load_config(args.items)
    started = time.perf_counter()
    for line in build_cache(cfg):
        print(line)
    print(f"done in {time.perf_counter() - started:.1f}s; `sskt train` with the same config reads these files")
    return 0
