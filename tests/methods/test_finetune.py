"""Fine-tuning: weights come from the checkpoint, lower backbone lr, a short real run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sskt.config import TargetConfig, TrainConfig
from sskt.errors import SSKTError
from sskt.methods.base import BuildContext
from sskt.methods.finetune import Finetune
from sskt.models.weights import extract_state_dict, read_checkpoint
from testutils import DIGITS_CHANCE


def _ctx(checkpoint: str | None) -> BuildContext:
    return BuildContext(num_classes=10, input_shape=(3, 8, 8), multilabel=False,
                        target=TargetConfig(arch="cifar_resnet20", checkpoint=checkpoint))


def test_weights_are_loaded_and_classifier_optionally_reset(digits_teacher: Path) -> None:
    state = extract_state_dict(read_checkpoint(digits_teacher))
    kept = Finetune.from_config({}, _ctx(str(digits_teacher)))
    for name, value in kept.target.model.state_dict().items():
        assert torch.equal(value, state[name]), name
    torch.manual_seed(1)
    reset = Finetune.from_config({"reset_classifier": True}, _ctx(str(digits_teacher)))
    own = reset.target.model.state_dict()
    assert torch.equal(own["conv1.weight"], state["conv1.weight"])
    assert not torch.equal(own["linear.weight"], state["linear.weight"])


def test_backbone_gets_the_lower_learning_rate(digits_teacher: Path) -> None:
    method = Finetune.from_config({"backbone_lr_mult": 0.1}, _ctx(str(digits_teacher)))
    backbone, head = method.param_groups(TrainConfig(lr=0.2))
    assert backbone["lr"] == pytest.approx(0.02) and head["lr"] == pytest.approx(0.2)
    assert {id(p) for p in head["params"]} == {id(p) for p in method.target.model.linear.parameters()}
    n = sum(1 for p in method.parameters() if p.requires_grad)
    assert len(backbone["params"]) + len(head["params"]) == n


def test_loss_is_the_target_loss_and_reaches_every_weight(digits_teacher: Path) -> None:
    method = Finetune.from_config({}, _ctx(str(digits_teacher)))
    images, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    out = method.training_step({"image": images, "target": y})
    assert out.losses["target"].item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, y).item())
    out.losses["target"].backward()
    assert all(p.grad is not None for p in method.parameters())


def test_missing_checkpoint_is_a_clear_error() -> None:
    with pytest.raises(SSKTError, match="target.checkpoint"):
        Finetune.from_config({}, _ctx(None))


def test_short_digits_run_beats_chance(make_config, tmp_path: Path, digits_teacher: Path) -> None:
    from sskt.engine.run import fit

    cfg = make_config(tmp_path, {"name": "finetune", "reset_classifier": True, "backbone_lr_mult": 0.5}, epochs=2,
                      eval_every=2)
    cfg.target.checkpoint = str(digits_teacher)
    assert fit(cfg).final > DIGITS_CHANCE + 5
