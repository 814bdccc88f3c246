"""What is read from a run's per-epoch history (``MethodModule.history``): ``result.json`` and the
exported model card report the same ``best``."""
from __future__ import annotations

from typing import Any


def best_by_validation(history: list[dict], metric: str) -> dict[str, Any]:
    """``best``: the test metric at the evaluation with the best validation metric (None without a
    validation split: picking the best test score would select on the test split), with its epoch."""
    key = f"val_{metric}"
    scored = [h for h in history if key in h]
    if not scored:
        return {"best": None, "best_epoch": None, "best_val": None}
    top = max(scored, key=lambda h: h[key])  # the earliest of equal scores
    return {"best": top[f"test_{metric}"], "best_epoch": top["epoch"], "best_val": top[key]}
