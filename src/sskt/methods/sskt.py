"""SSKT: self-supervised knowledge transfer via loosely supervised auxiliary tasks (Hong et al., WACV 2022).

The target keeps its main head for its own labels and gets one auxiliary head per frozen source.
Each auxiliary head learns to reproduce its source's temperature-softened prediction on the same
augmented view. Loss = target loss + sum over sources of alpha_s * aux_loss(head_s, source_s, T_s).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Annotated, Any, Sequence

import torch
from torch import Tensor, nn

from sskt.data.augment import batch_seed, mix_images
from sskt.errors import SSKTError
from sskt.losses import SOFT_LOSSES, feature_regression
from sskt.evaluation.scoring import evaluate_on_test
from sskt.methods._util import (WEAK_MAIN_TEACHER_TOP1, adapt_source, evaluate_once, make_room_for_adaptation,
                               weak_teacher_warnings)
from sskt.methods.base import METHODS, BuildContext, Method, StepOutput, parse_options, target_loss_fn
from sskt.methods.source_weighting import SourceWeighting, WeightingOptions, scale_gradient, weighting_options
from sskt.models.heads import LinearHead, SharedTransferHeads, TransferModule
from sskt.models.target import Features, TargetNetwork
from sskt.sources.bank import SourceBank
from sskt.sources.cache import SoftLabelCache
from sskt.sources.cache_keys import CacheSpec, cache_spec
from sskt.sources.source import Source, SourceConfig, build_source, source_config
from sskt.validation import Parsed

HEADS = ("linear", "transfer", "main", "auto")
TRUNKS = ("per-source", "shared")
MAX_DEFAULT_WIDTH = 256


@dataclass
class SSKTOptions:
    """Options of the SSKT method (``method: {name: sskt, ...}``); docs/methods.md describes each in full.

    Args:
        sources: the frozen source networks, one :class:`~sskt.sources.source.SourceConfig` each; required
            (docs/sources.md).
        head: which head learns each source's soft labels. ``transfer`` (default): a transfer module per
            source that merges the tapped stages (the paper's); ``linear``: a linear head on the pooled final
            features; ``main``: no auxiliary head, the main head itself learns them, as in KD (only for
            sources that predict the target's classes, e.g. with ``adapt: probe``); ``auto``: each source is
            judged once, before training (:meth:`SSKT.prepare`): one that predicts the target's classes
            teaches the main head if it scores at least ``auto_min_top1`` on the validation split and is left
            out otherwise; a source of other classes (which cannot be judged) teaches its own transfer module.
        transfer_trunk: ``per-source`` (default: a transfer module per source, as in the paper) or ``shared``
            (one set of stage branches for all sources and a linear layer each: many sources for about the
            cost of one; needs ``head: transfer``).
        weighting: ``fixed`` (default: each source's ``alpha``), ``gradsim`` or ``uncertainty`` (set while
            training and logged per epoch as ``train/weight/<source>``), or a mapping ``{mode, every,
            momentum, relative}`` (:mod:`sskt.methods.source_weighting`). ``gradsim`` cannot be combined with
            ``head: auto``.
        transfer_width: the transfer modules' common width D. Default None: the channels of the deepest
            tapped stage, capped at 256 (64 for a CIFAR ResNet, as in the reference; the reference's 1000 for
            ImageNet ResNets costs about 13M parameters per source on a ResNet-50, more than the target).
        aux_loss: ``kd`` (default: the true batch-mean KL, the paper's formula), ``soft-ce`` (the same
            gradient), or ``kd-legacy`` (the reference code's KL divided by the number of source classes).
        target_loss: the main head's loss: ``auto`` (default: cross-entropy, or BCE-with-logits for
            multi-label targets), ``ce``, ``focal``, ``bce`` or ``focal-bce``.
        focal_gamma: gamma of the focal losses (default 2.0).
        temperature: T of every source's soft labels (default 3.0); a source's own ``temperature`` wins.
        alpha: the weight of every source's auxiliary loss (default 0.1); a source's own ``alpha`` wins.
        source_precision: ``auto`` (default: bf16 + channels_last where the hardware is fast at it, with soft
            labels within a mean KL of 1e-3 of fp32 at T = 3; docs/speed.md), ``fp32`` or ``bf16``.
        cache: None (default: live sources) or a soft-label cache, e.g. ``{mode: exact, views: 8, topk: 10}``
            (:class:`~sskt.sources.cache_keys.CacheSpec`), built (or opened) by :meth:`SSKT.prepare` before
            training; then no source runs while training.
        mixup: 0 (default: off) or the Beta parameter of function matching (Beyer et al. 2022, "Knowledge
            distillation: a good teacher is patient and consistent"; 1.0 is usual): the auxiliary losses are
            computed on mixup images of each batch (:func:`~sskt.data.augment.mix_images`), which the target
            and the live sources see alike; the target loss keeps the batch's own images. Needs live sources
            (no ``cache``) and a long schedule.
        auto_min_top1: the bar of ``head: auto``: a validation top-1 in %, 0 to 100 (default 50.0).
    """

    sources: Annotated[list[SourceConfig], Parsed(source_config, each=True)] = field(default_factory=list)
    head: str = "transfer"
    transfer_trunk: str = "per-source"
    weighting: Annotated[WeightingOptions, Parsed(weighting_options)] = field(default_factory=WeightingOptions)
    transfer_width: int | None = None
    aux_loss: str = "kd"
    target_loss: str = "auto"
    focal_gamma: float = 2.0
    temperature: float = 3.0
    alpha: float = 0.1
    source_precision: str = "auto"
    cache: Annotated[CacheSpec | None, Parsed(cache_spec)] = None
    mixup: float = 0.0
    auto_min_top1: float = WEAK_MAIN_TEACHER_TOP1

    def __post_init__(self) -> None:
        if not self.sources:
            raise SSKTError("method sskt needs at least one source under method.sources")
        if self.head not in HEADS:
            raise SSKTError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.transfer_trunk not in TRUNKS:
            raise SSKTError(f"transfer_trunk must be one of {TRUNKS}, got {self.transfer_trunk!r}")
        if self.head == "auto" and self.weighting.mode == "gradsim":
            raise SSKTError("head: auto judges each source before training and weighting: gradsim while training; "
                            "use one of them (head: auto alone is the safer choice: gradsim can switch a good source "
                            "off too; see docs/methods.md)")
        if not 0.0 <= self.auto_min_top1 <= 100.0:
            raise SSKTError(f"auto_min_top1 is a top-1 accuracy in %, 0 to 100; got {self.auto_min_top1}")
        if self.transfer_trunk == "shared" and self.head != "transfer":
            raise SSKTError(f"transfer_trunk: shared needs head: transfer, got head: {self.head}")
        if self.temperature <= 0:
            raise SSKTError(f"temperature must be > 0, got {self.temperature}")
        if self.alpha < 0:
            raise SSKTError(f"alpha must be >= 0, got {self.alpha}")
        if self.mixup < 0:
            raise SSKTError(f"mixup must be >= 0 (0 = off; 1.0 is usual), got {self.mixup}")
        if self.mixup and self.cache is not None:
            raise SSKTError("method.mixup needs the sources live (every mixed image is new); drop method.cache")
        SOFT_LOSSES.get(self.aux_loss)


def _gated(x: Tensor, gate: float | None) -> Tensor:
    return x if gate is None else scale_gradient(x, gate)


def _width(stage_shapes: list[tuple[int, ...]], width: int | None) -> int:
    return min(stage_shapes[-1][0], MAX_DEFAULT_WIDTH) if width is None else width


def make_shared_heads(target: TargetNetwork, example: Tensor, classes: dict[str, int],
                      width: int | None) -> SharedTransferHeads:
    """One transfer trunk for all sources, sized from the target's features on ``example``."""
    _, stage_shapes = target.feature_shapes(example)
    return SharedTransferHeads([s[0] for s in stage_shapes], _width(stage_shapes, width), classes,
                               dims=len(stage_shapes[-1]) - 1)


def make_head(kind: str, target: TargetNetwork, example: Tensor, num_classes: int, width: int | None) -> nn.Module:
    """An auxiliary head of ``kind`` sized from the target's features on ``example``."""
    pooled, stage_shapes = target.feature_shapes(example)
    if kind == "linear":
        return LinearHead(pooled, num_classes)
    return TransferModule([s[0] for s in stage_shapes], _width(stage_shapes, width), num_classes, dims=len(stage_shapes[-1]) - 1)


@METHODS.register("sskt")
class SSKT(Method):
    """Target + one auxiliary head per frozen source (any number, any architecture, any label space).

    Example:
        >>> from sskt.models.factory import create_model
        >>> target = TargetNetwork("cifar_resnet20", 10)
        >>> src = Source("imnet", create_model("cifar_resnet20", 1000), 1000, input_size=32)
        >>> m = SSKT(target, [src], SSKTOptions(sources=[{"name": "imnet"}]), example=torch.rand(1, 3, 32, 32))
        >>> out = m.training_step({"image": torch.rand(4, 3, 32, 32), "target": torch.tensor([0, 1, 2, 3])})
        >>> sorted(out.losses)
        ['aux/imnet', 'target']
    """

    options_class = SSKTOptions
    learns_from_unlabeled = True

    def __init__(self, target: TargetNetwork, sources: Sequence[Source], options: SSKTOptions,
                 example: Tensor, multilabel: bool = False,
                 per_source: Sequence[tuple[float, float]] | None = None) -> None:
        super().__init__(target)
        self.options = options
        self.target_loss = target_loss_fn(options.target_loss, multilabel, options.focal_gamma)
        self.multilabel = multilabel
        self.aux_loss = SOFT_LOSSES.get(options.aux_loss)
        self.bank = SourceBank(sources, options.source_precision)
        # (temperature, alpha) per source, in source order.
        self.weights = list(per_source or [(options.temperature, options.alpha)] * len(sources))
        if options.head == "main":
            # The sources' soft labels teach the main head itself (KD-style): only for sources that predict
            # the target's own classes, e.g. adapted with adapt: probe.
            foreign = [s.name for s in sources if s.num_classes != target.num_classes or s.outputs == "features"]
            if foreign or multilabel:
                raise SSKTError(f"head: main needs single-label sources that predict the target's {target.num_classes} "
                                f"classes; {foreign or 'this multi-label task'} do(es) not: use adapt: probe on them, "
                                f"or head: transfer / linear")
            self.heads = nn.ModuleDict()
        elif options.transfer_trunk == "shared":
            self.heads = make_shared_heads(target, example, {s.name: s.num_classes for s in sources},
                                           options.transfer_width)
        else:  # head: auto starts as transfer: prepare() moves the judged sources to the main head or out
            kind = "transfer" if options.head == "auto" else options.head
            self.heads = nn.ModuleDict(
                {s.name: make_head(kind, target, example, s.num_classes, options.transfer_width) for s in sources})
        # The sources whose soft labels the main head learns (all with head: main; chosen in prepare() for auto),
        # and those head: auto left out (judged too weak to teach).
        self.main_taught: list[str] = [s.name for s in sources] if options.head == "main" else []
        self.left_out: list[str] = []
        self.weighting = SourceWeighting([s.name for s in sources], [a for _, a in self.weights], options.weighting,
                                         gated_in_graph=options.head != "main")
        self.cache = None  # a SoftLabelCache once attach_cache() is called: then sources never run in training
        self.to_adapt: list[str] = []  # sources with adapt: probe / features: prepare() fits them
        self.adapted: dict[str, dict] = {}  # what adapting measured, per adapted source
        self._test_data = None  # kept out of the module state: only for extra_results

    @classmethod
    def from_config(cls, options: dict, ctx: BuildContext) -> "SSKT":
        opts = parse_options(SSKTOptions, options)
        cfgs = opts.sources
        sources = [build_source(c, ctx.in_chans) for c in cfgs]
        to_adapt: list[str] = []
        for c, src in zip(cfgs, sources):
            if c.adapt != "none":
                make_room_for_adaptation(src, ctx, c.adapt)  # the probe (or standardisation) is fitted in prepare()
                to_adapt.append(src.name)
        per_source = [(c.temperature or opts.temperature, opts.alpha if c.alpha is None else c.alpha) for c in cfgs]
        example = torch.rand(2, *ctx.input_shape)
        method = cls(ctx.build_target(), sources, opts, example, ctx.multilabel, per_source)
        method.to_adapt = to_adapt
        method._test_data = ctx.test_data
        return method

    @classmethod
    def check_cacheable(cls, options: dict) -> None:
        if not options.get("cache"):
            raise SSKTError("this experiment has no method.cache; add e.g. method.cache.mode=exact (or clean)")

    def prepare(self, ctx: BuildContext) -> list[str]:
        """Fit the probes of the sources with ``adapt: probe`` (the standardisation of those with ``adapt:
        features``), then build (or resume, or check) the
        soft-label cache, if there is one, of ``ctx``'s training images. Returns the cache's report."""
        for src in self.bank.sources:
            if src.name in self.to_adapt and src.name not in self.adapted:
                laid_out = self.bank.precision != "fp32"  # the bank put the source in channels_last
                if laid_out:  # fitted on the weights as built (as before the bank existed): the same probe
                    src.to(memory_format=torch.contiguous_format)
                self.adapted[src.name] = adapt_source(src, ctx)
                if laid_out:
                    src.to(memory_format=torch.channels_last)
        if self.options.head == "main" and self.options.weighting.mode == "fixed":
            advice = ("use head: auto (it leaves a source below the bar out) or drop that source yourself "
                      "(method.weighting=gradsim switches it off, but can switch a good source off too)")
            for line in weak_teacher_warnings(self.adapted, advice):
                print(line, file=sys.stderr, flush=True)
        if self.options.head == "auto":
            self.main_taught, self.left_out = self.judge_sources(ctx)
            for name in self.main_taught + self.left_out:  # unused transfer modules: out of the optimiser (and DDP)
                self.heads[name].requires_grad_(False)
            for name in self.left_out:
                self.weighting.leave_out(name)
        if self.options.cache is None or len(self.left_out) == len(self.bank.sources):
            return []  # no cache, or nothing left to cache (every source left out)
        if ctx.train_data is None:
            raise SSKTError("method.cache needs the training data to build the soft-label cache")
        padding = ctx.data.crop_padding if ctx.data is not None else 4
        flip = ctx.data.flip if ctx.data is not None else True
        self.attach_cache(self.options.cache, ctx.train_data.images, ctx.train_data.targets, padding, flip)
        return self.cache.report()

    def judge_sources(self, ctx: BuildContext) -> tuple[list[str], list[str]]:
        """``head: auto``: (the sources that teach the main head, those left out). Each source that predicts
        the target's classes (adapted with ``adapt: probe``, or trained on them in the same order) teaches the
        main head if it scores at least ``auto_min_top1`` on ``ctx``'s validation split, and is left out
        otherwise. Prints one line per source saying what it teaches."""
        eligible = [s for s in self.bank.sources if s.outputs == "logits" and s.num_classes == self.target.num_classes
                    and not self.multilabel]
        if eligible and ctx.val_data is None:
            raise SSKTError("head: auto judges each source on the validation split, and this run has none: set "
                            "data.val_per_class (e.g. 50), or choose head: main / transfer yourself")
        chosen, left_out = [], []
        for src in self.bank.sources:
            if src in eligible:
                top1 = self.adapted.get(src.name, {}).get("val_top1")
                if top1 is None:  # a source trained on the target's classes, not adapted: measure it
                    top1 = evaluate_on_test(src, ctx.val_data)
                passed = top1 >= self.options.auto_min_top1
                print(f"sskt: head: auto: source {src.name!r} scores {top1:.1f}% on the validation split "
                      f"({'at least' if passed else 'below'} {self.options.auto_min_top1:g}%): "
                      f"{'it teaches the main head' if passed else 'left out (a weak teacher costs accuracy)'}",
                      file=sys.stderr, flush=True)
                (chosen if passed else left_out).append(src.name)
            else:
                print(f"sskt: head: auto: source {src.name!r} does not predict the target's classes: it teaches its "
                      f"own transfer module", file=sys.stderr, flush=True)
        return chosen, left_out

    def attach_cache(self, spec: "dict | CacheSpec", images: Tensor, targets: Tensor, padding: int, flip: bool,
                     **build_options) -> None:
        """Open (building or resuming if needed) the soft-label cache of these training images."""
        temperatures = {s.name: t for s, (t, _) in zip(self.bank.sources, self.weights)}
        # A source head: auto left out is never asked: none of its soft labels are built or read.
        bank = self.bank if not self.left_out else SourceBank(
            [s for s in self.bank.sources if s.name not in self.left_out], self.bank.precision)
        self.cache = SoftLabelCache.open_or_build(bank, images, targets, cache_spec(spec), temperatures,
                                                  padding, flip, **build_options)

    def soft_label_store(self) -> "SoftLabelCache | None":
        """The soft-label cache once prepared: the engine's views replay its stored views and attach its
        soft labels to each batch (:mod:`sskt.data.views`)."""
        return self.cache

    @property
    def sources(self) -> list[Source]:
        return list(self.bank.sources)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.bank]

    def soft_labels(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every source's logits on this batch's view: the batch's stored ones (``batch["soft_labels"]``, put
        there from the cache by :class:`~sskt.data.views.TrainingViews`), else computed by the live sources."""
        if "soft_labels" in batch:
            return batch["soft_labels"]
        if self.cache is not None:
            raise SSKTError("SSKT has a soft-label cache but this batch carries no soft labels: prepare training "
                            "batches with sskt.data.views.TrainingViews(..., store=method.soft_label_store())")
        return self.bank(batch["image"], skip=self.left_out)

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        feats = self.target.forward_features(batch["image"])
        target_loss = self.target_loss(feats.logits, batch)
        if self.options.mixup:  # function matching: target and sources on the same new, mixed images
            mixed, _, _ = mix_images(batch["image"], self.options.mixup, batch_seed(batch))
            taught, teacher = self.target.forward_features(mixed), self.bank(mixed, skip=self.left_out)
        else:
            taught, teacher = feats, self.soft_labels(batch)
        predicted = self.aux_predictions(taught)
        raw = {src.name: self.source_loss(src, predicted[src.name], teacher[src.name], temperature)
               if src.name not in self.left_out else feats.logits.new_zeros(())
               for src, (temperature, _) in zip(self.bank.sources, self.weights)}
        self.weighting.measure(target_loss, raw, self.shared_parameters())
        weighted, effective = self.weighting(raw)
        losses = {"target": target_loss, **{f"aux/{name}": loss for name, loss in weighted.items()}}
        return StepOutput(feats.logits, losses, metrics={f"weight/{n}": w for n, w in effective.items()})

    def source_loss(self, src: Source, predicted: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """What one auxiliary head is taught: the source's softened prediction (``aux_loss``), or, for a
        source that outputs its embedding (``adapt: features``), that embedding (:func:`feature_regression`)."""
        if src.outputs == "features":
            return feature_regression(predicted, teacher)
        return self.aux_loss(predicted, teacher, temperature)

    def aux_predictions(self, feats: Features) -> dict[str, Tensor]:
        """Each source's auxiliary prediction: its head's (or the main head's, with ``head: main``). With
        gradsim, the gradient each head sends back into the layers it shares is scaled by its gate."""
        if len(self.main_taught) == len(self.bank.sources):
            return {src.name: feats.logits for src in self.bank.sources}
        gates = self.weighting.gates() or {}
        if isinstance(self.heads, SharedTransferHeads):
            merged = self.heads.merge(feats.stages)
            return {name: fc(_gated(merged, gates.get(name))) for name, fc in self.heads.fcs.items()}
        return {name: feats.logits if name in self.main_taught else
                head(_gated(feats.pooled, gates.get(name)), [_gated(s, gates.get(name)) for s in feats.stages])
                for name, head in self.heads.items() if name not in self.left_out}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The layers every loss trains, where gradsim compares gradients: the target's deepest stage."""
        return list(self.target.model.get_submodule(self.target.stage_names[-1]).parameters())

    def extra_results(self) -> dict[str, Any]:
        """For each source adapted to the target's labels: the probe's penalty, validation and test top-1
        (the adapted source itself as a classifier: a reference a user could deploy instead); with automatic
        weighting, each source's final weight."""
        out: dict[str, Any] = {}
        if self.options.weighting.mode != "fixed":
            out["final_weight"] = self.weighting.effective()
        if self.options.head == "auto":
            out["teaches"] = {s.name: "main" if s.name in self.main_taught else "nothing" if s.name in self.left_out
                              else "transfer" for s in self.bank.sources}
        for src in self.bank.sources:
            if src.name in self.adapted:
                info = dict(self.adapted[src.name])
                if src.outputs == "logits":  # an adapted classifier; an embedding has no top-1
                    info["test_top1"] = evaluate_once(src, self._test_data)
                out[f"adapted/{src.name}"] = info
        return out

