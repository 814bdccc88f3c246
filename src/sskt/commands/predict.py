"""``sskt predict``: the classes of image files by a trained model, as a table, CSV or JSON.

The engine is imported when the command runs: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sskt.commands.kit import command


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a trained model: a run's target.pt (or its folder), an `sskt export` file "
                                 "(.pt, .pt2, .safetensors, .ts) or a training checkpoint (last.ckpt)")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively), any size and mode")
    p.add_argument("--top-k", type=int, default=3, help="how many of the most probable classes to list (default 3)")
    p.add_argument("--csv", metavar="FILE", default=None, help="also write the predictions to this CSV file")
    p.add_argument("--json", metavar="FILE", nargs="?", const="-", default=None,
                   help="print the predictions as JSON instead of the table, or with FILE write them there")
    p.add_argument("--batch-size", type=int, default=64, help="images decoded and scored at a time (default 64)")


@command("predict", "the classes of image files by a trained model (table, CSV, JSON)", _predict_args)
def run_predict(args: argparse.Namespace) -> int:
    from sskt.experiments.predict import predict, write_json, write_predictions_csv

    rows = predict(args.model, args.images, top_k=args.top_k, batch_size=args.batch_size)
    to_stdout = args.json == "-"
    if to_stdout:
        print(json.dumps(rows, indent=2))
    else:
        print(format_predictions(rows))
    notes = sys.stderr if to_stdout else sys.stdout  # stdout stays one JSON document
    if args.csv:
        print(f"wrote {write_predictions_csv(rows, args.csv)}", file=notes)
    if args.json and not to_stdout:
        print(f"wrote {write_json(rows, args.json)}", file=notes)
    return 0


def format_predictions(rows: list[dict[str, Any]]) -> str:
    """A table: path, class, probability and the top-k classes with theirs (a multi-label model's rows end
    with its classes at 0.5 or more)."""
    k = max(len(r["top_k"]) for r in rows)
    table = [("path", "class", "probability", f"top {k}" + ("  |  labels >= 0.5" if "labels" in rows[0] else ""))]
    table += [(r["path"], r["class"], f"{r['probability']:.3f}",
               ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top_k"])
               + (f"  |  {', '.join(r['labels']) or '-'}" if "labels" in r else "")) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in table)
