"""``sskt rank-sources``: score the candidate sources of an experiment on its labelled images, before training.

The scoring (and with it torch) is imported when the command runs: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

from sskt.commands.kit import command, config_args, load_config


def _grid(items: Sequence[str]) -> Any:
    """The CompareConfig when the first item is a comparison grid (a YAML file with ``variants``), else None."""
    import yaml

    if not items or "=" in items[0] or not Path(items[0]).is_file():
        return None
    try:
        raw = yaml.safe_load(Path(items[0]).read_text())
    except yaml.YAMLError:
        return None  # load_config says what is wrong with it
    if not isinstance(raw, dict) or "variants" not in raw:
        return None
    from sskt.experiments.compare import CompareConfig

    return CompareConfig.from_dict(raw, items[0])


@command("rank-sources", "rank the config's method.sources (or every source of a `sskt compare` grid) by "
         "transferability (LogME, LEEP, NCE) on the labelled training images, without training", config_args)
def run_rank_sources(args: argparse.Namespace) -> int:
    from sskt.experiments.rank_sources import WHY_LOGME, format_table, grid_candidates, rank_sources, write_ranking

    grid = _grid(args.items)
    cfg = grid_candidates(grid, args.items[1:]) if grid is not None else load_config(args.items)
    started = time.perf_counter()
    scores = rank_sources(cfg)
    print(format_table(scores))
    print(f"({WHY_LOGME}; higher is better for all three)")
    csv_path, json_path = write_ranking(scores, cfg)
    print(f"done in {time.perf_counter() - started:.1f}s -> {csv_path}, {json_path}")
    print(f"next: keep the top-ranked sources (e.g. {scores[0].name!r}) in method.sources and drop the bottom "
          f"ones before `sskt train`")
    return 0
