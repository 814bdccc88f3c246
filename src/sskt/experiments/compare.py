"""A grid of methods x seeds on one task, and its table and charts (``sskt compare CONFIG.yaml``).

The config file::

    name: cifar10-lowlabel
    out_dir: runs/compare            # each run in out_dir/<variant>/seed<k>
    seeds: [0, 1, 2]
    base:                            # an ordinary experiment (data, target, train; method ignored)
      data: {dataset: digits, per_class: 10}
      train: {epochs: 3}
    variants:
      - name: scratch
        method: {name: scratch}
      - name: finetune
        method: {name: finetune}
        overrides: [target.checkpoint=runs/pre/target.pt]   # or a nested mapping merged into base

Every run is a normal :func:`sskt.engine.run.fit`: a run with a ``result.json`` is reused, an
interrupted one resumes from its ``last.ckpt``. Outputs in ``out_dir``: ``summary.md`` and
``summary.csv`` (final and best test metric, mean ± sample std over seeds, and per seed),
``runs.csv`` (one row per run), ``accuracy_bars.png`` and ``test_curves.png``.
"""
from __future__ import annotations

import copy
import csv
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Sequence

import yaml
from annotated_types import Ge

from sskt.config import ExperimentConfig, apply_overrides
from sskt.engine.history import read_result
from sskt.engine.run import fit
from sskt.engine.rundir import COSMETIC, config_changes, normalised
from sskt.errors import SSKTError
from sskt.methods.base import check_method
from sskt.validation import Parsed, validate

# Keys of result.json written by the engine itself; anything else came from method.extra_results().
_ENGINE_KEYS = {"format", "name", "seed", "config", "versions", "metric", "final", "best", "history", "train_seconds",
                "wall_seconds_this_invocation", "resumed_from", "train_images", "test_images", "machine",
                "best_epoch", "best_val", "val_images", "unlabeled_images", "wall_seconds"}


@dataclass
class Variant:
    """One named method setting of a comparison: ``overrides`` of the base, as ``key=value`` lines or a
    mapping merged into it."""

    name: str
    method: dict
    overrides: list[str] | dict | None = None


@dataclass
class CompareConfig:
    """A comparison: a base experiment, named method variants and seeds (a list, or a count)."""

    name: str = "compare"
    out_dir: str = "runs/compare"
    seeds: list[int] | Annotated[int, Ge(1)] = field(default_factory=lambda: [0, 1, 2])
    base: dict | None = field(default_factory=dict)
    variants: Annotated[list[Variant], Parsed(Variant, each=True)] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Types are checked when the file is read (from_dict); this is what they can't say.
        self.seeds = list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)
        self.base = dict(self.base or {})
        if not self.seeds:
            raise SSKTError("seeds: list at least one seed (or give a count)")
        if not self.variants:
            raise SSKTError("variants: list at least one variant")
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup or any(not n or "/" in n or n.startswith(".") for n in names):
            raise SSKTError(f"variants: names must be unique folder names, got {names}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "CompareConfig":
        path = Path(path)
        if not path.is_file():
            raise SSKTError(f"comparison config not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise SSKTError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "comparison") -> "CompareConfig":
        """The comparison of a mapping, each variant's method checked (:func:`check_method`); errors name
        ``where`` (the file) and the dotted key: ``grid.yaml: variants.2.method.alpha: expected a number``."""
        try:
            cfg = validate(cls, raw)
            for i, v in enumerate(cfg.variants):
                check_method(v.method, f"variants.{i}.method")
        except SSKTError as err:
            raise SSKTError(f"{where}: {err}") from None
        return cfg

    def run_config(self, variant: Variant, seed: int, overrides: Sequence[str] = ()) -> ExperimentConfig:
        """The experiment of one (variant, seed): base, then the variant, then command-line overrides."""
        raw = copy.deepcopy(self.base)
        if isinstance(variant.overrides, dict):
            raw = _merge(raw, variant.overrides)
        elif variant.overrides:
            raw = apply_overrides(raw, [str(o) for o in variant.overrides])
        raw["method"] = copy.deepcopy(variant.method)
        raw["seed"] = seed
        raw["name"] = f"{self.name}/{variant.name}/seed{seed}"
        raw["out_dir"] = str(Path(self.out_dir) / variant.name / f"seed{seed}")
        return ExperimentConfig.from_dict(apply_overrides(raw, overrides))


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def run_one(cfg: ExperimentConfig) -> tuple[dict, bool]:
    """(result record, reused?) of one run: its result.json if finished with this config, else fit. Either way
    in the reader's convention (:func:`sskt.engine.history.read_result`: a record of an older sskt is converted)."""
    result_file = Path(cfg.out_dir) / "result.json"
    if result_file.is_file():
        record = read_result(result_file)
        changes = config_changes(normalised(record.get("config", {})), cfg.to_dict())
        diffs = [key for key in changes if key not in COSMETIC]
        if diffs:
            raise SSKTError(f"{result_file} was made with another config (differs in {', '.join(diffs[:5])}); "
                            f"delete {cfg.out_dir} or change out_dir")
        return record, True
    return fit(cfg).record, False


def _mean_std(values: list[float]) -> tuple[float, float]:
    # Sample standard deviation over seeds (0 for a single seed), as comparison tables usually report.
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _extras(record: dict) -> dict[str, Any]:
    """Method-specific numbers (teacher accuracy, DML peers ...), flattened one level."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if k in _ENGINE_KEYS:
            continue
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


@dataclass
class Summary:
    """Aggregated results of a comparison, one row per variant."""

    metric: str
    rows: list[dict]
    runs: list[dict]


def summarise(cfg: CompareConfig, records: dict[tuple[str, int], dict]) -> Summary:
    """The rows of ``records`` (result records by (variant, seed), of this sskt or an older one)."""
    records = {k: read_result(r) for k, r in records.items()}  # one convention: epochs from 1, rounded
    rows, runs, metric = [], [], "acc"
    for v in cfg.variants:
        recs = [(s, records[(v.name, s)]) for s in cfg.seeds if (v.name, s) in records]
        if not recs:
            continue
        metric = recs[0][1].get("metric", metric)
        finals = [r["final"] for _, r in recs]
        bests = [r["best"] for _, r in recs]
        extras: dict[str, list] = {}
        for _, r in recs:
            for k, val in _extras(r).items():
                extras.setdefault(k, []).append(val)
        notes = []
        for k, vals in extras.items():
            nums = [x for x in vals if isinstance(x, (int, float)) and not isinstance(x, bool)]
            if nums and len(nums) == len(vals) and all(isinstance(x, int) for x in nums) and len(set(nums)) == 1:
                notes.append(f"{k} {nums[0]}")
            elif len(nums) == len(vals) and nums:
                m, s = _mean_std([float(x) for x in nums])
                notes.append(f"{k} {m:.2f}" + (f" ± {s:.2f}" if len(nums) > 1 and s > 0 else ""))
            elif vals and all(x == vals[0] for x in vals):
                notes.append(f"{k} {vals[0]}")
        fm, fs = _mean_std(finals)
        # best = test score at the best validation score; absent (None) for runs without a validation split.
        bm, bs = _mean_std(bests) if all(b is not None for b in bests) else (math.nan, math.nan)
        rows.append({"variant": v.name, "method": v.method.get("name", "?"), "seeds": len(recs),
                     "final_mean": fm, "final_std": fs, "best_mean": bm, "best_std": bs,
                     "per_seed_final": {s: r["final"] for s, r in recs},
                     "per_seed_best": {s: r["best"] for s, r in recs},
                     "train_minutes": statistics.fmean(r.get("train_seconds", 0.0) for _, r in recs) / 60,
                     "wall_minutes": statistics.fmean(_wall_seconds(r) for _, r in recs) / 60,
                     "notes": "; ".join(notes),
                     "curves": [[(h["epoch"], h[f"test_{metric}"]) for h in r["history"]] for _, r in recs]})
        for s, r in recs:
            runs.append({"variant": v.name, "method": v.method.get("name", "?"), "seed": s, "final": r["final"],
                         "best": r["best"], "train_seconds": round(r.get("train_seconds", 0.0), 1),
                         "wall_seconds": round(_wall_seconds(r), 1),
                         "out_dir": str(Path(cfg.out_dir) / v.name / f"seed{s}")})
    return Summary(metric, rows, runs)


def write_tables(summary: Summary, out_dir: Path, title: str) -> tuple[Path, Path, Path]:
    label = "mAP" if summary.metric == "map" else "top-1"
    seeds = sorted({s for r in summary.rows for s in r["per_seed_final"]})
    lines = [f"# {title}", "",
             f"Test {label} (%) at the last epoch (final) and at the evaluation with the best validation score "
             f"(best at val; — without a validation split): mean ± sample std over seeds; per-seed finals in "
             f"seed order {seeds}. Wall time per run includes building soft-label caches.", "",
             "| variant | method | seeds | final | best at val | per-seed final | train min/run | wall min/run | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.rows:
        per_seed = ", ".join(f"{x:.2f}" for x in r["per_seed_final"].values())
        best = "—" if math.isnan(r["best_mean"]) else f"{r['best_mean']:.2f} ± {r['best_std']:.2f}"
        lines.append(f"| {r['variant']} | {r['method']} | {r['seeds']} | {r['final_mean']:.2f} ± {r['final_std']:.2f} "
                     f"| {best} | {per_seed} | {r['train_minutes']:.1f} | {r['wall_minutes']:.1f} "
                     f"| {r['notes']} |")
    md = out_dir / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    csv_path = out_dir / "summary.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "method", "seeds", "final_mean", "final_std", "best_mean", "best_std",
                    *[f"final_seed{s}" for s in seeds], *[f"best_seed{s}" for s in seeds], "train_minutes",
                    "wall_minutes", "notes"])
        for r in summary.rows:
            w.writerow([r["variant"], r["method"], r["seeds"], *(_fmt(r[k]) for k in
                        ("final_mean", "final_std", "best_mean", "best_std")),
                        *(_fmt(r["per_seed_final"].get(s)) for s in seeds),
                        *(_fmt(r["per_seed_best"].get(s)) for s in seeds), f"{r['train_minutes']:.2f}",
                        f"{r['wall_minutes']:.2f}", r["notes"]])
    runs_path = out_dir / "runs.csv"
    with runs_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(summary.runs[0]) if summary.runs else ["variant"])
        w.writeheader()
        w.writerows(summary.runs)
    return md, csv_path, runs_path


def _fmt(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _wall_seconds(record: dict) -> float:
    """Wall time of the whole run (every invocation, cache building included); older records only
    have their last invocation's."""
    return float(record.get("wall_seconds", record.get("wall_seconds_this_invocation", 0.0)))


def write_charts(summary: Summary, out_dir: Path, title: str) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    label = "test mAP (%)" if summary.metric == "map" else "test top-1 (%)"
    names = [r["variant"] for r in summary.rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.6))
    x = range(len(names))
    ax.bar(x, [r["final_mean"] for r in summary.rows], yerr=[r["final_std"] for r in summary.rows], capsize=4,
           color="#4c72b0")
    for i, r in enumerate(summary.rows):
        ax.scatter([i] * len(r["per_seed_final"]), list(r["per_seed_final"].values()), color="k", s=8, zorder=3)
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel(label)
    ax.set_title(f"{title}: final, mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    bars = out_dir / "accuracy_bars.png"
    fig.savefig(bars, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for r in summary.rows:
        epochs = sorted({e for c in r["curves"] for e, _ in c})
        means, stds = [], []
        for e in epochs:
            vals = [v for c in r["curves"] for ee, v in c if ee == e]
            m, s = _mean_std(vals)
            means.append(m)
            stds.append(s)
        xs = epochs  # records count epochs from 1 (read_result), as the axis does
        line, = ax.plot(xs, means, marker="o", ms=3, label=r["variant"])
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.set_title(f"{title}: test curves, mean ± std over seeds", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    curves = out_dir / "test_curves.png"
    fig.savefig(curves, dpi=90)
    plt.close(fig)
    return bars, curves


def compare(config: CompareConfig | str | Path, overrides: Sequence[str] = (),
            only: Sequence[str] = (), out_dir: str | None = None, report_only: bool = False) -> dict[str, Any]:
    """Run (or reuse) every (variant, seed) and write the tables and charts. Returns their paths,
    the summary rows and which runs were reused or failed. ``report_only``: train nothing, summarise
    the runs that have finished."""
    cfg = config if isinstance(config, CompareConfig) else CompareConfig.from_yaml(config)
    fixed = sorted({o.split("=", 1)[0] for o in overrides} & {"name", "seed", "out_dir"})
    if fixed:
        raise SSKTError(f"{fixed} are set per run by the comparison; use --out for the output folder "
                        f"and seeds: in the file")
    if out_dir is not None:
        cfg.out_dir = out_dir
    out_dir = Path(cfg.out_dir)
    variants = [v for v in cfg.variants if not only or v.name in only]
    unknown = sorted(set(only) - {v.name for v in cfg.variants})
    if unknown:
        raise SSKTError(f"--only: unknown variant(s) {unknown}; known: {[v.name for v in cfg.variants]}")
    # Build every run's config first: a typo fails now, not an hour into the grid.
    # Seed-major order: a grid stopped half-way still has every method on the first seeds.
    plan = [(v, s, cfg.run_config(v, s, overrides)) for s in cfg.seeds for v in variants]
    if report_only and not any((Path(c.out_dir) / "result.json").is_file() for _, _, c in plan):
        raise SSKTError(f"no finished run of this grid under {out_dir} to report; run it without --report-only "
                        f"first (or give the folder it ran in with --out)")
    out_dir.mkdir(parents=True, exist_ok=True)
    records: dict[tuple[str, int], dict] = {}
    reused, failed = [], []
    started = time.perf_counter()
    for i, (v, s, run_cfg) in enumerate(plan):
        if report_only and not (Path(run_cfg.out_dir) / "result.json").is_file():
            continue
        print(f"[{i + 1}/{len(plan)}] {v.name} seed {s} -> {run_cfg.out_dir}", flush=True)
        try:
            record, was_reused = run_one(run_cfg)
        except SSKTError as err:
            # One broken run must not lose the others' results; it is listed and makes the exit code 1.
            print(f"  failed: {err}", flush=True)
            failed.append(f"{v.name}/seed{s}: {err}")
            continue
        records[(v.name, s)] = record
        if was_reused:
            reused.append(f"{v.name}/seed{s}")
        best = "" if record.get("best") is None else f"  best at val {record['best']:.2f}"
        print(f"  final {record['final']:.2f}{best}" + ("  (reused)" if was_reused else ""), flush=True)
    result: dict[str, Any] = {"reused": reused, "failed": failed, "out_dir": str(out_dir),
                              "minutes_this_invocation": round((time.perf_counter() - started) / 60, 2)}
    if records:
        summary = summarise(cfg, records)
        md, csv_path, runs_path = write_tables(summary, out_dir, cfg.name)
        bars, curves = write_charts(summary, out_dir, cfg.name)
        result.update({"table": str(md), "csv": str(csv_path), "runs_csv": str(runs_path), "bars": str(bars),
                       "curves": str(curves), "rows": [{k: v for k, v in r.items() if k != "curves"}
                                                        for r in summary.rows]})
    return result

