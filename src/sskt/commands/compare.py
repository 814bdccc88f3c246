"""``sskt compare CONFIG.yaml``: the arguments of :func:`sskt.experiments.compare.compare`, and its report.

The grid runner (and with it the engine) is imported when the command runs: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sskt.commands.kit import command
from sskt.errors import SSKTError


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a comparison YAML: name, out_dir, seeds, base experiment, variants")
    # "items": the parser also collects key=value given after an option (sskt compare g.yaml --out D k=v).
    p.add_argument("items", nargs="*", metavar="key=value",
                   help="dotted overrides applied to every run, e.g. train.epochs=1")
    p.add_argument("--only", action="append", default=[], metavar="VARIANT", help="run only this variant (repeatable)")
    p.add_argument("--report-only", action="store_true", help="train nothing: tabulate the finished runs")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder instead of the file's out_dir")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="run only these of the file's seeds (e.g. 0 to look at one seed first; finished runs are reused)")


@command("compare", "run methods x seeds on one task (resumable) and write a table, CSV and charts", _compare_args)
def run_compare(args: argparse.Namespace) -> int:
    from sskt.experiments.compare import CompareConfig, compare

    bad = [o for o in args.items if "=" not in o]
    if bad:
        raise SSKTError(f"expected key=value overrides after the comparison file, got {bad}")
    config = CompareConfig.from_yaml(args.config)
    if args.seeds is not None:
        try:
            wanted = list(dict.fromkeys(int(s) for s in args.seeds.split(",")))  # each seed once, in order
        except ValueError:
            raise SSKTError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        missing = sorted(set(wanted) - set(config.seeds))
        if missing:
            raise SSKTError(f"--seeds {missing} are not among the file's seeds {config.seeds}")
        config.seeds = wanted
    result = compare(config, args.items, args.only, args.out, args.report_only)
    if "table" in result:
        print(Path(result["table"]).read_text())
        print(f"table: {result['table']}\ncsv: {result['csv']}\nbars: {result['bars']}\ncurves: {result['curves']}")
    print(f"{len(result['reused'])} run(s) reused, {len(result['failed'])} failed; "
          f"{result['minutes_this_invocation']} min")
    for f in result["failed"]:
        print(f"failed: {f}")
    return 1 if result["failed"] else 0
