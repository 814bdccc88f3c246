"""Evaluation protocols of a training checkpoint's target: per-stage linear probe, k-NN, fine-tuning.

The labelled data is the checkpoint's own ``data`` section with the user's overrides applied, e.g.
``data.per_class=100`` for a small labelled subset of a run that was trained without labels.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from sskt.cluster.teacher import load_target
from sskt.config import ExperimentConfig, apply_overrides
from sskt.data.datasets import load_data
from sskt.engine.run import fit
from sskt.errors import SSKTError
from sskt.evaluation import probes


def _labelled(raw_cfg: dict, overrides: Sequence[str]):
    cfg = ExperimentConfig.from_dict(raw_cfg).with_overrides(overrides)
    splits = load_data(cfg.data)
    if splits.multilabel:
        raise SSKTError("linear/knn/finetune protocols score single-label tasks; this dataset is multi-label")
    return cfg, splits


def probe_checkpoint(checkpoint: str | os.PathLike, protocol: str, overrides: Sequence[str] = (),
                     layers: Sequence[str] | None = None, spatial: int | None = None, knn_k: int = 20,
                     weight_decay: float = 1e-4) -> dict[str, Any]:
    """Linear-probe (``protocol="linear"``) or weighted k-NN (``"knn"``) top-1 (%) of every stage of a
    checkpoint's frozen target, fitted on the train split and scored on the test split."""
    started = time.perf_counter()
    raw, target = load_target(checkpoint)
    cfg, splits = _labelled(raw, overrides)
    names = list(layers or target.stage_names)
    modules = dict(target.model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise SSKTError(f"{target.arch} has no stage(s) {unknown}; its stages: {target.stage_names}")
    key = "linear_top1" if protocol == "linear" else "knn_top1"

    def score(evaluation) -> dict[str, dict[str, float]]:
        scores = probes.probe_layers(target, [f"model.{n}" for n in names], splits.train.images,
                                     splits.train.targets, evaluation.images, evaluation.targets, spatial=spatial,
                                     linear=protocol == "linear", knn=protocol == "knn", k=knn_k,
                                     weight_decay=weight_decay, batch_size=cfg.train.eval_batch_size)
        return {n: {"top1": round(100.0 * scores[f"model.{n}"][key], 2), "dim": int(scores[f"model.{n}"]["dim"])}
                for n in names}

    per_layer = score(splits.test)
    # The layer is chosen on the validation split (data.val_per_class); with one layer there is no choice.
    best_layer, val_top1 = (names[0], None) if len(names) == 1 else (None, None)
    if splits.val is not None:
        on_val = score(splits.val)
        best_layer = max(names, key=lambda n: on_val[n]["top1"])
        val_top1 = on_val[best_layer]["top1"]
    elif best_layer is None:
        print("sskt: no validation split, so no layer is chosen (choosing on the test split would be optimistic); "
              "set data.val_per_class=N to choose one", file=sys.stderr, flush=True)
    return {"checkpoint": str(checkpoint), "protocol": protocol, "metric": "acc", "layers": per_layer,
            "best_layer": best_layer, "val_top1": val_top1,
            "value": per_layer[best_layer]["top1"] if best_layer else None, "train_images": len(splits.train),
            "test_images": len(splits.test), "spatial": spatial, "knn_k": knn_k if protocol == "knn" else None,
            "seconds": round(time.perf_counter() - started, 1)}


def finetune_checkpoint(checkpoint: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train the checkpoint's target, every layer, on the labelled task (method ``scratch`` started from
    its weights; a new classifier when the label spaces differ). Writes a run under
    ``<run>/finetune`` unless ``out_dir=...`` is overridden."""
    raw, target = load_target(checkpoint)
    run_dir = Path(checkpoint).resolve().parent.parent
    init = run_dir / "finetune_init_target.pt"
    target.save(init)
    base = {**raw, "name": f"{raw.get('name', 'run')}-finetune", "out_dir": str(run_dir / "finetune"),
            "method": {"name": "scratch"}, "target": {**raw.get("target", {}), "checkpoint": str(init)}}
    cfg = ExperimentConfig.from_dict(apply_overrides(base, list(overrides)))
    result = fit(cfg)
    return {"checkpoint": str(checkpoint), "protocol": "finetune", "metric": result.metric, "value": result.final,
            "best": result.best, "out_dir": str(result.out_dir), "train_images": result.record["train_images"],
            "test_images": result.record["test_images"]}
