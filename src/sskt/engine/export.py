"""``sskt export``: the trained target alone, as a portable file with a model card beside it.

A training checkpoint (``last.ckpt``) holds the target's weights under ``method.target.`` and, since
this module exists, a record of what the target is (``checkpoint["sskt"]["target"]``: architecture,
classes, input shape and statistics; see :func:`target_record`). Export reads only that: it needs
neither the training data nor the sources nor a teacher, and works from any directory. Checkpoints
written before the record existed are rebuilt from their weights, with the class names and input
shape read from their training data (an error names the problem when the data is not there).

Formats (``format=`` or the output's suffix; every one takes float images in [0, 1], N x C x H x W
(N x C x T x H x W for clips), normalisation included, and returns logits):

- ``sskt`` (``.pt``, default): the sskt model file, loadable by :func:`sskt.load_model` (ready for
  inference) and usable as a source;
- ``pt2`` (``.pt2``): a :class:`torch.export.ExportedProgram` (``torch.export.load(path).module()``),
  dynamic batch dimension, metadata in the extra file ``sskt.json``; the format to prefer for PyTorch
  deployment;
- ``torchscript`` (``.ts``, ``.torchscript``): ``torch.jit.load(path)``, metadata in the extra file
  ``sskt.json``; kept while torch has ``torch.jit`` (deprecated there: prefer ``pt2``);
- ``onnx`` (``.onnx``): dynamic batch axis, input ``images``, output ``logits``, metadata in the
  model's ``metadata_props`` (needs ``pip install 'sskt[export]'``);
- ``safetensors`` (``.safetensors``): the weights (``normalize.*`` and ``model.*``) with the metadata
  as JSON under the ``sskt`` key (:func:`sskt.load_model` or :func:`load_safetensors` rebuild the network).

:func:`sskt.load_model` reads every format except ONNX (run that with onnxruntime), and the training checkpoint.

Beside the file, ``<output>.md`` is a model card: architecture, parameters, classes, input, method and
sources, test accuracy, sskt version.

Example:
    >>> from sskt.engine.export import export
    >>> written = export("runs/digits-scratch/checkpoints/last.ckpt", "digits.onnx")  # doctest: +SKIP
    >>> written.path, written.card  # doctest: +SKIP
    (PosixPath('digits.onnx'), PosixPath('digits.onnx.md'))
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from sskt.engine.model_card import model_card
from sskt.errors import SSKTError
from sskt.io import atomic_write
from sskt.models.factory import create_model, model_spec
from sskt.models.target import EXPORT_FORMAT, NormalizedClassifier
from sskt.models.weights import load_weights, read_checkpoint

FORMATS = ("sskt", "pt2", "torchscript", "onnx", "safetensors")
SUFFIXES = {".pt": "sskt", ".pth": "sskt", ".pt2": "pt2", ".ts": "torchscript", ".torchscript": "torchscript",
            ".onnx": "onnx", ".safetensors": "safetensors"}
_TARGET_PREFIX = "method.target."
_ONNX_OPSET = 17  # exported by torch >= 1.13, run by onnxruntime >= 1.14


@dataclasses.dataclass
class Exported:
    """What :func:`export` wrote."""

    path: Path
    card: Path
    format: str


def target_record(module: Any) -> dict[str, Any] | None:
    """What export needs to know about a :class:`~sskt.engine.lit.MethodModule`'s target, stored in its
    checkpoints (``checkpoint["sskt"]["target"]``) so that export needs no data and no sources.
    None for a method without a :class:`~sskt.models.target.TargetNetwork` (export then rebuilds the run)."""
    from sskt.models.target import TargetNetwork

    t = getattr(module.method, "target", None)
    if not isinstance(t, TargetNetwork):
        return None
    classes = list(module.classes) if len(module.classes) == t.num_classes else None  # pretext/cluster heads
    shape = [int(s) for s in module.input_shape] if getattr(module, "input_shape", None) else None
    return {"arch": t.arch, "num_classes": int(t.num_classes), "in_chans": int(t.in_chans),
            "mean": t.normalize.mean.tolist(), "std": t.normalize.std.tolist(), "classes": classes,
            "input_shape": shape, "multilabel": bool(getattr(module, "multilabel", False))}


def resolve_format(path: str | os.PathLike, format: str | None = None) -> str:
    """``format`` if given, else the one the output's suffix names, else ``sskt``."""
    if format is not None:
        if format not in FORMATS:
            raise SSKTError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
        return format
    return SUFFIXES.get(Path(path).suffix.lower(), "sskt")


def export(checkpoint: str | os.PathLike, path: str | os.PathLike, format: str | None = None) -> Exported:
    """Write the target of a training checkpoint (main head only, normalisation included) to ``path``
    in ``format`` (default: from the suffix, else the sskt model file), and a model card to
    ``<path>.md``. Both are written atomically and honour the umask. A folder (one that exists, or a path
    ending in ``/``) receives ``model.<suffix>`` and its card inside it."""
    folder = str(path).endswith(("/", os.sep)) or Path(path).is_dir()
    path = Path(path)
    fmt = resolve_format(path, format) if not folder else resolve_format(path / "model.pt", format)
    if folder:  # a folder (existing, or named with a trailing slash): the model goes inside it
        path = path / f"model{_suffix(fmt)}"
        path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = _read_training_checkpoint(checkpoint)
    net, meta = _target_from_checkpoint(ckpt, str(checkpoint))
    card_path = path.with_name(path.name + ".md")
    if card_path.is_dir():
        raise SSKTError(f"{card_path} (the model card) is a directory; move it or choose another output name")
    payload = _WRITERS[fmt](net, meta)  # everything is converted before anything is written
    card = model_card(ckpt, net, meta, path.name, fmt)
    try:
        # bytes, so their size is reserved on disk first; a full disk is one DiskFullError naming the file
        elsewhere = "export to another path, then run the same command again"
        atomic_write(path, payload, elsewhere=elsewhere)
        atomic_write(card_path, card.encode(), elsewhere=elsewhere)
    except OSError as err:
        raise SSKTError(f"cannot write {path} ({err.strerror or err}); choose a writable file path") from None
    return Exported(path, card_path, fmt)


def _suffix(fmt: str) -> str:
    return {"sskt": ".pt", "pt2": ".pt2", "torchscript": ".ts", "onnx": ".onnx", "safetensors": ".safetensors"}[fmt]


def _read_training_checkpoint(checkpoint: str | os.PathLike) -> dict:
    ckpt = read_checkpoint(checkpoint, trust_pickle=False)
    if not isinstance(ckpt, dict) or "sskt_config" not in ckpt or "state_dict" not in ckpt:
        raise SSKTError(f"{checkpoint} is not an sskt training checkpoint (no sskt_config); export from the run's "
                        f"checkpoints/last.ckpt (a model file such as target.pt loads with sskt.load_model(path))")
    return ckpt


def _target_from_checkpoint(ckpt: dict, what: str) -> tuple[NormalizedClassifier, dict[str, Any]]:
    """The target (eval mode, float32, CPU) and its metadata (arch, num_classes, in_chans, mean, std,
    classes, input_shape, multilabel)."""
    state = {k[len(_TARGET_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(_TARGET_PREFIX)}
    record = (ckpt.get("sskt") or {}).get("target")
    if record is None:
        return _rebuild_old(ckpt, state, what)
    meta = dict(record)
    model = create_model(meta["arch"], int(meta["num_classes"]), int(meta["in_chans"]))
    weights = {k[len("model."):]: _float(v) for k, v in state.items() if k.startswith("model.")}
    load_weights(model, weights, what)
    meta["input_shape"] = meta.get("input_shape") or _default_shape(ckpt, meta)
    net = NormalizedClassifier(model, meta["mean"], meta["std"]).eval()
    return net, meta


def _rebuild_old(ckpt: dict, state: dict, what: str) -> tuple[NormalizedClassifier, dict[str, Any]]:
    """A checkpoint written before the target record: the weights say the architecture's size, the
    training data says the class names and the input shape."""
    from sskt.cluster.teacher import target_from_state
    from sskt.config import ExperimentConfig
    from sskt.data.datasets import load_data

    cfg = ExperimentConfig.from_dict(ckpt["sskt_config"])
    target = target_from_state({k: _float(v) for k, v in state.items()}, ckpt["sskt_config"].get("target", {}), what)
    try:
        splits = load_data(dataclasses.replace(cfg.data, unlabeled=None))
    except (SSKTError, OSError) as err:
        raise SSKTError(f"{what} predates portable export (it has no target record), so its class names come "
                        f"from its training data, which could not be loaded ({str(err).splitlines()[0]}); run "
                        f"the export where the data is, or resume the run for one epoch to rewrite the checkpoint"
                        ) from None
    meta = {"arch": target.arch, "num_classes": target.num_classes, "in_chans": target.in_chans,
            "mean": target.normalize.mean.tolist(), "std": target.normalize.std.tolist(),
            "classes": list(splits.classes) if len(splits.classes) == target.num_classes else None,
            "input_shape": [int(s) for s in splits.train.images.shape[1:]], "multilabel": bool(splits.multilabel)}
    return target.export(), meta


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t  # counters stay integers


def _default_shape(ckpt: dict, meta: dict) -> list[int]:
    size = (ckpt["sskt_config"].get("data") or {}).get("image_size") or model_spec(meta["arch"]).input_size
    if not size:
        raise SSKTError(f"the input size of the {meta['arch']} is unknown (the checkpoint does not record it); "
                        f"set data.image_size in the run's config")
    return [int(meta["in_chans"]), int(size), int(size)]


def _example(meta: dict, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, *meta["input_shape"], generator=torch.Generator().manual_seed(0))


def _metadata(meta: dict) -> dict[str, Any]:
    import sskt

    return {"format": EXPORT_FORMAT, "sskt_version": sskt.__version__, "arch": meta["arch"],
            "num_classes": meta["num_classes"], "in_chans": meta["in_chans"], "mean": meta["mean"],
            "std": meta["std"], "classes": meta["classes"], "input_shape": meta["input_shape"],
            "multilabel": meta.get("multilabel", False), "input": "float images in [0, 1], NCHW (NCTHW for clips); "
            "normalisation is inside the model", "output": "logits"}


def _to_sskt(net: NormalizedClassifier, meta: dict) -> bytes:
    """The sskt model file (the payload of :meth:`TargetNetwork.save`, with class names and input shape)."""
    payload = {"format": EXPORT_FORMAT, "arch": meta["arch"], "num_classes": meta["num_classes"],
               "in_chans": meta["in_chans"], "mean": list(meta["mean"]), "std": list(meta["std"]),
               "classes": meta["classes"], "input_size": int(meta["input_shape"][-1]),
               "input_shape": list(meta["input_shape"]), "multilabel": meta.get("multilabel", False),
               "state_dict": net.model.state_dict()}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


@torch.no_grad()
def _to_pt2(net: NormalizedClassifier, meta: dict) -> bytes:
    """A :class:`torch.export.ExportedProgram` of the network, any batch size, checked after a round trip."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notices; the round trip below is the real check
        try:
            program = torch.export.export(net, (_example(meta),), dynamic_shapes=({0: batch},), strict=False)
            buf = io.BytesIO()
            torch.export.save(program, buf, extra_files={"sskt.json": json.dumps(_metadata(meta))})
            data = buf.getvalue()
            loaded = torch.export.load(io.BytesIO(data)).module()
        except Exception as err:  # an operator, or a batch-dependent branch, that torch.export cannot handle
            first = (str(err).strip() or type(err).__name__).splitlines()[0]
            raise SSKTError(f"the {meta['arch']} could not be exported with torch.export ({first}); "
                            f"try --format onnx") from None
    x = _example(meta, 3)  # another batch size than the traced one: the batch dimension is dynamic
    _check_close(loaded(x), net(x), "torch.export", 1e-5)
    return data


@torch.no_grad()
def _to_torchscript(net: NormalizedClassifier, meta: dict) -> bytes:
    example = _example(meta)
    with warnings.catch_warnings():
        # torch.jit's FutureWarning (deprecated in favour of torch.export: format pt2) and tracer notices;
        # the check below compares the result with the network
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, (example,))
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={"sskt.json": json.dumps(_metadata(meta))})
        data = buf.getvalue()
        loaded = torch.jit.load(io.BytesIO(data))
    _check_close(loaded(_example(meta, 3)), net(_example(meta, 3)), "TorchScript", 1e-5)
    return data


@torch.no_grad()
def _to_onnx(net: NormalizedClassifier, meta: dict) -> bytes:
    onnx = _optional("onnx", "ONNX")
    import inspect

    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript-based exporter: no onnxscript needed, torch 2.2 to 2.14
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and constant-folding notices
        try:
            torch.onnx.export(net, (_example(meta),), buf, input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=_ONNX_OPSET, do_constant_folding=True, **kwargs)
        except Exception as err:  # an operator ONNX lacks, or an exporter missing from this torch
            raise SSKTError(f"the {meta['arch']} could not be exported to ONNX ({str(err).splitlines()[0]}); "
                            f"try --format pt2 or torchscript") from None
    model = onnx.load_from_string(buf.getvalue())
    for key, value in _metadata(meta).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value if isinstance(value, str) else json.dumps(value)
    model.producer_name = "sskt"
    data = model.SerializeToString()
    try:
        import onnxruntime
    except ImportError:  # export without checking: the runtime is optional
        return data
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = _example(meta, 3)
    got = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    _check_close(got, net(x), "ONNX", 1e-3)
    return data


def _to_safetensors(net: NormalizedClassifier, meta: dict) -> bytes:
    st = _optional("safetensors", "safetensors")
    import safetensors.torch  # noqa: F401  (the torch helpers are a submodule)

    tensors = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    return st.torch.save(tensors, metadata={"format": EXPORT_FORMAT, "sskt": json.dumps(_metadata(meta))})


_WRITERS = {"sskt": _to_sskt, "pt2": _to_pt2, "torchscript": _to_torchscript, "onnx": _to_onnx,
            "safetensors": _to_safetensors}


def load_safetensors(path: str | os.PathLike) -> tuple[NormalizedClassifier, dict[str, Any]]:
    """The network (eval mode; images in [0, 1] -> logits) and the metadata of a ``.safetensors`` export."""
    _optional("safetensors", "safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get("sskt")
    if raw is None:
        raise SSKTError(f"{path} is not an sskt export (no 'sskt' metadata)")
    meta = json.loads(raw)
    net = NormalizedClassifier(create_model(meta["arch"], meta["num_classes"], meta["in_chans"]), meta["mean"],
                               meta["std"])
    net.load_state_dict(load_file(str(path)))
    return net.eval(), meta


def _optional(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SSKTError(f"{what} files need the {module} package: pip install 'sskt[export]' "
                        f"(or pip install {module})") from None


def _check_close(got: torch.Tensor, want: torch.Tensor, what: str, atol: float) -> None:
    diff = float((got.float() - want.float()).abs().max())
    if not diff <= atol * max(1.0, float(want.abs().max())):
        raise SSKTError(f"the {what} export does not reproduce the network (max difference {diff:.3g}); "
                        f"export to another format and report this architecture")
