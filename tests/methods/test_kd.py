"""KD: loss against a hand computation, gradients, label-space check, a short real run."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sskt.config import TargetConfig
from sskt.errors import SSKTError
from sskt.methods.base import BuildContext
from sskt.methods.kd import KD, KDOptions, distillation_loss
from sskt.models.factory import create_model
from sskt.models.target import TargetNetwork
from sskt.sources.source import Source
from testutils import CIFAR_RESNETS, DIGITS_CHANCE, need


def test_loss_matches_hand_computation() -> None:
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    y = torch.tensor([0, 2])
    T, a = 4.0, 0.9

    def softmax(row: list[float], t: float) -> list[float]:
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    ce = kl = 0.0
    for s, t, label in zip(student.tolist(), teacher.tolist(), y.tolist()):
        ce += -math.log(softmax(s, 1.0)[label]) / 2
        ps, pt = softmax(s, T), softmax(t, T)
        kl += sum(q * math.log(q / p) for p, q in zip(ps, pt)) / 2
    hard, soft = distillation_loss(student, teacher, y, T, a)
    assert hard.item() == pytest.approx((1 - a) * ce, rel=1e-5)
    assert soft.item() == pytest.approx(a * T * T * kl, rel=1e-5)


def _kd(num_teacher_classes: int = 10) -> KD:
    teacher = Source("teacher", create_model("cifar_resnet20", num_teacher_classes), num_teacher_classes, input_size=32)
    return KD(TargetNetwork("cifar_resnet20", 10), teacher, KDOptions(teacher={"name": "teacher"}))


def test_gradients_reach_the_student_only() -> None:
    torch.manual_seed(0)
    method = _kd()
    method.train()
    assert not method.teacher.training  # frozen teacher stays in eval mode
    out = method.training_step({"image": torch.rand(4, 3, 32, 32), "target": torch.tensor([0, 1, 2, 3])})
    sum(out.losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.target.parameters())


def test_teacher_with_other_classes_is_refused_with_a_pointer_to_sskt() -> None:
    with pytest.raises(SSKTError, match="sskt"):
        _kd(num_teacher_classes=100)


def test_options_are_validated() -> None:
    with pytest.raises(SSKTError, match="teacher"):
        KDOptions()
    with pytest.raises(SSKTError, match="alpha"):
        KDOptions(teacher={"arch": "x"}, alpha=1.5)


def test_cifar_teacher_on_a_100_class_task_is_refused() -> None:
    ctx = BuildContext(num_classes=100, input_shape=(3, 32, 32), multilabel=False, target=TargetConfig())
    teacher = {"arch": "cifar_resnet44", "checkpoint": str(need(CIFAR_RESNETS[44])), "input_size": 32,
               "mean": "imagenet", "std": "imagenet"}
    with pytest.raises(SSKTError, match="use method sskt"):
        KD.from_config({"teacher": teacher}, ctx)


def test_short_digits_run_beats_chance_and_records_teacher_accuracy(make_config, tmp_path: Path, digits_teacher: Path) -> None:
    from sskt.engine.run import fit

    method = {"name": "kd", "teacher": {"arch": "cifar_resnet20", "checkpoint": str(digits_teacher), "input_size": 8}}
    result = fit(make_config(tmp_path, method))
    assert result.final > DIGITS_CHANCE + 5
    assert result.record["teacher_acc"] > DIGITS_CHANCE


@pytest.mark.parametrize("target_classes, hint", [
    (["dog", "frog", "horse", "ship", "truck"], "label space"),
    (["bird", "airplane", "automobile", "cat", "deer"], "the same, in another order"),
])
def test_teacher_with_other_class_names_is_refused(tmp_path: Path, target_classes: list, hint: str) -> None:
    teacher_classes = ["airplane", "automobile", "bird", "cat", "deer"]
    TargetNetwork("cifar_resnet20", 5).save(tmp_path / "teacher.pt", classes=teacher_classes)
    ctx = BuildContext(num_classes=5, input_shape=(3, 32, 32), multilabel=False, target=TargetConfig(),
                       classes=target_classes)
    with pytest.raises(SSKTError, match="predicts classes \\[airplane, automobile, bird, cat, \\.\\.\\.\\]") as err:
        KD.from_config({"teacher": {"checkpoint": str(tmp_path / "teacher.pt")}}, ctx)
    assert hint in str(err.value)
    # The same names in the same order are accepted.
    ctx.classes = teacher_classes
    assert KD.from_config({"teacher": {"checkpoint": str(tmp_path / "teacher.pt")}}, ctx).teacher.classes == teacher_classes
