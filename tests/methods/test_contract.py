"""The contract every registered method keeps, with golden loss values (issue 12).

Parametrised over ``METHODS.names()``: a method registered without an entry in :data:`OPTIONS` and in
``golden_losses.json`` fails, saying what to add. For each method, on a tiny digits task:

1. ``test_golden_losses``: the method is built from :data:`OPTIONS` (seeded) and prepared, then takes ONE training
   step exactly as :class:`sskt.engine.lit.MethodModule` would (:class:`~sskt.data.views.TrainingViews`, the engine's batch
   augmentation with the run's seed, then ``training_step`` + backward, or ``manual_step`` with the
   engine's optimisers); every named loss of its ``StepOutput`` must match ``golden_losses.json``
   (rtol 1e-4, atol 1e-5). A missing method, a missing loss name or an extra loss name fails: golden
   values are never regenerated silently.
2. ``test_gradients_reach_only_trainable_parameters``: frozen modules (``frozen_modules()``) get no
   gradient, stay bit-identical (parameters and buffers) and in eval mode; the target gets gradients;
   the engine's optimisers hold exactly the trainable parameters.
3. ``test_evaluation_batch``: logits (rows, classes the method scores) and integer labels in range.
4. ``test_step_output``: the step's logits are scored against labels of the same rows, and an automatic
   step's losses are all differentiable.
5. ``test_tiny_fit``: one epoch of ``sskt.engine.run.fit`` on digits (``tiny_config``) ends with a finite
   metric (under a second per method).

Recording (only on purpose, from a version of the code you trust)::

    SSKT_RECORD_GOLDEN=1 OMP_NUM_THREADS=1 pytest tests/methods/test_contract.py

computes each method's losses twice (refusing to record if the two runs differ), writes them to
``tests/methods/golden_losses.json`` (dropping methods no longer registered) and skips the golden
tests with a note. The values were first recorded on CPU, fp32, one thread (torch 2.14, before the
method redesign of issue 12); after the redesign they must be reproduced, not re-recorded.

The values pin the maths AND the order in which ``from_config`` draws random weights from the seeded
global generator (e.g. SSKT builds its sources before the target, so its target starts from other
weights than scratch's; DML's peer 0 draws first, so its ``target`` loss equals scratch's), and the
order in which a step draws random numbers (rotations, puzzles, dropout). A redesign that keeps the
maths but reorders construction changes them: keep the order, or show equality another way before
re-recording.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import Tensor

import sskt.methods  # noqa: F401  (registers every method)
from sskt.config import DataConfig, TargetConfig, TrainConfig
from sskt.data.augment import to_float
from sskt.data.views import TrainingViews
from sskt.data.datasets import load_data
from sskt.methods.base import METHODS, BuildContext, Method, StepOutput, build_method
from testutils import FakeModule, tiny_config

GOLDEN = Path(__file__).with_name("golden_losses.json")
RECORD = os.environ.get("SSKT_RECORD_GOLDEN") == "1"
RECORD_HINT = ("record it (only from a version of the code you trust) with "
               "SSKT_RECORD_GOLDEN=1 OMP_NUM_THREADS=1 pytest tests/methods/test_contract.py")
RTOL, ATOL = 1e-4, 1e-5

BUILD_SEED = 0  # torch.manual_seed before building a method (its random weights)
STEP_SEED = 1  # torch.manual_seed before the step (random rotations, puzzles, dropout)
RUN_SEED = 0  # the run's seed: the engine's augmentation generator in epoch 0 is seeded from it
ARCH = "cifar_resnet20"
# The tiny task: bundled 8x8 digits (grey -> RGB, so 3x8x8), 10 classes, 4 labelled images per class.
TASK_DATA = DataConfig(dataset="digits", per_class=4, test_per_class=2, crop_padding=1, flip=True)
STEP_ROWS = list(range(0, 40, 5))  # the 8 training rows of the golden step's batch
EVAL_ROWS = list(range(8))  # the 8 test rows given to evaluation_batch
TRAIN = TrainConfig(epochs=1, batch_size=len(STEP_ROWS), lr=0.05, schedule="cosine")  # as tiny_config's

# A random-weight source/teacher of the same family as the target (no file needed).
SOURCE = {"name": "s", "arch": ARCH, "num_classes": 7, "input_size": 16}
PRETRAINED_CLASSES = 7  # finetune starts from a network of another label space: a new classifier

# The smallest realistic options of every registered method (a new method needs an entry here).
OPTIONS: dict[str, dict[str, Any]] = {
    "scratch": {},
    # fp32 sources: "auto" would pick bf16 on CPUs with fast bf16, and the golden values would depend on the CPU.
    "sskt": {"sources": [SOURCE], "source_precision": "fp32"},
    "kd": {"teacher": {"arch": ARCH, "num_classes": 10, "input_size": 16}},
    "dml": {"peers": ["same"]},
    "maxl": {"psi": 2},
    "finetune": {"backbone_lr_mult": 0.1},
    "rotation": {},
    "jigsaw": {"permutations": 10, "tile_dim": 32, "hidden": 64},
    "jigsaw++": {"permutations": 10, "tile_dim": 32, "hidden": 64},
    "cluster-transfer": {"teacher": "hog", "hog_cell": 4, "k": 5, "niter": 10},
}

# Target parameters a method leaves without gradient by design: jigsaw reads the target's pooled
# features only, so the target's own classifier is never used in training.
GRADLESS_TARGET_PREFIXES: dict[str, tuple[str, ...]] = {"jigsaw": ("model.linear.",), "jigsaw++": ("model.linear.",)}
# Evaluation rows per image, when not one (rotation scores all four turns of every image).
EVAL_ROWS_PER_IMAGE: dict[str, int] = {"rotation": 4}
# Classes of what evaluation_batch scores, when not the task's: the four turns, the permutations, k clusters.
EVAL_CLASSES: dict[str, int] = {"rotation": 4, "jigsaw": 10, "jigsaw++": 10, "cluster-transfer": 5}


def write_pretrained(folder: Path) -> Path:
    """A seeded random state_dict of another label space: finetune's ``target.checkpoint``."""
    from sskt.models.factory import create_model

    path = folder / "pretrained.pt"
    if not path.is_file():
        torch.manual_seed(123)
        torch.save(create_model(ARCH, PRETRAINED_CLASSES, 3).state_dict(), path)
    return path


# target.* settings a method needs (given a scratch folder for the files it needs).
TARGETS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "finetune": lambda folder: {"checkpoint": str(write_pretrained(folder))},
}

NAMES = METHODS.names()


def options_for(name: str) -> dict[str, Any]:
    if name not in OPTIONS:
        pytest.fail(f"method {name!r} is registered but has no entry in OPTIONS of {__file__}: add its smallest "
                    f"realistic options there, then {RECORD_HINT}")
    return OPTIONS[name]


# -- the engine's step, reproduced ------------------------------------------------------------


@dataclass
class Task:
    splits: Any
    folder: Path

    def context(self, name: str) -> BuildContext:
        target = TargetConfig(arch=ARCH, **TARGETS.get(name, lambda _: {})(self.folder))
        s = self.splits
        return BuildContext(num_classes=s.num_classes, input_shape=tuple(s.train.images.shape[1:]),
                            multilabel=s.multilabel, target=target, seed=RUN_SEED, classes=s.classes,
                            train_data=s.training_set(), data=TASK_DATA, test_data=s.test, val_data=s.val)


@dataclass
class Stepped:
    """A method after one engine step, and what the contract tests look at."""

    method: Method
    ctx: BuildContext
    batch: dict[str, Tensor]
    out: StepOutput
    optimizers: list[torch.optim.Optimizer]
    frozen_before: dict[str, Tensor]
    target_before: dict[str, Tensor]

    @property
    def losses(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self.out.losses.items()}


def engine_optimizers(method: Method) -> list[torch.optim.Optimizer]:
    """The optimisers MethodModule.configure_optimizers gives the trainer, as a list."""
    from sskt.engine.lit import MethodModule

    module = MethodModule(method, TRAIN, TASK_DATA.crop_padding, TASK_DATA.flip, num_classes=10, seed=RUN_SEED)
    config = module.configure_optimizers()
    if isinstance(config, dict):
        config = config["optimizer"]
    if isinstance(config, tuple):  # (optimisers, schedulers)
        config = config[0]
    return [c["optimizer"] if isinstance(c, dict) else c for c in (config if isinstance(config, list) else [config])]


def frozen_state(method: Method) -> dict[str, Tensor]:
    """Parameters and buffers of every frozen module, copied."""
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(method.frozen_modules())
            for k, v in m.state_dict().items()}


def step(name: str, task: Task) -> Stepped:
    """Build ``name`` (seeded) and run one training step as the engine does in epoch 0 of a run."""
    ctx = task.context(name)
    torch.manual_seed(BUILD_SEED)
    method = build_method({"name": name, **options_for(name)}, ctx)
    method.prepare(ctx)  # as fit does, before training (cluster-transfer's pseudo-labels)
    optimizers = engine_optimizers(method)
    method.train()  # Lightning's fit puts the module in train mode (frozen modules stay in eval)
    frozen_before = frozen_state(method)
    target_before = {k: v.detach().clone() for k, v in method.target.named_parameters()}
    rows = ctx.train_data.__getitems__(STEP_ROWS)  # what the training loader yields (uint8 images)
    # MethodModule.on_train_epoch_start / training_step, epoch 0, rank 0:
    views = TrainingViews(TASK_DATA.crop_padding, TASK_DATA.flip, RUN_SEED, method.soft_label_store())
    views.start_epoch(0, rank=0)
    torch.manual_seed(STEP_SEED)
    batch = views(rows)
    if method.automatic_optimization:
        for opt in optimizers:
            opt.zero_grad()
        out = method.training_step(batch)
        sum(out.losses.values()).backward()
    else:
        out = method.manual_step(batch, FakeModule(optimizers))
    return Stepped(method, ctx, batch, out, optimizers, frozen_before, target_before)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return Task(load_data(TASK_DATA), tmp_path_factory.mktemp("contract"))


@pytest.fixture(scope="module")
def stepped(task: Task) -> Callable[[str], Stepped]:
    """One engine step per method, taken once per module and shared by the tests that inspect it."""
    done: dict[str, Stepped] = {}

    def get(name: str) -> Stepped:
        if name not in done:
            done[name] = step(name, task)
        return done[name]

    return get


# -- 1. golden losses ---------------------------------------------------------------------------


def read_golden() -> dict[str, dict[str, float]]:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}


def write_golden(name: str, losses: dict[str, float]) -> None:
    golden = {k: v for k, v in read_golden().items() if k in NAMES}  # drop methods no longer registered
    golden[name] = dict(sorted(losses.items()))
    tmp = GOLDEN.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(golden.items())), indent=2) + "\n")
    tmp.replace(GOLDEN)


@pytest.mark.parametrize("name", NAMES)
def test_golden_losses(name: str, stepped: Callable[[str], Stepped], task: Task) -> None:
    losses = stepped(name).losses
    assert all(math.isfinite(v) for v in losses.values()), losses
    if RECORD:
        again = step(name, task).losses  # a second build and step from scratch: must agree bit for bit
        if again != losses:
            pytest.fail(f"{name}: not deterministic, nothing recorded: {losses} then {again}")
        write_golden(name, losses)
        pytest.skip(f"recorded golden losses of {name!r} in {GOLDEN.name}: {losses}")
    golden = read_golden()
    if name not in golden:
        pytest.fail(f"no golden losses for method {name!r} in {GOLDEN}; {RECORD_HINT}")
    expected = golden[name]
    assert set(losses) == set(expected), (
        f"{name}: loss names changed: missing {sorted(set(expected) - set(losses))}, "
        f"extra {sorted(set(losses) - set(expected))} (never re-record to hide a change; {RECORD_HINT})")
    for key, value in expected.items():
        assert losses[key] == pytest.approx(value, rel=RTOL, abs=ATOL), f"{name}: loss {key!r}"


def test_registration_names_the_method() -> None:
    # @METHODS.register("x") sets cls.name = "x": the name is written once.
    assert {name: METHODS.get(name).name for name in NAMES} == {name: name for name in NAMES}


def test_golden_file_holds_registered_methods_only() -> None:
    stale = sorted(set(read_golden()) - set(NAMES))
    assert not stale, f"golden_losses.json has entries for unregistered methods {stale}; {RECORD_HINT}"


# -- 2. gradients and frozen modules ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_only_trainable_parameters(name: str, stepped: Callable[[str], Stepped]) -> None:
    s = stepped(name)
    method = s.method
    frozen = method.frozen_modules()
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    # Frozen modules: no gradient, nothing trainable, in eval mode, parameters and buffers unchanged.
    for m in frozen:
        for n, p in m.named_parameters():
            assert not p.requires_grad, f"{name}: frozen parameter {n} requires grad"
            assert p.grad is None, f"{name}: frozen parameter {n} got a gradient"
        assert not any(sub.training for sub in m.modules()), f"{name}: a frozen module is in train mode"
    after = frozen_state(method)
    assert after.keys() == s.frozen_before.keys()
    changed = [k for k, v in after.items() if not torch.equal(v, s.frozen_before[k])]
    assert not changed, f"{name}: frozen state changed in a step: {changed[:5]}"
    assert sorted(method.frozen_prefixes()) == sorted(
        {f"{n}." for n, m in method.named_modules() if any(m is f for f in frozen)})
    # Gradients only where training may put them.
    for n, p in method.named_parameters():
        if p.grad is not None:
            assert p.requires_grad and id(p) not in frozen_ids, f"{name}: {n} is not trainable but got a gradient"
    # The target learns: every target parameter got a gradient (save the ones the method leaves unused).
    skip = GRADLESS_TARGET_PREFIXES.get(name, ())
    gradless = [n for n, p in method.target.named_parameters() if p.grad is None and not n.startswith(skip)]
    assert not gradless, f"{name}: target parameters without gradient: {gradless[:5]}"
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in method.target.parameters())
    if skip:
        unused = [n for n, p in method.target.named_parameters() if n.startswith(skip)]
        assert unused and all(p.grad is None for n, p in method.target.named_parameters() if n.startswith(skip))
    if not method.automatic_optimization:  # the manual step updated the target
        assert any(not torch.equal(p, s.target_before[n]) for n, p in method.target.named_parameters())
    # The engine's optimisers hold exactly the trainable parameters, each once, none of a frozen module.
    in_optim = [id(p) for opt in s.optimizers for g in opt.param_groups for p in g["params"]]
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert len(in_optim) == len(set(in_optim)), f"{name}: a parameter is in two optimiser groups"
    assert set(in_optim) == trainable, f"{name}: optimisers and trainable parameters differ"
    assert not set(in_optim) & frozen_ids


# -- 3. evaluation ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_batch(name: str, stepped: Callable[[str], Stepped], task: Task) -> None:
    s = stepped(name)
    method = s.method
    rows = task.splits.test.__getitems__(EVAL_ROWS)  # as the evaluation loader yields them (uint8, index)
    method.eval()
    try:
        with torch.no_grad():
            logits, labels = method.evaluation_batch({**rows, "image": to_float(rows["image"])})
    finally:
        method.train()
    classes = EVAL_CLASSES.get(name, s.ctx.num_classes)
    n = len(EVAL_ROWS) * EVAL_ROWS_PER_IMAGE.get(name, 1)
    assert tuple(logits.shape) == (n, classes), f"{name}: logits {tuple(logits.shape)}, expected {(n, classes)}"
    assert tuple(labels.shape) == (n,) and not labels.is_floating_point()
    assert bool(((labels >= 0) & (labels < classes)).all())
    if name not in EVAL_ROWS_PER_IMAGE and name not in EVAL_CLASSES:
        assert torch.equal(labels, rows["target"])  # the task's own labels by default
    assert bool(torch.isfinite(logits).all())


# -- 4. the step's output -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_step_output(name: str, stepped: Callable[[str], Stepped]) -> None:
    s = stepped(name)
    labels = s.batch["target"] if s.out.targets is None else s.out.targets  # what train/acc scores
    assert s.out.logits.ndim == 2 and s.out.logits.shape[0] == labels.shape[0], (
        f"{name}: logits {tuple(s.out.logits.shape)} for {tuple(labels.shape)} labels")
    assert int(labels.max()) < s.out.logits.shape[1]
    assert s.out.losses and all(v.ndim == 0 for v in s.out.losses.values())
    if s.method.automatic_optimization:
        assert all(v.requires_grad for v in s.out.losses.values()), f"{name}: a loss carries no gradient"
    else:  # a manual step has done its updates: what it returns is only logged
        assert not any(v.requires_grad for v in s.out.losses.values())


# -- 5. a tiny run ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_tiny_fit(name: str, tmp_path: Path) -> None:
    from sskt.config import ExperimentConfig
    from sskt.engine.run import fit

    target = {"arch": ARCH, **TARGETS.get(name, lambda _: {})(tmp_path)}
    raw = tiny_config(tmp_path, method={"name": name, **options_for(name)}, target=target,
                      data={"test_per_class": 3}, train={"accelerator": "cpu"})
    result = fit(ExperimentConfig.from_dict(raw))
    assert math.isfinite(result.final), f"{name}: final {result.metric} is {result.final}"
    assert result.history and all(math.isfinite(h["train_loss"]) for h in result.history)


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).single_label_only])
def test_single_label_methods_refuse_multi_label_data_in_one_place(name: str) -> None:
    from sskt.errors import SSKTError

    ctx = BuildContext(num_classes=4, input_shape=(3, 8, 8), multilabel=True, target=TargetConfig())
    with pytest.raises(SSKTError, match=f"method {name} is for single-label tasks \\(.+\\)"):
        build_method({"name": name}, ctx)
