"""Do the transferability scores predict SSKT's real gains? Kendall's tau over the pool of
benchmarks/source_pool.yaml (issue 13).

    OMP_NUM_THREADS=1 sskt rank-sources benchmarks/source_pool.yaml      # -> runs/bench/source_pool/rank_sources.json
    OMP_NUM_THREADS=1 sskt compare benchmarks/source_pool.yaml           # the runs (or any finished part of them)
    python benchmarks/source_pool_tau.py                                 # -> benchmarks/results/source_pool_tau.md

For every single-source variant ``one-<source>``: its final test top-1 per seed, the gain over ``scratch``
(mean over the seeds both have, with the spread of the per-seed differences), the adapted source's own
test top-1 (its linear probe, ``adapt: probe``), its scores from rank_sources.json, and, from the
``pool-gradsim*`` runs, the weight gradsim gave it at the end. Then Kendall's tau-b between each predictor
and the gain. Reads the runs' result.json files, so it works on a partly finished grid (seeds are stated).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy.stats import kendalltau

from sskt.engine.history import read_result  # any sskt's result.json, in today's convention

SCORES = ("logme", "leep", "nce")


def finals(run_dir: Path) -> dict[int, float]:
    out = {}
    for path in sorted(run_dir.glob("seed*/result.json")):
        record = read_result(path)
        out[int(record["seed"])] = float(record["final"])
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_weights(run: Path, out: Path) -> Path | None:
    """Each source's effective weight per epoch (``train/weight/<source>`` in the run's metrics.csv)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = {}
    for path in sorted(run.glob("logs/version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            for key, value in row.items():
                if key.startswith("train/weight/") and value:
                    series.setdefault(key[len("train/weight/"):], {})[int(row["epoch"])] = float(value)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in sorted(series.items()):
        epochs = sorted(points)
        ax.plot([e + 1 for e in epochs], [points[e] for e in epochs], label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("effective weight (epoch mean)")
    ax.set_title(f"{run.parent.name} / {run.name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def seed_to_seed_lines(scratch: dict[int, float], singles: dict[str, dict[int, float]]) -> list[str]:
    """The noise ceiling of the goal: Kendall's tau between the gains measured with one seed and with another
    (same sources). A score can't be shown to rank better than the measurement agrees with itself."""
    seeds = sorted(set(scratch).intersection(*singles.values())) if singles else []
    lines = ["| seeds compared | Kendall's tau-b between their gains | sources |", "|---|---|---|"]
    taus = []
    for i, a in enumerate(seeds):
        for b in seeds[i + 1:]:
            ga = [f[a] - scratch[a] for f in singles.values()]
            gb = [f[b] - scratch[b] for f in singles.values()]
            tau = float(kendalltau(ga, gb)[0])
            taus.append(tau)
            lines.append(f"| {a} vs {b} | {tau:+.3f} | {len(ga)} |")
    if not taus:
        return []
    return ["Seed-to-seed agreement of the measured gains (the ceiling any score's tau is measured against):",
            "", *lines, f"| mean | {statistics.fmean(taus):+.3f} | |"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/bench/source_pool")
    p.add_argument("--out", default="benchmarks/results/source_pool_tau.md")
    # (gains use the seeds that scratch and every finished one-<source> variant share)
    args = p.parse_args()
    runs = Path(args.runs)
    ranking = {s["name"]: s for s in json.loads((runs / "rank_sources.json").read_text())["sources"]}
    scratch = finals(runs / "scratch")
    weights: dict[str, dict[str, list[float]]] = {}
    for pool in sorted(runs.glob("pool-*")):
        for path in sorted(pool.glob("seed*/result.json")):
            for name, w in read_result(path).get("final_weight", {}).items():
                weights.setdefault(pool.name, {}).setdefault(name, []).append(float(w))
    singles = {name: finals(runs / f"one-{name}") for name in ranking}
    # The seeds every finished single-source variant and scratch share: gains are compared on the same seeds.
    common = set(scratch).intersection(*[set(f) for f in singles.values() if f])
    rows = []
    for name, score in ranking.items():
        mine = singles[name]
        seeds = sorted(set(mine) & common)
        if not seeds:
            continue
        diffs = [mine[s] - scratch[s] for s in seeds]
        probe = None
        first = sorted((runs / f"one-{name}").glob("seed*/result.json"))[0]
        adapted = read_result(first).get(f"adapted/{name}")
        if adapted:
            probe = float(adapted["test_top1"])
        rows.append({"source": name, "seeds": seeds, "final": mean_std([mine[s] for s in seeds]),
                     "gain": mean_std(diffs), "probe": probe, **{k: score[k] for k in SCORES},
                     **{f"w:{pool}": statistics.fmean(ws[name]) for pool, ws in weights.items() if name in ws}})
    rows.sort(key=lambda r: r["gain"][0], reverse=True)
    predictors = list(SCORES) + ["probe"] + [k for k in rows[0] if k.startswith("w:")] if rows else []
    lines = [f"Runs: `{runs}` (scratch seeds {sorted(scratch)}); gain = one-source final top-1 minus scratch's, "
             f"same seed, mean ± std over the seeds listed.", ""]
    head = "| source | seeds | final | gain | probe top-1 | " + " | ".join(p for p in predictors if p != "probe") + " |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["source"], ",".join(map(str, r["seeds"])), f"{r['final'][0]:.2f} ± {r['final'][1]:.2f}",
                 f"{r['gain'][0]:+.2f} ± {r['gain'][1]:.2f}", "-" if r["probe"] is None else f"{r['probe']:.2f}"]
        cells += [f"{r[k]:.4f}" if k in r else "-" for k in predictors if k != "probe"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| predictor | Kendall's tau-b vs gain | p-value | sources |", "|---|---|---|---|"]
    for k in predictors:
        pairs = [(r[k], r["gain"][0]) for r in rows if r.get(k) is not None]
        if len(pairs) < 3:
            continue
        tau, pval = kendalltau([a for a, _ in pairs], [b for _, b in pairs])
        lines.append(f"| {k} | {tau:+.3f} | {pval:.3f} | {len(pairs)} |")
    lines += ["", *seed_to_seed_lines(scratch, {r["source"]: singles[r["source"]] for r in rows})]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    for pool in sorted(runs.glob("pool-*")):
        result = pool / "seed0" / "result.json"
        if not result.is_file() or "final_weight" not in read_result(result):
            continue  # unfinished, or fixed weights: nothing to draw
        chart = plot_weights(pool / "seed0", Path(args.out).with_name(f"source_pool_weights_{pool.name}.png"))
        if chart is not None:
            print(f"weights per epoch: {chart}")


if __name__ == "__main__":
    main()
