"""``sskt cache``: build (or resume, or check) the soft-label cache of an SSKT experiment ahead of training."""
from __future__ import annotations

import argparse
import time

from sskt.cli import command, config_args, load_config
from sskt.errors import SSKTError


@command("cache", "precompute the soft-label cache of an SSKT experiment (resumable; training then reuses it)",
         config_args)
def run_cache(args: argparse.Namespace) -> int:
    from sskt.data.datasets import load_data
    from sskt.engine.run import build_context
    from sskt.methods import build_method

    cfg = load_config(args.items)
    if cfg.method.get("name") != "sskt":
        raise SSKTError(f"sskt cache works on sskt experiments; this one's method is {cfg.method.get('name')!r}")
    if not cfg.method.get("cache"):
        raise SSKTError("this experiment has no method.cache; add e.g. method.cache.mode=exact (or clean)")
    started = time.perf_counter()
    splits = load_data(cfg.data)
    method = build_method(cfg.method, build_context(cfg, splits))  # builds or checks the cache
    for line in method.cache.report():
        print(line)
    print(f"done in {time.perf_counter() - started:.1f}s; `sskt train` with the same config reads these files")
    return 0
