"""The soft-label cache of an SSKT experiment, built (or resumed, or checked) ahead of training."""
from __future__ import annotations

from sskt.config import ExperimentConfig
from sskt.data.datasets import load_data
from sskt.engine.run import build_context
from sskt.errors import SSKTError
from sskt.methods import build_method


def build_cache(cfg: ExperimentConfig) -> list[str]:
    """Build, resume or check the soft-label cache of ``cfg`` (an ``sskt`` experiment with ``method.cache``)
    and return its report, one line per file and a total. Training with the same config reuses the files."""
    if cfg.method.get("name") != "sskt":
        raise SSKTError(f"sskt cache works on sskt experiments; this one's method is {cfg.method.get('name')!r}")
    if not cfg.method.get("cache"):
        raise SSKTError("this experiment has no method.cache; add e.g. method.cache.mode=exact (or clean)")
    splits = load_data(cfg.data)
    method = build_method(cfg.method, build_context(cfg, splits))  # builds or checks the cache
    return method.cache.report()
