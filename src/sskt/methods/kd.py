"""Knowledge distillation (Hinton, Vinyals, Dean 2015) from a frozen teacher of the same label space.

loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)),
the teacher seeing the same augmented view as the student. A teacher with other classes is not a
KD teacher: that is what SSKT's auxiliary heads are for.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.losses import kd_loss
from sskt.methods._util import adapt_source, evaluate_once, make_room_for_adaptation, weak_teacher_warnings
from sskt.methods.base import METHODS, BuildContext, Method, StepOutput, parse_options
from sskt.models.target import TargetNetwork
from sskt.sources.source import Source, SourceConfig, build_source, source_config
from sskt.validation import Parsed


def teacher_config(raw: Any, where: str) -> SourceConfig | None:
    """``method.teacher``: a source mapping whose ``name`` defaults to ``teacher`` (None if empty)."""
    if isinstance(raw, Mapping):
        return source_config({"name": "teacher", **raw}, where) if raw else None
    return source_config(raw, where)


@dataclass
class KDOptions:
    """``teacher``: a source mapping (``arch``, ``checkpoint``, ``input_size``, ``mean``/``std`` ... as
    for SSKT's sources; ``name`` defaults to ``teacher``). ``temperature`` T and ``alpha`` (the weight
    of the soft term; the hard CE gets 1 - alpha) default to the CRD benchmark's T = 4, alpha = 0.9.
    ``evaluate_teacher``: record the teacher's own test accuracy in result.json."""

    teacher: Annotated[SourceConfig | None, Parsed(teacher_config)] = None
    temperature: float = 4.0
    alpha: float = 0.9
    evaluate_teacher: bool = True

    def __post_init__(self) -> None:
        if not self.teacher:
            raise SSKTError("method kd needs method.teacher (a source mapping with arch and checkpoint)")
        if self.temperature <= 0:
            raise SSKTError(f"method kd: temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise SSKTError(f"method kd: alpha must be in [0, 1], got {self.alpha}")


def distillation_loss(student: Tensor, teacher: Tensor, target: Tensor, temperature: float,
                      alpha: float, labeled: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The two weighted terms of the KD loss: ((1 - alpha) * CE, alpha * T^2 * batch-mean KL).

    ``labeled`` (bool per row, optional): the CE uses only those rows; the KL teaches on every row."""
    hard_student, hard_target = (student, target) if labeled is None else (student[labeled], target[labeled])
    return (1.0 - alpha) * F.cross_entropy(hard_student, hard_target), alpha * kd_loss(student, teacher, temperature)


@METHODS.register("kd")
class KD(Method):
    """A target distilled from one frozen teacher that shares its label space.

    Example:
        >>> from sskt.models.factory import create_model
        >>> teacher = Source("teacher", create_model("cifar_resnet20", 10), 10, input_size=32)
        >>> m = KD(TargetNetwork("cifar_resnet20", 10), teacher, KDOptions(teacher={"name": "teacher"}))
        >>> sorted(m.training_step({"image": torch.rand(4, 3, 32, 32), "target": torch.arange(4)}).losses)
        ['kd', 'target']
    """

    options_class = KDOptions
    single_label_only = "softmax KL; for multi-label use method sskt"
    learns_from_unlabeled = True

    def __init__(self, target: TargetNetwork, teacher: Source, options: KDOptions, test_data: Any = None) -> None:
        super().__init__(target)
        if teacher.num_classes != target.num_classes:
            raise SSKTError(
                f"kd teacher {teacher.name!r} predicts {teacher.num_classes} classes but the target has "
                f"{target.num_classes}; KD needs the same label space; for a teacher with other classes "
                f"use method sskt (an auxiliary head per source)"
            )
        self.options = options
        self.teacher = teacher
        self._test_data = test_data  # kept out of the module state: only for extra_results
        self.adapt_teacher = False  # adapt: probe: prepare() fits the teacher's probe
        self.adapted_teacher: dict = {}  # what adapt: probe measured, if the teacher was adapted

    @classmethod
    def from_config(cls, options: dict, ctx: BuildContext) -> "KD":
        opts = parse_options(KDOptions, options)
        teacher_cfg = opts.teacher
        if teacher_cfg.adapt == "features":
            raise SSKTError("method kd's teacher must predict classes; adapt: features (its embedding) is for "
                            "method sskt's sources: use adapt: probe or none")
        teacher = build_source(teacher_cfg, ctx.in_chans)
        adapt = teacher_cfg.adapt == "probe"
        if adapt:
            make_room_for_adaptation(teacher, ctx)  # the probe itself is fitted in prepare()
        if not adapt and teacher.classes and ctx.classes and teacher.classes != list(ctx.classes):
            # Same count, other names (or order): logit i would teach the wrong class.
            same_set = sorted(teacher.classes) == sorted(ctx.classes)
            raise SSKTError(
                f"kd teacher {teacher.name!r} predicts classes {_short(teacher.classes)} but the target's are "
                f"{_short(ctx.classes)}{' (the same, in another order)' if same_set else ''}; KD needs the same "
                f"label space in the same order; for a teacher of other classes use method sskt")
        method = cls(ctx.build_target(), teacher, opts, ctx.test_data)
        method.adapt_teacher = adapt
        return method

    def prepare(self, ctx: BuildContext) -> list[str]:
        """With ``adapt: probe``, fit the teacher's probe on ``ctx``'s labelled training images."""
        if self.adapt_teacher and not self.adapted_teacher:
            self.adapted_teacher = adapt_source(self.teacher, ctx)
            advice = "use method sskt with head: auto (it leaves a source below the bar out) or another teacher"
            for line in weak_teacher_warnings({self.teacher.name: self.adapted_teacher}, advice):
                print(line, file=sys.stderr, flush=True)
        return []

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        images = batch["image"]
        with torch.no_grad():
            teacher_logits = self.teacher(images)  # same augmented view as the student
        logits = self.target(images)
        hard, soft = distillation_loss(logits, teacher_logits, batch["target"], self.options.temperature,
                                       self.options.alpha, batch.get("labeled"))
        return StepOutput(logits, {"target": hard, "kd": soft})

    def extra_results(self) -> dict[str, Any]:
        if not self.options.evaluate_teacher or self._test_data is None:
            return {}
        out: dict[str, Any] = {"teacher_acc": evaluate_once(self.teacher, self._test_data)}
        if self.adapted_teacher:
            out["adapted/teacher"] = self.adapted_teacher
        return out


def _short(names: list[str], shown: int = 4) -> str:
    return "[" + ", ".join(names[:shown]) + (", ...]" if len(names) > shown else "]")
