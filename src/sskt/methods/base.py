"""The contract every training method follows, and the registry of methods."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence, TypeVar

from torch import Tensor, nn

from sskt.config import TargetConfig
from sskt.errors import SSKTError
from sskt.models.target import TargetNetwork
from sskt.models.weights import extract_state_dict, load_pretrained, load_weights, read_checkpoint
from sskt.registry import Registry
from sskt.validation import validate


@dataclass
class BuildContext:
    """What a method needs to know about the task to build itself (and to prepare itself for training)."""

    num_classes: int
    input_shape: tuple[int, ...]  # one example without the batch axis: (C,H,W) or (C,T,H,W)
    multilabel: bool
    target: TargetConfig
    seed: int = 0
    classes: list[str] = field(default_factory=list)
    train_data: Any = None  # the training ImageTensorDataset (for methods that precompute over it)
    data: Any = None  # the DataConfig
    test_data: Any = None  # the test ImageTensorDataset (for methods that report e.g. a teacher's accuracy)
    val_data: Any = None  # the validation ImageTensorDataset, if any (for selections a method makes itself)

    @property
    def labeled_data(self) -> Any:
        """The labelled rows of ``train_data`` (it also holds the unlabelled images, if any)."""
        data = self.train_data
        if data is None or "labeled" not in data.extras:
            return data
        return data.subset(data.extras["labeled"].nonzero().flatten())

    @property
    def labeled_targets(self) -> Any:
        """The labels of :attr:`labeled_data`, without copying its images."""
        data = self.train_data
        if data is None or "labeled" not in data.extras:
            return None if data is None else data.targets
        return data.targets[data.extras["labeled"]]

    @property
    def in_chans(self) -> int:
        return self.input_shape[0]

    def build_target(self, arch: str | None = None, num_classes: int | None = None) -> TargetNetwork:
        """A fresh target network (or a peer of another architecture) for this task."""
        t = self.target
        own_weights = arch is None and (t.checkpoint or t.pretrained)
        mean, std, state, what = t.mean, t.std, None, ""
        if own_weights:
            if t.checkpoint and t.pretrained:
                raise SSKTError("target: set checkpoint or pretrained, not both")
            if t.pretrained:
                loaded = load_pretrained(t.arch, t.pretrained, None, self.in_chans, t.allow_download)
                state, what = loaded.module.state_dict(), f"pretrained {t.arch}"
                mean, std = mean or loaded.mean, std or loaded.std  # the weights' own statistics
            else:
                hint = "a target's initial weights must be a state_dict: torch.save(model.state_dict(), path)"
                state, what = extract_state_dict(read_checkpoint(t.checkpoint, trust_hint=hint)), str(t.checkpoint)
        # target.model_kwargs are arguments of the target's architecture: a peer of another one gets none.
        net = TargetNetwork(arch or t.arch, num_classes or self.num_classes, self.in_chans, mean, std,
                            t.stages if arch is None else None, t.model_kwargs if (arch or t.arch) == t.arch else None)
        if state is not None:
            own = net.model.state_dict()
            head = net.classifier_name
            if state.get(f"{head}.weight") is not None and state[f"{head}.weight"].shape != own[f"{head}.weight"].shape:
                # Different label space: keep the backbone, start a new classifier.
                state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
                state.update({k: v for k, v in own.items() if k.startswith(f"{head}.")})
            load_weights(net.model, state, what)
        return net


@dataclass
class StepOutput:
    """A training step's main-head logits and its named losses (the total is their sum).

    ``targets``: the labels ``logits`` are scored against in ``train/acc`` when they are not the
    batch's own (pretext tasks, pseudo-labels); None means ``batch["target"]``.
    ``metrics``: values to log, not to train on (logged as ``train/<name>``, averaged per epoch), e.g.
    each source's current weight.
    """

    logits: Tensor
    losses: dict[str, Tensor]
    targets: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


OptionsT = TypeVar("OptionsT")


def parse_options(cls: type[OptionsT], raw: dict, where: str = "method") -> OptionsT:
    """Build a method's options dataclass, naming unknown keys and every value of the wrong type or out
    of range by its dotted key under ``where`` (``method.alpha: expected a number, got 'abc'``, or for a
    nested section, ``method.sources.0.input_size: ...``)."""
    return validate(cls, raw, where)


class Method(nn.Module):
    """A training method: a target network plus whatever the method adds (heads, frozen sources, peers).

    Subclasses implement :meth:`from_config` and :meth:`training_step` (or, with
    ``automatic_optimization = False``, :meth:`manual_step`). Building is cheap and makes everything a
    checkpoint's weights load into; expensive, data-dependent work only training needs (a soft-label
    cache, a probe fitted on a source, clusters) waits for :meth:`prepare`, which the engine calls before
    training and never when it rebuilds a trained run (evaluate, export). Frozen modules listed by
    :meth:`frozen_modules` stay out of the optimiser and the checkpoints and never leave eval mode
    (a :class:`~sskt.sources.Source` decides for itself, for its legacy BatchNorm mode).
    """

    name: ClassVar[str] = ""  # set by @METHODS.register("name")
    automatic_optimization: ClassVar[bool] = True
    # Whether the method has a loss that needs no label (so ``data.unlabeled`` images teach it something).
    learns_from_unlabeled: ClassVar[bool] = False
    # False for a method that never reads a dataset label (pretext tasks, cluster ids): its labelled and
    # unlabelled images are then one pool, and an epoch is one pass over all of them.
    uses_labels: ClassVar[bool] = True
    # Why the method needs single-label targets, if it does: build_method refuses multi-label data with it.
    single_label_only: ClassVar[str] = ""
    # The options dataclass from_config parses (with parse_options), so check_method can check them early.
    options_class: ClassVar[type | None] = None

    def __init__(self, target: TargetNetwork) -> None:
        super().__init__()
        self.target = target

    @classmethod
    def from_config(cls, options: dict, ctx: BuildContext) -> "Method":
        """The method, every module and buffer a checkpoint loads into in place, no expensive work done
        (that is :meth:`prepare`'s). Random weights are drawn from the global generator, in a fixed order."""
        raise NotImplementedError(f"{cls.__name__} must implement from_config")

    def prepare(self, ctx: BuildContext) -> list[str]:
        """Do the expensive, data-dependent work training needs and a rebuilt run does not (build or open a
        soft-label cache, fit a probe on a source, cluster a teacher's features), for the training data of
        ``ctx``; return lines that report it (what ``sskt cache`` prints). The engine calls it once, after
        :meth:`from_config` and before training; it leaves the global random generator as the build left
        it (so training draws the same numbers). By default there is nothing to do."""
        return []

    @classmethod
    def check_cacheable(cls, options: dict) -> None:
        """Raise a one-line SSKTError unless these options make :meth:`prepare` build an on-disk cache worth
        building ahead of training (``sskt cache``); called before any data is read. By default there is none."""
        raise SSKTError(f"sskt cache works on sskt experiments; this one's method is {cls.name!r}")

    def forward(self, images: Tensor) -> Tensor:
        """Main-head logits for a float batch in [0, 1]; what evaluation scores."""
        return self.target(images)

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement training_step")

    def evaluation_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(logits, labels) the engine scores on an evaluation batch (``image`` float in [0, 1]).

        By default the main head on the batch's labels; a method whose task is not the labels'
        (a pretext task, cluster pseudo-labels) returns its own task's logits and labels.
        """
        return self(batch["image"]), batch["target"]

    def manual_step(self, batch: dict[str, Tensor], module: Any) -> StepOutput:
        """For methods with ``automatic_optimization = False``: do the updates with ``module.optimizers()``
        and ``module.manual_backward``, return what to log. The engine steps the schedules once per epoch."""
        raise NotImplementedError(f"{type(self).__name__} must implement manual_step")

    def frozen_modules(self) -> Sequence[nn.Module]:
        return []

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        for m in self.frozen_modules():
            m.train(False)
            for sub in m.modules():
                if getattr(sub, "decides_own_train_mode", False):
                    sub.train(mode)  # e.g. a Source: eval unless its legacy bn_mode says otherwise
        return self

    def frozen_prefixes(self) -> list[str]:
        """state_dict prefixes of frozen modules (left out of training checkpoints)."""
        frozen = {id(m) for m in self.frozen_modules()}
        return [f"{n}." for n, m in self.named_modules() if id(m) in frozen]

    def soft_label_store(self) -> Any:
        """Soft labels stored per training image, if the method has them once prepared (a
        :class:`~sskt.data.views.SoftLabelStore`, e.g. SSKT's soft-label cache): the engine's
        :class:`~sskt.data.views.TrainingViews` then shows each image its stored view and puts the stored
        soft labels in ``batch["soft_labels"]``. None: fresh random views, no soft labels in the batch."""
        return None

    def configure_optimizers(self, train_cfg: Any) -> Any:
        """Optimisers and schedules in Lightning's format (built with :func:`sskt.optim.make_optimizer` and
        :func:`sskt.optim.make_scheduler`), or None for the run's SGD over :meth:`param_groups`."""
        return None

    def param_groups(self, train_cfg: Any) -> list[dict]:
        """Optimiser parameter groups; by default every trainable parameter at the base learning rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def extra_results(self) -> dict[str, Any]:
        """Method-specific numbers recorded next to the result (e.g. a teacher's accuracy)."""
        return {}


def _set_name(name: str, cls: type[Method]) -> None:
    """``@METHODS.register("x")`` names the class: ``cls.name == "x"`` (the name is written once)."""
    own = cls.__dict__.get("name")
    if own and own != name:
        raise ValueError(f"method class {cls.__name__} is registered as {name!r} but already named {own!r}")
    cls.name = name


METHODS: Registry[type[Method]] = Registry("method", on_register=_set_name)


def build_method(spec: dict, ctx: BuildContext) -> Method:
    """Build a method from ``{"name": ..., **options}``."""
    name, options = _split(spec)
    cls = METHODS.get(name)
    if ctx.multilabel and cls.single_label_only:
        raise SSKTError(f"method {name} is for single-label tasks ({cls.single_label_only})")
    return cls.from_config(options, ctx)


def check_method(spec: dict, where: str = "method") -> None:
    """Check ``{"name": ..., **options}`` (name, option names, types and ranges, nested sections such as
    SSKT's sources included) without building anything, so that a bad option stops a run before any data
    is read. Errors name the dotted key under ``where``."""
    name, options = _split(spec, where)
    cls = METHODS.get(name)
    if cls.options_class is not None:
        parse_options(cls.options_class, options, where)


def check_cacheable(spec: dict) -> None:
    """Check that ``{"name": ..., **options}`` has a cache for ``sskt cache`` to build (see
    :meth:`Method.check_cacheable`), without building anything."""
    name, options = _split(spec)
    METHODS.get(name).check_cacheable(options)


def _split(spec: dict, where: str = "method") -> tuple[str, dict]:
    options = dict(spec)
    name = options.pop("name", None)
    if not name:
        raise SSKTError(f"{where}.name is required (one of: " + ", ".join(METHODS.names()) + ")")
    return name, options


def target_loss_fn(name: str, multilabel: bool, gamma: float = 2.0):
    """The target loss by name; ``auto`` is cross-entropy, or BCE-with-logits for multi-label tasks.

    Call it as ``loss(logits, batch)``: only the batch's labelled rows count (``batch["labeled"]``; all
    rows when absent), and multi-label losses leave out the entries of the batch's ``ignore`` mask (VOC
    "difficult"-only classes), as the mAP does."""
    from functools import partial

    from sskt.losses import TARGET_LOSSES

    if name == "auto":
        name = "bce" if multilabel else "ce"
    if multilabel and name in ("ce", "focal"):
        raise SSKTError(f"target_loss {name!r} is for single-label tasks; use 'bce' or 'focal-bce' for multi-label")
    if not multilabel and name in ("bce", "focal-bce"):
        raise SSKTError(f"target_loss {name!r} is for multi-label tasks; use 'ce' or 'focal'")
    fn = partial(TARGET_LOSSES.get(name), gamma=gamma)

    def loss(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        logits, labeled = labeled_rows(logits, batch)
        if not multilabel:
            return fn(logits, labeled["target"])
        return fn(logits, labeled["target"], labeled.get("ignore"))

    return loss


def labeled_rows(logits: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """The rows of ``logits`` and of the batch's per-image entries that carry labels."""
    mask = batch.get("labeled")
    if mask is None or bool(mask.all()):
        return logits, batch
    keys = ("target", "ignore", "index", "labeled")
    return logits[mask], {k: (v[mask] if k in keys and v is not None else v) for k, v in batch.items()}
