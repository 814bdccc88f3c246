"""The target's fast path (bf16 autocast + channels_last): its loss on a fixed batch within tolerance of fp32,
the target's weights in channels_last, and a short run that still learns."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sskt.config import ExperimentConfig, TrainConfig
from sskt.engine.run import fit
from sskt.models.target import TargetNetwork
from testutils import DIGITS_CHANCE, tiny_config


def test_channels_last_follows_the_precision_unless_set() -> None:
    assert not TrainConfig().uses_channels_last and TrainConfig(precision="bf16-mixed").uses_channels_last
    assert not TrainConfig(precision="bf16-mixed", channels_last=False).uses_channels_last


@torch.no_grad()
def test_the_fast_path_loss_is_within_tolerance_of_fp32_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    net = TargetNetwork("cifar_resnet20", 10).eval()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    ref = torch.nn.functional.cross_entropy(net(x), y)
    fast_net = net.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = torch.nn.functional.cross_entropy(fast_net(x.contiguous(memory_format=torch.channels_last)).float(), y)
    assert abs(float(fast) - float(ref)) < 0.02 * float(ref)  # bf16 keeps 8 bits of mantissa


def test_a_bf16_channels_last_run_trains_and_keeps_its_weights_in_channels_last(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path, train={"epochs": 4, "precision": "bf16-mixed"},
                      data={"per_class": 20, "test_per_class": 20})
    result = fit(ExperimentConfig.from_dict(raw))
    assert result.final > DIGITS_CHANCE
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    conv = state["state_dict"]["method.target.model.conv1.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
