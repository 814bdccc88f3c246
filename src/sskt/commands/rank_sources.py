"""``sskt rank-sources``: score the candidate sources of an experiment on its labelled images, before training.

The scoring (and with it torch) is imported when the command runs: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse
import time

from sskt.commands.kit import command, config_args, load_config


@command("rank-sources", "rank the config's method.sources by transferability (LogME, LEEP, NCE) on the "
         "labelled training images, without training", config_args)
def run_rank_sources(args: argparse.Namespace) -> int:
    from sskt.experiments.rank_sources import WHY_LOGME, format_table, rank_sources, write_ranking

    cfg = load_config(args.items)
    started = time.perf_counter()
    scores = rank_sources(cfg)
    print(format_table(scores))
    print(f"({WHY_LOGME}; higher is better for all three)")
    csv_path, json_path = write_ranking(scores, cfg)
    print(f"done in {time.perf_counter() - started:.1f}s -> {csv_path}, {json_path}")
    print(f"next: keep the top-ranked sources (e.g. {scores[0].name!r}) in method.sources and drop the bottom "
          f"ones before `sskt train`")
    return 0
