"""Optimisers and learning-rate schedules from the ``train`` section, built in one place: the engine's for
automatic methods, and the several optimisers of methods that step them themselves (DML, MAXL)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def make_optimizer(params: Iterable[Any], train_cfg: Any, **overrides: Any) -> torch.optim.Optimizer:
    """SGD over ``params`` (parameters, or parameter groups with their own settings) with the run's
    ``train.lr``, ``momentum``, ``weight_decay`` and ``nesterov``; ``overrides`` replace any of those
    four for this optimiser (e.g. a second network's own learning rate)."""
    settings = {"lr": train_cfg.lr, "momentum": train_cfg.momentum, "weight_decay": train_cfg.weight_decay,
                "nesterov": train_cfg.nesterov}
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise TypeError(f"make_optimizer: unknown setting(s) {unknown}; known: {sorted(settings)}")
    settings.update(overrides)
    return torch.optim.SGD(params, **settings)


def make_scheduler(optimizer: torch.optim.Optimizer, train_cfg: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: multistep (milestones, gamma), cosine to 0 over the run, or constant."""
    if train_cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(train_cfg.milestones),
                                                    gamma=train_cfg.gamma)
    if train_cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(train_cfg.epochs, 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
