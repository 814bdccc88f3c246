"""Training loop (Lightning), checkpoints and the fit/evaluate API (``sskt.export`` for the export function).

Names are imported on first use: ``sskt.engine.rundir`` and friends stay importable without Lightning.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"RunResult": "sskt.engine.run", "evaluate": "sskt.engine.run", "evaluate_model": "sskt.evaluation.scoring",
         "fit": "sskt.engine.run", "load_trained": "sskt.engine.run"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sskt.engine' has no attribute {name!r}")
