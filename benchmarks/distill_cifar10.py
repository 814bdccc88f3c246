"""`sskt distill` with its default settings on CIFAR-10 (JPEG copy): 100 labelled images per class, the other
49,000 training images as an unlabelled folder, the full test split; one run per seed, its CPU time measured.

    OMP_NUM_THREADS=1 python benchmarks/distill_cifar10.py --seeds 0          # one seed (resumable)
    python benchmarks/distill_cifar10.py --report-only                         # -> benchmarks/results/distill_cifar10.csv

The data folder is built of symbolic links under runs/bench/distill_cifar10/data: train/<class>/ holds the same
100 images per class as every other CIFAR benchmark here (the seeded subset of `data.per_class: 100`,
`subset_seed: 0`), test/ the 10,000 test images, unlabeled/ every other training image (no class folders).
`sskt distill` then holds its validation split out of the 100 labelled images per class.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = Path(os.environ.get("SSKT_SHARED", ROOT.parent / "shared")) / "datasets" / "cifar10-jpeg"
OUT = ROOT / "runs" / "bench" / "distill_cifar10"
RESULTS = ROOT / "benchmarks" / "results" / "distill_cifar10.csv"


def build_data(per_class: int = 100) -> tuple[Path, Path]:
    """The labelled train/test folder and the unlabelled folder, as symbolic links (built once)."""
    import torch

    from sskt.data.datasets import per_class_indices
    from sskt.data.images import is_image_file

    data, unlabeled = OUT / "data", OUT / "unlabeled"
    if (OUT / "data.done").is_file():
        return data, unlabeled
    classes = sorted(d.name for d in (CIFAR / "train").iterdir() if d.is_dir())
    files = sorted(p for c in classes for p in (CIFAR / "train" / c).iterdir() if is_image_file(p))
    labels = torch.tensor([classes.index(p.parent.name) for p in files])
    chosen = set(per_class_indices(labels, per_class, 0, classes, "train").tolist())
    for i, p in enumerate(files):
        link = data / "train" / p.parent.name / p.name if i in chosen else unlabeled / f"{p.parent.name}-{p.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(p)
    if not (data / "test").exists():
        (data / "test").symlink_to(CIFAR / "test")
    (OUT / "data.done").write_text("ok\n")
    return data, unlabeled


def run(seed: int, budget: str) -> None:
    data, unlabeled = build_data()
    out = OUT / f"seed{seed}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cmd = ["sskt", "distill", str(data), "--out", str(out), "--unlabeled", str(unlabeled), "--seed", str(seed),
           "--budget", budget]
    print(" ".join(cmd), flush=True)
    try:
        subprocess.run(cmd, check=True)
    finally:  # an interrupted invocation is charged too: a resumed seed adds its invocations' CPU together
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "invocations.jsonl").open("a") as fh:
            fh.write(json.dumps({"cpu_s": round(cpu, 1), "wall_s": round(time.perf_counter() - start, 1)}) + "\n")


def report() -> None:
    rows = []
    for seed_dir in sorted(OUT.glob("seed*")):
        rep = seed_dir / "report.json"
        if not rep.is_file():
            continue
        r = json.loads(rep.read_text())
        inv = [json.loads(line) for line in (seed_dir / "invocations.jsonl").read_text().splitlines()]
        rows.append({"seed": r["seed"], "final": r["target"]["test_acc"], "best_at_val": r["target"]["best_at_val"],
                     # CPU minutes: the report's (every stage over all its invocations, charged per epoch), and the
                     # benchmark's own count of its sskt processes (lower if an invocation was killed outright).
                     "source_test": r["source"]["test_acc"], "cpu_min": round(r["cpu_s"] / 60, 1),
                     "process_cpu_min": round(sum(i["cpu_s"] for i in inv) / 60, 1),
                     "cluster_epochs": r["plan"]["cluster_epochs"], "distill_epochs": r["plan"]["distill_epochs"],
                     **{f"{k}_cpu_min": round(v["cpu_s"] / 60, 1) for k, v in r["stages"].items()}})
    if not rows:
        sys.exit("no finished seed yet")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    finals = [r["final"] for r in rows]
    std = statistics.stdev(finals) if len(finals) > 1 else 0.0
    print(f"{len(rows)} seed(s): final {statistics.mean(finals):.2f} ± {std:.2f}; CPU min per seed "
          f"{', '.join(str(r['cpu_min']) for r in rows)} -> {RESULTS}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--budget", default="90m", help="sskt distill's --budget (its default: 90m)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        for s in args.seeds.split(","):
            run(int(s), args.budget)
    report()
