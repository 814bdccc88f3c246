"""Scoring a network (:mod:`sskt.evaluation.scoring`) and evaluation protocols for frozen representations:
linear probes and weighted k-NN (:mod:`sskt.evaluation.probes`).

Names are imported on first use: scoring a network (what the methods and the engine need) does not load
the clustering stack the probes use.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"ProbeResult": "sskt.evaluation.probes", "knn_accuracy": "sskt.evaluation.probes",
         "knn_predict": "sskt.evaluation.probes", "linear_probe": "sskt.evaluation.probes",
         "probe_layers": "sskt.evaluation.probes", "evaluate_model": "sskt.evaluation.scoring",
         "evaluate_on_test": "sskt.evaluation.scoring"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sskt.evaluation' has no attribute {name!r}")
