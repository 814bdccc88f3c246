"""Rank candidate sources for a task before training (``sskt rank-sources CONFIG.yaml``).

Every entry of the config's ``method.sources`` is built as training would build it and run once, frozen,
on the target's labelled training images. From its penultimate features (the input of its last
``nn.Linear``) comes LogME; from its softmax outputs, LEEP and NCE (:mod:`sskt.evaluation.transferability`).
The table is sorted by LogME: of the three it is the only one that reads the features rather than the
source's own classifier, so it ranks sources of any label space, and the LogME paper reports it tracking
fine-tuned accuracy best. Outputs in ``out_dir``: ``rank_sources.csv`` and ``rank_sources.json``.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from sskt.config import ExperimentConfig
from sskt.data.datasets import load_data
from sskt.errors import SSKTError
from sskt.evaluation.transferability import leep, logme, nce
from sskt.io import atomic_json_dump, atomic_text_write
from sskt.sources.adapt import features_and_logits
from sskt.sources.source import Source, build_source

if TYPE_CHECKING:
    from sskt.experiments.compare import CompareConfig

SORT_KEY = "logme"
WHY_LOGME = ("sorted by LogME: it reads the source's features, not its classifier, so it compares sources of "
             "any label space (and tracks fine-tuned accuracy best in its paper)")
FIELDS = ("rank", "name", "logme", "leep", "nce", "feature_dim", "source_classes", "seconds")


@dataclass(frozen=True)
class SourceScore:
    """The transferability scores of one source on the task (higher is better for all three) and the
    seconds its inference and scoring took."""

    name: str
    logme: float
    leep: float
    nce: float
    feature_dim: int
    source_classes: int
    seconds: float


def score_source(src: Source, images: Tensor, labels: Tensor, batch_size: int = 256,
                 device: torch.device | str = "cpu") -> SourceScore:
    """LogME of ``src``'s features, LEEP and NCE of its softmax outputs, on labelled uint8 ``images``."""
    started = time.perf_counter()
    features, logits = features_and_logits(src, images, batch_size, device)
    probs = torch.softmax(logits.double(), dim=1)
    return SourceScore(src.name, logme(features, labels), leep(probs, labels), nce(probs, labels),
                       features.shape[1], logits.shape[1], time.perf_counter() - started)


def grid_candidates(grid: "CompareConfig", overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The experiment to rank a ``sskt compare`` grid's sources on: the grid's base (seed and out_dir of its
    first run, so rank_sources.csv lands next to the runs) with every distinct source of its variants as
    candidates, in order of first appearance. Two different sources under one name are refused."""
    seen: dict[str, dict] = {}
    for variant in grid.variants:
        for entry in variant.method.get("sources") or []:
            name = entry.get("name") if isinstance(entry, dict) else None
            if name in seen and seen[name] != entry:
                raise SSKTError(f"two different sources are named {name!r} in {grid.name}: rename one to rank both")
            seen.setdefault(name, entry)
    if not seen:
        raise SSKTError(f"no variant of {grid.name} has method.sources: nothing to rank")
    # The grid's out_dir unless the command line gives one (overrides apply in order: the user's last).
    cfg = grid.run_config(grid.variants[0], grid.seeds[0], [f"out_dir={grid.out_dir}", *overrides])
    raw = cfg.to_dict()
    raw["method"] = {"name": "sskt", "sources": list(seen.values())}
    return ExperimentConfig.from_dict(raw)


def _device(cfg: ExperimentConfig) -> torch.device:
    wants_gpu = cfg.train.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def rank_sources(cfg: ExperimentConfig) -> list[SourceScore]:
    """Score every source of ``cfg.method.sources`` on the labelled training images of ``cfg.data``;
    sorted by LogME, best first."""
    entries = cfg.method.get("sources")
    if not entries or not isinstance(entries, list):
        raise SSKTError("rank-sources needs method.sources: a list of candidate sources (as for method: sskt)")
    splits = load_data(cfg.data)
    if splits.multilabel:
        raise SSKTError("rank-sources scores single-label tasks; this dataset is multi-label")
    train = splits.train
    if train.images.ndim != 4:
        raise SSKTError("rank-sources scores image datasets; this one has clips")
    labelled = train.extras.get("labeled")
    images, labels = (train.images, train.targets) if labelled is None else (
        train.images[labelled], train.targets[labelled])
    if len(labels) < 2:
        raise SSKTError(f"rank-sources needs at least 2 labelled training images, got {len(labels)}")
    device = _device(cfg)
    scores = []
    for entry in entries:
        torch.manual_seed(cfg.seed)  # a randomly initialised source is the same on every run
        src = build_source(entry, images.shape[1])
        scores.append(score_source(src, images, labels, batch_size=cfg.train.batch_size, device=device))
        del src
    return sorted(scores, key=lambda s: getattr(s, SORT_KEY), reverse=True)


def format_table(scores: list[SourceScore]) -> str:
    """The ranking as a fixed-width text table."""
    width = max([len("source")] + [len(s.name) for s in scores])
    header = (f"{'rank':>4}  {'source':<{width}}  {'LogME':>9}  {'LEEP':>9}  {'NCE':>9}  {'dim':>6}  "
              f"{'classes':>7}  {'time':>7}")
    lines = [header]
    for rank, s in enumerate(scores, 1):
        lines.append(f"{rank:>4}  {s.name:<{width}}  {s.logme:>9.4f}  {s.leep:>9.4f}  {s.nce:>9.4f}  "
                     f"{s.feature_dim:>6}  {s.source_classes:>7}  {s.seconds:>6.1f}s")
    return "\n".join(lines)


def write_ranking(scores: list[SourceScore], cfg: ExperimentConfig) -> tuple[Path, Path]:
    """``rank_sources.csv`` and ``rank_sources.json`` in ``cfg.out_dir`` (written atomically)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"rank": rank, **asdict(s)} for rank, s in enumerate(scores, 1)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic_text_write(text.getvalue(), out / "rank_sources.csv")
    json_path = atomic_json_dump({"dataset": cfg.data.dataset, "sorted_by": SORT_KEY, "why": WHY_LOGME,
                                  "higher_is_better": True, "sources": rows}, out / "rank_sources.json")
    return csv_path, json_path
