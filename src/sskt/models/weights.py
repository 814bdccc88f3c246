"""Weight files in and out of networks: reading checkpoints safely (told apart from junk), state-dict
surgery, loading by architecture name or self-describing model file, and file digests. Every weight
load in sskt goes through here."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.models.factory import classifier_name, create_model, model_spec
from sskt.models.pretrained import resolve_pretrained
from sskt.models.target import EXPORT_FORMAT

# An sskt training checkpoint keeps the target's weights under this prefix (beside heads and optimiser).
_TARGET_PREFIX = "method.target.model."


@dataclass
class LoadedNetwork:
    """A network with what is known about its inputs (None where the checkpoint doesn't say)."""

    module: nn.Module
    arch: str | None
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    input_size: int | None
    classes: list[str] | None = None
    weights_file: Path | None = None  # where pretrained weights were read from (checkpoint: the checkpoint)
    registered: bool = False  # a copy of a module registered with its weights (sskt.register_model)
    embedding: bool = False  # its output is an embedding (a registered feature extractor), not class logits


# How the files torch.save writes begin: a zip archive (PyTorch >= 1.6) or a pickle (older, or
# _use_new_zipfile_serialization=False). Anything else is not a checkpoint at all.
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _sniff(path: Path) -> None:
    """One line for a file that is not a PyTorch checkpoint (an HTML page, a truncated or random file)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(_CHECKPOINT_MAGIC):
        return
    text = head.lstrip().lower()
    kind = ("an HTML page (a download link saved instead of the file?)" if text.startswith((b"<!doctype", b"<html"))
            else "an empty file" if not head else f"a file starting with {head[:16]!r}")
    raise SSKTError(f"{path} is not a PyTorch checkpoint: it is {kind}; download or save it again "
                    f"(torch.save(model.state_dict(), path))")


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False,
                    trust_hint: str = "if you trust it, set trust_pickle: true for this source") -> Any:
    """``torch.load`` on the CPU with ``weights_only=True`` unless the user trusts the file.

    A whole pickled module needs ``trust_pickle`` because unpickling can run arbitrary code. A file that
    is no checkpoint at all (HTML, random bytes) is told apart from one that holds code-carrying pickles.
    ``trust_hint`` says how the caller's user can trust the file (or what to do where they cannot).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SSKTError(f"checkpoint not found: {path}; check the path")
    _sniff(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise SSKTError(f"{path} holds pickled Python objects (e.g. a whole model), which can run code when "
                            f"loaded; {trust_hint}") from None
        raise SSKTError(f"{path} is not a readable PyTorch checkpoint ({str(err).splitlines()[0]}); "
                        f"re-save it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise SSKTError(f"{path} is not a readable PyTorch checkpoint ({str(err).splitlines()[0]}); re-save it") from None


def extract_state_dict(obj: Any) -> dict[str, Tensor]:
    """The tensor dict inside a checkpoint: under ``state_dict``/``model``/``net`` or at the top,
    with wrapper prefixes such as ``module.`` removed."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise SSKTError("checkpoint holds no state_dict of tensors; save model.state_dict() or pass a whole module")
    state = dict(obj)
    if any(k.startswith(_TARGET_PREFIX) for k in state):
        state = {k[len(_TARGET_PREFIX):]: v for k, v in state.items() if k.startswith(_TARGET_PREFIX)}
    # DataParallel / DDP save every key with "module." in front.
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """``load_state_dict`` that names missing, unexpected and mis-shaped keys in one line."""
    own = model.state_dict()
    # Checkpoints from PyTorch < 0.4.1 have no BatchNorm step counters; they don't affect outputs.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatch: {few(shapes)}" if shapes else ""]
        raise SSKTError(f"{what} does not fit the architecture: " + "; ".join(p for p in parts if p)
                        + "; check the arch name or the checkpoint")
    model.load_state_dict(state)


def load_network(
    arch: str | None,
    checkpoint: str | os.PathLike | None,
    num_classes: int | None = None,
    in_chans: int = 3,
    trust_pickle: bool = False,
    pretrained: bool | str = False,
    allow_download: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
) -> LoadedNetwork:
    """Build ``arch`` and load ``checkpoint`` (or its ``pretrained`` weights) into it.

    The checkpoint may be a state_dict (with or without a ``module.`` prefix, at the top or under
    ``state_dict``), an sskt model file (``sskt export`` / ``sskt pretrain``; ``arch`` may then be
    omitted), or a whole pickled module (only with ``trust_pickle``). Without a checkpoint, an ``arch``
    registered with its weights (``sskt.register_model(name, module)``) gives a copy of that module. The
    number of classes is read from the checkpoint's classifier when not given. ``pretrained`` (True or a
    weights name) takes the architecture's published weights instead
    (:func:`sskt.models.pretrained.resolve_pretrained`; downloads only with ``allow_download`` or
    ``SSKT_ALLOW_DOWNLOAD=1``). ``model_kwargs``: more arguments for the architecture, as
    :func:`~sskt.models.factory.create_model` takes them (timm's ``drop_rate`` ...); a pickled module or a
    registered one is built already and takes none.

    Example:
        >>> net = load_network("cifar_resnet32", "../shared/weights/cifar10-resnets/resnet32-d509ac18.th")  # doctest: +SKIP
        >>> net.num_classes, net.input_size
        (10, 32)
    """
    if pretrained:
        if checkpoint is not None:
            raise SSKTError(f"{checkpoint}: set checkpoint or pretrained, not both")
        if arch is None:
            raise SSKTError("pretrained: true needs an arch, e.g. arch: efficientnet_lite0")
        loaded = load_pretrained(arch, pretrained, num_classes, in_chans, allow_download)
        if model_kwargs:  # the published weights, in the architecture built with the user's arguments
            module = create_model(arch, loaded.num_classes, in_chans, model_kwargs)
            load_weights(module, loaded.module.state_dict(), f"pretrained {arch}")
            loaded = dataclasses.replace(loaded, module=module.eval())
        return loaded
    if checkpoint is None and arch is not None and model_spec(arch).own_weights is not None:
        if model_kwargs:
            raise SSKTError(f"model_kwargs: {arch!r} is registered as a module with its weights, built already; "
                            f"drop model_kwargs (or register a factory that takes them)")
        return _registered(arch, num_classes, in_chans)
    if checkpoint is None:
        if arch is None or num_classes is None:
            raise SSKTError("a source needs a checkpoint, or an arch and num_classes for random weights")
        spec = model_spec(arch)
        return LoadedNetwork(create_model(arch, num_classes, in_chans, model_kwargs), arch, num_classes, spec.mean,
                             spec.std, spec.input_size)
    obj = read_checkpoint(checkpoint, trust_pickle)
    if isinstance(obj, nn.Module):
        if model_kwargs:
            raise SSKTError(f"model_kwargs: {checkpoint} is a whole pickled module, built already; drop model_kwargs")
        n = num_classes or getattr(_last_linear(obj), "out_features", None)
        return LoadedNetwork(obj, arch, int(n or 0), None, None, None)  # 0: no classifier found
    if isinstance(obj, Mapping) and obj.get("format") == EXPORT_FORMAT:
        if arch is not None and arch != obj["arch"]:
            raise SSKTError(f"{checkpoint} holds a {obj['arch']} but arch is {arch!r}; drop arch or fix it")
        arch = obj["arch"]
        module = create_model(arch, obj["num_classes"], obj["in_chans"], model_kwargs)
        load_weights(module, obj["state_dict"], str(checkpoint))
        return LoadedNetwork(module, arch, obj["num_classes"], tuple(obj["mean"]), tuple(obj["std"]),
                             obj.get("input_size") or model_spec(arch).input_size, obj.get("classes"))
    if arch is None:
        raise SSKTError(f"{checkpoint} is a plain state_dict: name its architecture with arch")
    state = extract_state_dict(obj)
    spec = model_spec(arch)
    if num_classes is None:
        head = classifier_name(create_model(arch, 2, in_chans, model_kwargs))
        if f"{head}.weight" not in state:
            raise SSKTError(f"{checkpoint} has no {head}.weight for a {arch}; set num_classes or check arch")
        num_classes = int(state[f"{head}.weight"].shape[0])
    module = create_model(arch, num_classes, in_chans, model_kwargs)
    load_weights(module, state, str(checkpoint))
    return LoadedNetwork(module, arch, num_classes, spec.mean, spec.std, spec.input_size)


def _registered(arch: str, num_classes: int | None, in_chans: int) -> LoadedNetwork:
    """A copy of the module registered as ``arch`` with its own weights (a feature extractor: behind an identity
    ``fc``, so that it outputs its embedding until ``adapt`` replaces ``fc``)."""
    spec = model_spec(arch)
    own = spec.own_weights
    assert own is not None
    if num_classes is not None and num_classes != own.outputs and not own.features:
        raise SSKTError(f"{arch!r} is registered with its own weights and predicts {own.outputs} classes, not "
                        f"num_classes={num_classes}; drop num_classes")
    with torch.random.fork_rng(devices=[]):  # the placeholder classifier draws nothing the run's seed would miss
        module = create_model(arch, own.outputs, in_chans)
    if own.features:
        with torch.no_grad():
            module.fc.weight.copy_(torch.eye(own.outputs))
            module.fc.bias.zero_()
    return LoadedNetwork(module, arch, own.outputs, spec.mean, spec.std, spec.input_size, registered=True,
                         embedding=own.features)


def load_pretrained(arch: str, which: bool | str = True, num_classes: int | None = None, in_chans: int = 3,
                    allow_download: bool = False) -> LoadedNetwork:
    """``arch`` with its published weights and label space (see :mod:`sskt.models.pretrained`)."""
    if in_chans != 3:
        raise SSKTError(f"pretrained {arch} takes 3-channel images; set data.grayscale_to_rgb: true")
    net = resolve_pretrained(arch, which, allow_download)
    if net.state_dict is not None:
        load_weights(net.module, net.state_dict, net.origin)
    if num_classes is not None and num_classes != net.num_classes:
        raise SSKTError(f"pretrained {arch} has {net.num_classes} classes, not num_classes={num_classes}; "
                        f"drop num_classes")
    return LoadedNetwork(net.module.eval(), arch, net.num_classes, net.mean, net.std, net.input_size, net.classes,
                         net.file)


def _last_linear(module: nn.Module) -> nn.Module | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (used in cache keys and run records)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
