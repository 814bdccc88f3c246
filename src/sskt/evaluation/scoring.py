"""Scoring a network on a dataset: top-1 accuracy or per-class mAP.

Used by the engine (``sskt evaluate``) and by methods that report a frozen or auxiliary network's own
accuracy (a KD teacher, SSKT's sources, DML's peers). Imports nothing above the data and metrics (on
first use: importing the methods stays light).
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from sskt.data.tensor_dataset import ImageTensorDataset

# Test accuracies asked for with a memo key (a frozen teacher's is the same for every seed and variant
# of a comparison): measured once per process.
_MEMO: dict[Hashable, float | None] = {}


@torch.no_grad()
def evaluate_model(model: nn.Module, data: ImageTensorDataset, multilabel: bool = False,
                   batch_size: int = 512) -> float:
    """Top-1 accuracy (%) or per-class mAP (%, ignore mask applied; :func:`sskt.metrics.classwise_map`)
    of ``model`` (images in [0, 1] -> logits) on ``data``."""
    from sskt.data.augment import to_float
    from sskt.metrics import MultilabelMAP

    model.eval()
    metric = MultilabelMAP() if multilabel else None
    correct = 0
    for start in range(0, len(data), batch_size):
        batch = data.__getitems__(range(start, min(start + batch_size, len(data))))
        logits = model(to_float(batch["image"])).float()
        if metric is not None:
            metric.update(logits, batch["target"], batch.get("ignore"))
        else:
            correct += int((logits.argmax(1) == batch["target"]).sum())
    return metric.compute()["map"] * 100 if metric is not None else 100.0 * correct / len(data)


class OnDevice(nn.Module):
    """Moves CPU evaluation batches to the wrapped module's device (the engine may have moved it)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        device = next(self.module.parameters()).device
        return self.module(x.to(device))


def evaluate_on_test(module: nn.Module, test_data: Any, multilabel: bool = False,
                     memo_key: Hashable | None = None) -> float | None:
    """Test accuracy (%, 4 decimals) of a frozen or auxiliary network, or None when no test split is
    known; its train/eval mode is left as it was. With ``memo_key`` (which must identify the weights,
    the input handling and the data), the value is measured once per process."""
    if test_data is None:
        return None
    if memo_key is not None and memo_key in _MEMO:
        return _MEMO[memo_key]
    was_training = module.training
    try:
        value = round(evaluate_model(OnDevice(module), test_data, multilabel), 4)
    finally:
        module.train(was_training)
    if memo_key is not None:
        _MEMO[memo_key] = value
    return value
