"""Adapting a source to the target: its classifier replaced by a linear probe, or removed.

A network trained on a foreign label space (ImageNet's 1,000 classes) often has features in which
the target's classes are close to linearly separable, while its own softened predictions carry that
knowledge only through 1,000 classes the target never sees. ``adapt: probe`` on a source fits a
multinomial logistic regression on the source's penultimate features of the target's labelled
training images (and their mirror images; the validation split, when there is one, picks the L2
penalty) and puts it in place of the source's classifier. The source then predicts the target's
classes, and its soft labels on every image, labelled or not, are what the auxiliary head learns:
the "distil a big network adapted with few labels into a small one on unlabelled images" recipe of
Chen et al. 2020 (SimCLRv2, "Big Self-Supervised Models are Strong Semi-Supervised Learners").

``adapt: features`` keeps what the source knows in its features whole: its classifier is replaced by a
per-feature standardisation (fitted on the training images, no labels), so the source outputs its
penultimate embedding and the auxiliary head regresses it (:func:`sskt.losses.feature_regression`):
FitNets' hint (Romero et al., ICLR 2015) on the source's final embedding, for any label space.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from sskt.data.augment import to_float
from sskt.errors import SSKTError
from sskt.evaluation.probes import linear_probe
from sskt.models.factory import classifier_name
from sskt.progress import Progress
from sskt.sources.source import Source

WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 0.3, 1.0)  # L2 penalties tried when a validation split can choose


@torch.no_grad()
def features_and_logits(src: Source, images: Tensor, batch_size: int = 256,
                        device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """One frozen pass of ``src`` over uint8 or [0, 1] ``images``: the (N, D) float32 inputs of its classifier
    (its last ``nn.Linear``; for a clustered source, its teacher's features) and its (N, Z) logits, both on the CPU. ``device``: where to run (default: where
    the source is)."""
    captured: list[Tensor] = []
    teacher = getattr(src.network, "teacher", None)  # a clustered source: its teacher's features (e.g. HOG)
    if isinstance(teacher, nn.Module) and not any(isinstance(m, nn.Linear) for m in src.network.modules()):
        hook = teacher.register_forward_hook(lambda _m, _a, out: captured.append(out.detach().float().flatten(1).cpu()))
    else:
        try:
            head = dict(src.network.named_modules())[classifier_name(src.network)]
        except SSKTError:
            raise SSKTError(f"source {src.name!r} has no nn.Linear classifier, so its penultimate features can't be "
                            f"read (adapt: probe, rank-sources)") from None
        hook = head.register_forward_pre_hook(
            lambda _m, args: captured.append(args[0].detach().float().flatten(1).cpu()))
    if device is not None:
        src.to(device)
    was_training = src.training
    src.eval()
    logits: list[Tensor] = []
    try:
        with Progress(len(images), f"features of source {src.name!r}", "images") as bar:
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size]
                logits.append(src(to_float(batch if device is None else batch.to(device))).float().cpu())
                bar.update(len(batch))
    finally:
        hook.remove()
        src.train(was_training)
    return torch.cat(captured), torch.cat(logits)


def penultimate_features(src: Source, images: Tensor, batch_size: int = 256) -> Tensor:
    """(N, D) float32 inputs of the source's classifier (its last ``nn.Linear``) on uint8 or [0, 1] images."""
    return features_and_logits(src, images, batch_size)[0]


def adapt_with_probe(src: Source, train: Any, val: Any = None,
                     weight_decays: Sequence[float] = WEIGHT_DECAYS) -> dict[str, float]:
    """Replace ``src``'s classifier by a linear probe fitted on ``train`` (an ImageTensorDataset of
    labelled images; single-label). Returns the chosen L2 penalty and, with a validation split (which
    chooses it), the adapted source's validation top-1 (%).

    Example:
        >>> from sskt.models.factory import create_model
        >>> from sskt.data.tensor_dataset import ImageTensorDataset
        >>> src = Source("s", create_model("cifar_resnet20", 100), 100, input_size=32)
        >>> data = ImageTensorDataset(torch.randint(0, 255, (20, 3, 32, 32), dtype=torch.uint8), torch.arange(20) % 4)
        >>> info = adapt_with_probe(src, data)
        >>> src.num_classes, src(torch.rand(2, 3, 32, 32)).shape
        (4, torch.Size([2, 4]))
    """
    weight, bias, info = _fit_probe(src, train, val, weight_decays)
    with torch.random.fork_rng(devices=[]):
        linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    linear.requires_grad_(False)
    _set_module(src.network, classifier_name(src.network), linear.to(next(src.network.parameters()).device))
    src.num_classes = int(train.targets.max()) + 1
    return info


def make_room_for_probe(src: Source, train_targets: Tensor, val_targets: Tensor | None = None) -> None:
    """Put an untrained classifier of the shape ``adapt_with_probe(src, train, val)`` gives in place of
    ``src``'s (labels are enough to know it), for :func:`fit_probe_in_place` to fill in later. Draws
    nothing from the global random generator: what is built next (the target) depends on the run's seed only.
    """
    if train_targets.ndim != 1:
        raise SSKTError(f"source {src.name!r}: adapt: probe is for single-label targets")
    name = _classifier_of(src)
    in_features = src.network.get_submodule(name).in_features
    scored = val_targets if val_targets is not None else train_targets[:1]  # what linear_probe is scored on
    num_outputs = int(max(train_targets.max(), scored.max())) + 1  # linear_probe's class count
    with torch.random.fork_rng(devices=[]):
        linear = nn.Linear(in_features, num_outputs).requires_grad_(False)
    _set_module(src.network, name, linear.to(next(src.network.parameters()).device))
    src.num_classes = int(train_targets.max()) + 1


def fit_probe_in_place(src: Source, train: Any, val: Any = None,
                       weight_decays: Sequence[float] = WEIGHT_DECAYS) -> dict[str, float]:
    """Fit the probe :func:`make_room_for_probe` made room for and write it into that classifier: the
    source ends up as :func:`adapt_with_probe` leaves it. Returns what ``adapt_with_probe`` returns."""
    weight, bias, info = _fit_probe(src, train, val, weight_decays)
    head = src.network.get_submodule(classifier_name(src.network))
    if tuple(head.weight.shape) != tuple(weight.shape):
        raise SSKTError(f"source {src.name!r}: the probe's weights are {tuple(weight.shape)} but the classifier made "
                        f"room for them {tuple(head.weight.shape)} (make_room_for_probe saw other labels)")
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return info


def _classifier_of(src: Source, adapt: str = "probe") -> str:
    try:
        return classifier_name(src.network)
    except SSKTError:
        raise SSKTError(f"source {src.name!r} has no nn.Linear classifier, so adapt: {adapt} can't replace it") from None


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature of a (B, D) input: what ``adapt: features`` puts in place of a source's
    classifier, so that the source outputs its penultimate embedding with every feature at zero mean and unit
    variance over the target's training images (an identity until :func:`fit_standardizer_in_place`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1).float() - self.mean) / self.std


def make_room_for_features(src: Source) -> None:
    """``adapt: features``: replace ``src``'s classifier (its last ``nn.Linear``) by a :class:`Standardize` of its
    input, so that the source outputs its D-dimensional penultimate embedding instead of class logits
    (``src.outputs == "features"``, ``src.num_classes == D``). Draws no random numbers."""
    name = _classifier_of(src, "features")
    dim = src.network.get_submodule(name).in_features
    _set_module(src.network, name, Standardize(dim).to(next(src.network.parameters()).device))
    src.num_classes = dim
    src.outputs = "features"


@torch.no_grad()
def fit_standardizer_in_place(src: Source, images: Tensor, batch_size: int = 256) -> dict[str, float]:
    """Set the :class:`Standardize` that :func:`make_room_for_features` put in ``src`` to the per-feature mean and
    std of its embedding on uint8 or [0, 1] ``images`` (no labels needed). A feature that barely varies gets
    its std raised to a tenth of the mean std, so that it cannot dominate the regression loss. Returns the
    number of images, the embedding's size and how many features were (nearly) constant."""
    head = src.network.get_submodule(_standardizer_of(src))
    head.mean.zero_()
    head.std.fill_(1.0)
    was_training = src.training
    src.eval()
    device = head.mean.device
    try:
        feats = torch.cat([src(to_float(images[i:i + batch_size]).to(device)).float().cpu()
                           for i in range(0, len(images), batch_size)])
    finally:
        src.train(was_training)
    mean, std = feats.mean(0), feats.std(0)
    floor = 0.1 * float(std.mean())
    head.mean.copy_(mean)
    head.std.copy_(std.clamp_min(max(floor, 1e-6)))
    return {"images": float(len(images)), "dim": float(feats.shape[1]), "constant_features": float((std < floor).sum())}


def _standardizer_of(src: Source) -> str:
    names = [n for n, m in src.network.named_modules() if isinstance(m, Standardize)]
    if not names:
        raise SSKTError(f"source {src.name!r} was not adapted with adapt: features (no Standardize module)")
    return names[-1]


def _fit_probe(src: Source, train: Any, val: Any, weight_decays: Sequence[float]
               ) -> tuple[Tensor, Tensor, dict[str, float]]:
    """The probe's classifier on ``src``'s penultimate features, folded into one Linear's (weight, bias),
    and what it measured."""
    if train.targets.ndim != 1:
        raise SSKTError(f"source {src.name!r}: adapt: probe is for single-label targets")
    x = torch.cat([penultimate_features(src, train.images), penultimate_features(src, train.images.flip(-1))])
    y = torch.cat([train.targets, train.targets]).long()
    val_x = penultimate_features(src, val.images) if val is not None else None
    candidates = list(weight_decays) if val is not None else [1e-3]
    best = None
    for wd in candidates:
        res = linear_probe(x, y, val_x if val_x is not None else x[:1], val.targets if val is not None else y[:1],
                           weight_decay=wd, max_iter=200)
        if best is None or (val is not None and res.test_top1 > best[1].test_top1):
            best = (wd, res)
    assert best is not None
    wd, probe = best
    # Fold the probe's standardisation into one Linear layer: W (x - m) / s + b = (W / s) x + (b - W m / s).
    weight = probe.classifier.weight / probe.std[None, :]
    bias = probe.classifier.bias - (probe.classifier.weight * (probe.mean / probe.std)[None, :]).sum(1)
    info: dict[str, float] = {"weight_decay": wd, "train_images": float(len(train))}
    if val is not None:
        info["val_top1"] = round(100.0 * best[1].test_top1, 4)
    return weight, bias, info


def reshape_classifier(src: Source, num_classes: int) -> None:
    """Give ``src`` an (untrained) classifier of ``num_classes`` outputs: the shape an adapted source has,
    for rebuilding a trained run (evaluate, export) where no source runs and nothing is fitted."""
    name = classifier_name(src.network)
    old = src.network.get_submodule(name)
    _set_module(src.network, name, nn.Linear(old.in_features, num_classes).requires_grad_(False))
    src.num_classes = num_classes


def _set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
