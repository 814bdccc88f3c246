"""Class-balanced labelled batches (data.balanced) and the macro-averaged accuracy beside top-1."""
from __future__ import annotations

from pathlib import Path

import torch

from sskt.config import ExperimentConfig
from sskt.data.sampling import MixedBatchSampler, needs_balancing
from sskt.engine.run import fit
from testutils import tiny_config


def test_balanced_batches_draw_every_class_about_equally_and_resume_exactly() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    assert needs_balancing(labels) and not needs_balancing(torch.tensor([0] * 30 + [1] * 20))
    sampler = MixedBatchSampler(100, 0, 10, seed=0, labels=labels)
    drawn = torch.tensor([i for b in sampler for i in b])
    assert len(drawn) == 100 and 0.35 < float((labels[drawn] == 1).float().mean()) < 0.65  # 10% without it
    again = MixedBatchSampler(100, 0, 10, seed=0, labels=labels)
    assert [list(b) for b in again] == [list(b) for b in MixedBatchSampler(100, 0, 10, seed=0, labels=labels)]
    plain = torch.tensor([i for b in MixedBatchSampler(100, 0, 10, seed=0) for i in b])
    assert sorted(plain.tolist()) == list(range(100))  # without labels: each image once per epoch, as before


def test_runs_report_the_macro_averaged_accuracy(tmp_path: Path) -> None:
    result = fit(ExperimentConfig.from_dict(tiny_config(tmp_path)))
    entry = result.history[-1]
    assert 0.0 <= entry["test_macro_acc"] <= 100.0 and result.record["final_macro_acc"] == entry["test_macro_acc"]
