"""``sskt distill``: from a folder of images to a small exported model, with the best recipe measured.

The stages, each a run folder under ``OUT_DIR/stages/`` (resumable; a finished stage with the same settings
is reused):

1. the data: ``DATA_DIR/train`` + ``DATA_DIR/test`` class folders, or one folder of class subfolders, split
   (seeded, stratified) into ``OUT_DIR/split.csv``; the input size is chosen from the images' sizes;
2. ``clusters`` (only with unlabelled images): the source's features of every image are clustered (k-means)
   and the target learns to predict the cluster ids (Noroozi et al. 2018): its initial weights;
3. ``distill``: the source, adapted to the user's classes with a linear probe and judged on the validation
   split, teaches the target's main head on labelled and unlabelled images (from a soft-label cache) while
   the labels teach it too; without unlabelled images, on mixup images of each batch (function matching);
4. ``scratch`` (``compare_scratch``): the same target on the labelled images alone, as a reference;
5. the target exported to ``OUT_DIR/model.pt``, ``OUT_DIR/model.onnx`` and its card ``OUT_DIR/model.md``,
   and a report (``OUT_DIR/report.json``, ``report.md``, printed as a table).

The schedule is sized by a CPU budget: the target's training step and the source's inference are timed on
this machine first, the fixed costs (source passes, clustering, evaluations) are estimated, and the rest is
split between the stages. Every choice is printed before the heavy work starts.

Example:
    >>> import sskt
    >>> report = sskt.distill("photos/", "runs/photos", unlabeled="more_photos/", budget="1h")  # doctest: +SKIP
    >>> report["target"]["test_acc"]  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from sskt.config import ExperimentConfig, apply_overrides
from sskt.errors import SSKTError
from sskt.experiments.distill_plan import (BATCH, SOURCE_ARCH, STAGE_PREFIXES, UNLABELED_RATIO, DataSurvey, Plan,
                                           Rates, choose_target, make_plan, parse_budget, source_network, source_size_for,
                                           survey, time_rates)

def _data_section(data: DataSurvey, plan: Plan, unlabeled: str | None, out: Path, smoke: bool) -> dict:
    section: dict[str, Any] = {"dataset": "imagefolder", "root": str(data.root), "image_size": plan.image_size,
                               "val_per_class": plan.val_per_class, "split_file": str(out / "split.csv")}
    if plan.test_fraction is not None:
        section["test_fraction"] = plan.test_fraction
    if smoke:
        section.update(per_class=min(4, min(data.counts) - 2), test_per_class=1)
    if unlabeled is not None:
        section.update(unlabeled=str(Path(unlabeled).expanduser()), unlabeled_count=plan.unlabeled_count)
    return section


def _source(plan: Plan) -> dict:
    return {"name": "imagenet", "arch": SOURCE_ARCH, "pretrained": True, "input_size": plan.source_size,
            "adapt": "probe"}


def _train_section(epochs: int, eval_every: int, smoke: bool) -> dict:
    return {"epochs": epochs, "batch_size": 4 if smoke else BATCH, "lr": 0.05, "schedule": "cosine",
            "eval_every": eval_every, "checkpoint_every": max(1, min(5, epochs)), "progress_bar": False,
            "tensorboard": False}


def stage_configs(data: DataSurvey, plan: Plan, out: Path, unlabeled: str | None, seed: int, smoke: bool,
                  compare_scratch: bool) -> dict[str, ExperimentConfig]:
    """The experiment config of each stage, in the order they run (overrides not applied yet)."""
    base = {"seed": seed, "data": _data_section(data, plan, unlabeled, out, smoke),
            "target": {"arch": plan.target_arch}}
    stages: dict[str, dict] = {}
    init = None
    if unlabeled is not None:
        stages["clusters"] = {
            **base, "name": "distill-clusters", "out_dir": str(out / "stages" / "clusters"),
            "data": {**base["data"], "unlabeled_count": None, "val_per_class": None},
            "method": {"name": "cluster-transfer", "teacher": f"pretrained:{SOURCE_ARCH}",
                       "input_size": plan.source_size, "k": plan.k},
            "train": _train_section(plan.cluster_epochs, plan.cluster_epochs, smoke)}
        init = str(out / "stages" / "clusters" / "target.pt")
    method: dict[str, Any] = {"name": "sskt", "head": "auto", "alpha": 1.0, "sources": [_source(plan)]}
    if unlabeled is not None:
        method["cache"] = {"mode": "exact", "views": plan.cache_views, "topk": 10}
        data_d = {**base["data"], "unlabeled_ratio": UNLABELED_RATIO}
    else:
        method["mixup"] = 1.0
        data_d = base["data"]
    stages["distill"] = {**base, "name": "distill", "out_dir": str(out / "stages" / "distill"), "data": data_d,
                         "target": {**base["target"], **({"checkpoint": init} if init else {})},
                         "method": method, "train": _train_section(plan.distill_epochs, plan.eval_every, smoke)}
    if compare_scratch:
        stages["scratch"] = {**base, "name": "distill-scratch", "out_dir": str(out / "stages" / "scratch"),
                             "method": {"name": "scratch"},
                             "train": _train_section(plan.distill_epochs, plan.eval_every, smoke)}
    return {name: ExperimentConfig.from_dict(raw) for name, raw in stages.items()}


def apply_stage_overrides(stages: dict[str, ExperimentConfig], overrides: Sequence[str]) -> dict[str, ExperimentConfig]:
    """``key=value`` reaches the distill stage; ``data.*``, ``target.*`` and ``seed`` reach every stage (they
    describe the data and the model); ``clusters.<key>`` / ``scratch.<key>`` reach that stage only."""
    per_stage: dict[str, list[str]] = {name: [] for name in stages}
    for item in overrides:
        if "=" not in item:
            raise SSKTError(f"expected key=value, got {item!r} (e.g. train.epochs=50, clusters.method.k=50)")
        key = item.split("=", 1)[0]
        prefix = next((p for p in STAGE_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            name = prefix[:-1]
            if name not in stages:
                raise SSKTError(f"{key}: this run has no {name} stage (stages: {', '.join(stages)})")
            per_stage[name].append(item[len(prefix):])
        elif key.startswith(("data.", "target.")) or key == "seed":
            for name in stages:
                if name == "distill" or not key.startswith("target.checkpoint"):
                    per_stage[name].append(item)
        else:
            per_stage["distill"].append(item)
    return {name: cfg.with_overrides(per_stage[name]) if per_stage[name] else cfg for name, cfg in stages.items()}


def _finished(cfg: ExperimentConfig) -> dict | None:
    """The result of a stage already finished with the same settings (reused), else None; a stage an older
    sskt finished is read in today's convention (:func:`sskt.engine.history.read_result`)."""
    from sskt.engine.history import read_result
    from sskt.engine.rundir import COSMETIC, config_changes, normalised

    path = Path(cfg.out_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        record = read_result(path)
    except SSKTError:  # unreadable: the stage runs again (and resumes from its checkpoint)
        return None
    changes = config_changes(normalised(record.get("config") or {}), cfg.to_dict())
    return record if not [k for k in changes if k not in COSMETIC] else None


def _say(text: str) -> None:
    print(f"sskt distill: {text}", file=sys.stderr, flush=True)


def _progress(name: str, meter: "_CostMeter | None" = None, every_s: float = 30.0) -> Any:
    """A Lightning callback printing one line per epoch (at most every ``every_s`` seconds): epoch, the last
    validation score and the time left, in the style of the other lines (quiet enough for logs)."""
    import lightning as L

    class EpochLine(L.Callback):
        def __init__(self) -> None:
            self.start, self.last, self.first_epoch = time.perf_counter(), 0.0, None

        def on_train_epoch_start(self, trainer: L.Trainer, module: Any) -> None:
            if self.first_epoch is None:  # the rate is the epochs' own: the cache build before them is not
                self.first_epoch, self.start = trainer.current_epoch, time.perf_counter()

        def on_train_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
            if meter is not None:
                meter.charge()
            epoch, total = trainer.current_epoch + 1, int(trainer.max_epochs or 0)
            now = time.perf_counter()
            if now - self.last < every_s and epoch != total:
                return
            self.last = now
            done = epoch - (self.first_epoch or 0)
            left = (now - self.start) / max(done, 1) * (total - epoch)
            val = next((f", val {h['val_acc']:.1f}%" for h in reversed(module.history) if "val_acc" in h), "")
            _say(f"{name}: epoch {epoch}/{total}{val}, about {left / 60:.0f} min left")

    return EpochLine()


def _stage_cost(stage_dir: Path, cpu_s: float = 0.0, wall_s: float = 0.0, invocation: bool = False) -> dict:
    """The CPU and wall seconds a stage has cost over every invocation (``stage_dir/cost.json``), after adding
    ``cpu_s`` / ``wall_s`` (``invocation``: and counting one more invocation): an interrupted and resumed stage
    is charged for all of its work."""
    from sskt.io import atomic_json_dump

    path = stage_dir / "cost.json"
    try:
        cost = json.loads(path.read_text())
    except (OSError, ValueError):
        cost = {"cpu_s": 0.0, "wall_s": 0.0, "invocations": 0}
    if cpu_s or wall_s or invocation:
        cost = {"cpu_s": round(cost["cpu_s"] + cpu_s, 1), "wall_s": round(cost["wall_s"] + wall_s, 1),
                "invocations": cost["invocations"] + int(invocation)}
        stage_dir.mkdir(parents=True, exist_ok=True)
        atomic_json_dump(cost, path)
    return cost


class _CostMeter:
    """Charges a stage's cost.json with the time spent since the last charge: after every epoch and at the end,
    so a process killed outright (SIGKILL, a machine stopped) loses at most one epoch of its account."""

    def __init__(self, stage_dir: Path) -> None:
        self.stage_dir, self.spent = stage_dir, 0.0
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        _stage_cost(stage_dir, invocation=True)

    def charge(self) -> dict:
        cpu, wall = time.process_time(), time.perf_counter()
        self.spent += cpu - self._cpu
        cost = _stage_cost(self.stage_dir, cpu - self._cpu, wall - self._wall)
        self._cpu, self._wall = cpu, wall
        return cost


def _run_stage(name: str, cfg: ExperimentConfig, times: dict[str, dict]) -> dict:
    from sskt.engine.run import fit
    from sskt.experiments.noroozi import cluster_transfer

    stage_dir = Path(cfg.out_dir)
    done = _finished(cfg)
    if done is not None:
        _say(f"stage {name}: done before, reused ({cfg.out_dir})")
        times[name] = {**_stage_cost(stage_dir), "reused": True, "this_invocation_cpu_s": 0.0}
        return done
    _say(f"stage {name}: {cfg.train.epochs} epoch(s) -> {cfg.out_dir}")
    meter = _CostMeter(stage_dir)
    progress = [_progress(name, meter)]
    try:
        result = (cluster_transfer(cfg, progress) if cfg.method.get("name") == "cluster-transfer"
                  else fit(cfg, callbacks=progress))
    finally:  # also when interrupted: the rerun adds the rest
        cost = meter.charge()
    times[name] = {**cost, "reused": False, "this_invocation_cpu_s": meter.spent}
    return result.record


def _latency_ms(module: Any, size: int, repeat: int = 20) -> float:
    """CPU milliseconds per image, one image at a time, one thread (what a small device sees)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.rand(1, 3, size, size)
        with torch.inference_mode():
            module(x)
            start = time.process_time()
            for _ in range(repeat):
                module(x)
        return round((time.process_time() - start) / repeat * 1000.0, 2)
    finally:
        torch.set_num_threads(threads)


def _export(stage_dir: Path, out: Path) -> dict[str, str]:
    from sskt.engine.export import export

    ckpt = stage_dir / "checkpoints" / "last.ckpt"
    written = {}
    for fmt, name in (("sskt", "model.pt"), ("onnx", "model.onnx")):
        e = export(ckpt, out / name, fmt)
        written[fmt] = str(e.path)
        if fmt == "sskt":
            os.replace(e.card, out / "model.md")
        else:
            e.card.unlink(missing_ok=True)  # one card for both files
    written["card"] = str(out / "model.md")
    return written


def _sizes(plan: Plan, classes: int, model_path: Path) -> dict[str, Any]:
    import torch

    from sskt.engine.model_file import load_model

    target = load_model(model_path)  # as a user loads it: eval mode, normalisation inside
    src = source_network(plan.source_size)
    head = [m for m in src.modules() if isinstance(m, torch.nn.Linear)][-1]
    src_params = sum(p.numel() for p in src.parameters()) - sum(p.numel() for p in head.parameters())
    src_params += head.in_features * classes + classes  # its linear probe on your classes
    return {"target_params": sum(p.numel() for p in target.parameters()), "source_params": src_params,
            "target_ms": _latency_ms(target, plan.image_size), "source_ms": _latency_ms(src, plan.source_size)}


def _adapted_top1(record: dict) -> tuple[float | None, float | None]:
    for key, value in record.items():
        if key.startswith("adapted/") and isinstance(value, dict):
            return value.get("val_top1"), value.get("test_top1")
    return None, None


def report_table(report: dict) -> str:
    """The short table ``sskt distill`` prints: accuracy, size and latency of the target and the source, and
    each stage's time."""
    t, s = report["target"], report["source"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}%"

    lines = [f"{'model':<34} {'test acc':>9} {'params':>9} {'CPU ms/img':>10}",
             f"{'target ' + t['arch']:<34} {pct(t['test_acc']):>9} {t['params'] / 1e6:>8.2f}M {t['ms']:>10.2f}",
             f"{'source ' + s['arch'] + ' (adapted)':<34} {pct(s['test_acc']):>9} {s['params'] / 1e6:>8.2f}M "
             f"{s['ms']:>10.2f}"]
    if report.get("scratch") is not None:
        lines.append(f"{'scratch (same target, labels only)':<34} {pct(report['scratch']['test_acc']):>9}")
    lines.append("")
    lines.append(f"{'stage':<12} {'CPU min':>8} {'wall min':>9}")
    for name, tm in report["stages"].items():
        note = "  (reused)" if tm.get("reused") else ""
        lines.append(f"{name:<12} {tm['cpu_s'] / 60:>8.1f} {tm['wall_s'] / 60:>9.1f}{note}")
    lines.append(f"{'total':<12} {report['cpu_s'] / 60:>8.1f} {report['wall_s'] / 60:>9.1f}")
    lines.append("")
    lines.append(f"model: {report['files']['sskt']}  {report['files']['onnx']}  card: {report['files']['card']}")
    return "\n".join(lines)


def distill(data_dir: str | os.PathLike, out_dir: str | os.PathLike, unlabeled: str | os.PathLike | None = None,
            budget: str | float = "90m", smoke: bool = False, compare_scratch: bool = False, seed: int = 0,
            overrides: Sequence[str] = (), dry_run: bool = False) -> dict:
    """Distil the offline ImageNet source into a small target for the images in ``data_dir`` and export it.

    Returns the report (also ``out_dir/report.json``): the target's and the adapted source's test accuracy,
    sizes and CPU latency, the plan, and each stage's CPU and wall time. ``budget`` is CPU time (``90m``,
    ``2h``, or minutes); ``smoke`` runs every stage at its smallest to check a setup; ``overrides``
    (``key=value``) reach the distillation stage, ``clusters.<key>`` / ``scratch.<key>`` those stages, and
    ``data.*`` / ``target.*`` every stage. ``dry_run``: print the plan and its estimated times, run nothing.
    """
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    budget_s = parse_budget(budget)
    data = survey(data_dir, unlabeled)
    forced = _forced(overrides)
    size = forced.get("data.image_size")
    arch = forced.get("target.arch")
    plan_size = int(size) if size is not None else data.image_size
    plan_arch = str(arch) if arch is not None else choose_target(plan_size)
    source_size = source_size_for(plan_size)
    _say(f"{len(data.classes)} classes, {data.train_images} labelled images ({min(data.counts)}-{max(data.counts)} "
         f"per class), {data.test_count or 'no'} test images, {data.unlabeled or 'no'} unlabelled; "
         f"median shorter side {data.median_side:.0f} px")
    inputs = {"data": dataclasses.asdict(data) | {"root": str(data.root)}, "budget_s": budget_s, "smoke": smoke,
              "image_size": plan_size, "target_arch": plan_arch, "unlabeled": None if unlabeled is None else str(unlabeled)}
    plan, rates = _stored_plan(out / "plan.json", inputs)
    if plan is None:
        _say(f"timing this machine (CPU time): a {plan_arch} training step at {plan_size} px and the source at "
             f"{source_size} px")
        rates = time_rates(plan_arch, plan_size, len(data.classes), source_size, smoke)
        plan = make_plan(data, rates, budget_s, smoke, plan_size, plan_arch)
        if not dry_run:  # a rerun resumes with the same plan, whatever the machine's load is then
            from sskt.io import atomic_json_dump

            atomic_json_dump({"inputs": inputs, "plan": dataclasses.asdict(plan), "rates": dataclasses.asdict(rates)},
                             out / "plan.json")
    else:
        _say(f"resuming with the plan in {out / 'plan.json'} (delete it, or use another --out, to plan anew)")
    _say(f"plan: target {plan.target_arch} at {plan.image_size} px (override: target.arch=..., data.image_size=...); "
         f"source {SOURCE_ARCH} (ImageNet) at {plan.source_size} px, adapted with a linear probe; "
         f"{plan.val_per_class} validation image(s) per class" +
         (f"; {plan.cluster_epochs} cluster epoch(s) (k={plan.k}), then" if unlabeled is not None else ";") +
         f" {plan.distill_epochs} distillation epoch(s)" +
         (f" on {plan.unlabeled_count} unlabelled images" if unlabeled is not None else " (function matching)"))
    if plan.estimates:
        est = ", ".join(f"{k} {v / 60:.1f}" for k, v in plan.estimates.items())
        _say(f"estimated CPU minutes: {est} (budget {budget_s / 60:.0f}; rates: training {rates.train * 1e3:.2f} "
             f"ms/image, source {rates.source * 1e3:.2f} ms/image)")
    if dry_run:
        return {"plan": dataclasses.asdict(plan), "rates_ms_per_image": {
            k: round(v * 1e3, 3) for k, v in dataclasses.asdict(rates).items()}}
    stages = apply_stage_overrides(stage_configs(data, plan, out, None if unlabeled is None else str(unlabeled),
                                                 seed, smoke, compare_scratch), overrides)
    times: dict[str, dict] = {}
    records = {name: _run_stage(name, cfg, times) for name, cfg in stages.items()}
    files = _export(Path(stages["distill"].out_dir), out)
    distilled = records["distill"]
    val_top1, test_top1 = _adapted_top1(distilled)
    sizes = _sizes(plan, len(data.classes), out / "model.pt")
    report = {
        "target": {"arch": plan.target_arch, "test_acc": distilled.get("final"), "best_at_val": distilled.get("best"),
                   "test_macro_acc": distilled.get("final_macro_acc"),
                   "params": sizes["target_params"], "ms": sizes["target_ms"], "input_size": plan.image_size},
        "source": {"arch": SOURCE_ARCH, "test_acc": test_top1, "val_acc": val_top1, "params": sizes["source_params"],
                   "ms": sizes["source_ms"], "input_size": plan.source_size, "teaches": distilled.get("teaches")},
        "scratch": {"test_acc": records["scratch"].get("final")} if "scratch" in records else None,
        "stages": times, "plan": dataclasses.asdict(plan), "files": files,
        "rates_ms_per_image": {k: round(v * 1e3, 3) for k, v in dataclasses.asdict(rates).items()},
        # Every stage's cost over all invocations, plus this invocation's planning, export and report.
        "cpu_s": round(sum(t["cpu_s"] for t in times.values()) + time.process_time() - cpu0
                       - sum(t.pop("this_invocation_cpu_s") for t in times.values()), 1),
        "wall_s": round(time.perf_counter() - wall0, 1),
        "data": {"root": str(data.root), "layout": data.layout, "classes": data.classes,
                 "train_images": distilled.get("train_images"), "val_images": distilled.get("val_images"),
                 "test_images": distilled.get("test_images"), "unlabeled_images": distilled.get("unlabeled_images")},
        "smoke": smoke, "seed": seed,
    }
    from sskt.io import atomic_json_dump, atomic_text_write

    table = report_table(report)
    atomic_json_dump(report, out / "report.json")
    atomic_text_write(f"# sskt distill: {data.root}\n\n```\n{table}\n```\n", out / "report.md")
    print(table)
    return report


def _stored_plan(path: Path, inputs: dict) -> tuple[Plan | None, Rates | None]:
    """The plan (and rates) of an earlier invocation on the same data, budget and choices, else (None, None)."""
    if not path.is_file():
        return None, None
    try:
        stored = json.loads(path.read_text())
        if stored.get("inputs") != json.loads(json.dumps(inputs)):
            return None, None
        known = {f.name for f in dataclasses.fields(Plan)}  # a field dropped since is ignored, not a new plan
        return Plan(**{k: v for k, v in stored["plan"].items() if k in known}), Rates(**stored["rates"])
    except (OSError, ValueError, TypeError, KeyError):
        return None, None


def _forced(overrides: Sequence[str]) -> dict[str, Any]:
    """The plain (stage-less) overrides as a flat mapping, for the choices the plan makes from them."""
    raw = apply_overrides({}, [o for o in overrides if "=" in o and not o.startswith(STAGE_PREFIXES)])
    flat: dict[str, Any] = {}
    for section, value in raw.items():
        if isinstance(value, dict):
            flat.update({f"{section}.{k}": v for k, v in value.items()})
    return flat

