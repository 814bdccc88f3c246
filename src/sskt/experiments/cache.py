"""The cache of an experiment (SSKT's soft labels), built (or resumed, or checked) ahead of training."""
from __future__ import annotations

from sskt.config import ExperimentConfig
from sskt.data.datasets import load_data
from sskt.engine.run import build_context, seed_run
from sskt.methods import build_method
from sskt.methods.base import check_cacheable


def build_cache(cfg: ExperimentConfig) -> list[str]:
    """Build, resume or check the cache of ``cfg`` (e.g. an ``sskt`` experiment with ``method.cache``): the
    method's :meth:`~sskt.methods.base.Method.prepare`, as training does it, and its report (one line per
    file and a total). Training with the same config reuses the files."""
    check_cacheable(cfg.method)  # a method without a cache is a one-line error before any data is read
    seed_run(cfg.seed)  # as fit: a randomly initialised source gets the same weights, so the same cache key
    splits = load_data(cfg.data)
    ctx = build_context(cfg, splits)
    return build_method(cfg.method, ctx).prepare(ctx)
