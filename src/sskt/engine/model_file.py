"""Trained models as files: :func:`load_model` reads every file sskt writes into one ready-to-use network.

It reads the ``target.pt`` a training run writes, the ``.pt`` / ``.pt2`` / ``.safetensors`` / TorchScript
files of ``sskt export`` and a training checkpoint (``last.ckpt``, no data needed), and returns a
:class:`LoadedModel`: an eval-mode ``nn.Module`` taking float images in [0, 1] (N x C x H x W) with
the normalisation inside, returning logits, and knowing its classes and input size. ONNX files are run
with onnxruntime instead (input ``images``, output ``logits``).

Example:
    >>> import sskt
    >>> model = sskt.load_model("runs/digits-scratch/target.pt")  # doctest: +SKIP
    >>> x = model.preprocess(["cat.jpg", "dog.png"])               # doctest: +SKIP
    >>> model.probabilities(x).argmax(1), model.classes            # doctest: +SKIP
"""
from __future__ import annotations

import io
import json
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from sskt.data.images import read_image
from sskt.engine.export import _target_from_checkpoint, load_safetensors
from sskt.errors import SSKTError
from sskt.models.factory import create_model, model_spec
from sskt.models.target import EXPORT_FORMAT, NormalizedClassifier
from sskt.models.weights import load_weights, read_checkpoint

KINDS = "a target.pt, an `sskt export` file (.pt, .pt2, .safetensors, .ts) or a training checkpoint (last.ckpt)"
_TORCH_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # torch.save's legacy pickle format


class LoadedModel(nn.Module):
    """A trained model: float images in [0, 1] -> logits, normalisation inside, in eval mode.

    Attributes:
        classes: the class names of the outputs (None where the file does not record them).
        input_shape: one example's shape, (C, H, W) (or (C, T, H, W) for a video model).
        input_size: the square side images are decoded to (the last entry of ``input_shape``).
        multilabel: True when each output is its own yes/no (sigmoid), False for one class (softmax).
        arch: the architecture's name; num_classes: the number of outputs.
        path: the file it was read from; format: ``sskt``, ``checkpoint``, ``pt2``, ``safetensors`` or
            ``torchscript``.
    """

    def __init__(self, network: nn.Module, *, arch: str | None, num_classes: int, classes: Sequence[str] | None,
                 input_shape: Sequence[int], multilabel: bool, path: Path, format: str) -> None:
        super().__init__()
        self.network = network
        self.arch, self.num_classes, self.multilabel = arch, int(num_classes), bool(multilabel)
        self.classes = [str(c) for c in classes] if classes else None
        self.input_shape = tuple(int(s) for s in input_shape)
        self.path, self.format = Path(path), format
        self.eval()

    @property
    def input_size(self) -> int:
        return self.input_shape[-1]

    @property
    def labels(self) -> list[str]:
        """The class names, or the output indices as strings where the file records no names."""
        return self.classes or [str(i) for i in range(self.num_classes)]

    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, classes={self.num_classes}, input_shape={self.input_shape}, "
                f"multilabel={self.multilabel}, path={self.path}")

    def preprocess(self, paths: Sequence[str | os.PathLike]) -> Tensor:
        """Image files as the model's input: decoded by sskt's one policy (upright, RGB, shorter side to
        ``input_size``, centre square; :func:`sskt.data.images.read_image`), float in [0, 1]."""
        self.check_image_input()
        # torch.tensor copies: the decoded arrays are read-only views of PIL's buffers
        arrays = [torch.tensor(read_image(p, self.input_size)).permute(2, 0, 1) for p in paths]
        if not arrays:
            return torch.zeros(0, *self.input_shape)
        x = torch.stack(arrays).float().div_(255.0)
        if self.input_shape[0] == 1:  # a grey model: decoded grey images have R = G = B, the mean is exact
            x = x.mean(1, keepdim=True)
        return x

    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax (single-label) or per-class sigmoid (multi-label) of the logits, in eval mode whatever
        the module's mode, without gradients; ``images`` go to the model's device."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                device = next(iter(self.parameters()), torch.empty(0)).device
                logits = self(images.to(device)).float().cpu()
        finally:
            self.train(was_training)
        return logits.sigmoid() if self.multilabel else logits.softmax(1)

    def check_image_input(self) -> None:
        """One clear error for a model that image files cannot feed (a video model, an odd input shape)."""
        shape = self.input_shape
        if len(shape) != 3:
            raise SSKTError(f"{self.path.name} takes video clips ({' x '.join(map(str, shape))}), not single "
                            f"images; score it with sskt evaluate on its training checkpoint")
        if shape[1] != shape[2] or shape[0] not in (1, 3):
            raise SSKTError(f"{self.path.name} takes {' x '.join(map(str, shape))} inputs; image files are "
                            f"decoded to 1 or 3 channels, square: feed it tensors instead")


def load_model(path: str | os.PathLike) -> LoadedModel:
    """The trained model in ``path``, ready for inference: :class:`LoadedModel` (eval mode, images in
    [0, 1] -> logits, normalisation inside, ``.classes``, ``.input_size``).

    ``path`` is a ``target.pt`` of a run, an ``sskt export`` file (``.pt``, ``.pt2``, ``.safetensors``,
    ``.ts``), a training checkpoint (``last.ckpt``) or a run folder (its ``target.pt``, else its last
    checkpoint). Files are read without unpickling code (a ``.pt2`` holding pickles is refused; its graph
    is rebuilt by ``torch.export.load``, so load ``.pt2`` and ``.ts`` files from sources you trust, as any
    program). An ONNX file, or any other file, is one clear error.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = _in_run_folder(path)
    if not path.is_file():
        raise SSKTError(f"model file not found: {path}; check the path")
    kind = file_kind(path)
    if kind == "onnx":
        raise SSKTError(f"{path} is an ONNX model: run it with onnxruntime (input 'images', output 'logits'); "
                        f"sskt reads the run's target.pt or last.ckpt, or a .pt / .pt2 / .safetensors / .ts export")
    if kind == "safetensors":
        return _from_safetensors(path)
    if kind == "torchscript":
        return _from_torchscript(path)
    if kind == "pt2":
        return _from_pt2(path)
    if kind != "torch":
        raise SSKTError(f"{path} is not a model file sskt can load ({kind}); give {KINDS}")
    obj = read_checkpoint(path, trust_hint="load_model reads tensors and plain data only; save the model's "
                                           "state_dict() and load it with sskt.load_network(arch, path)")
    if isinstance(obj, dict) and obj.get("format") == EXPORT_FORMAT:
        return _from_sskt_file(path, obj)
    if isinstance(obj, dict) and "sskt_config" in obj and "state_dict" in obj:
        net, meta = _target_from_checkpoint(obj, str(path))
        return _wrap(net, meta, path, "checkpoint")
    raise SSKTError(f"{path} is a PyTorch file but no sskt model (no sskt format record); give {KINDS}, or load "
                    f"a plain state_dict with sskt.load_network(arch, path)")


def file_kind(path: Path) -> str:
    """``torch`` (torch.save), ``pt2`` (torch.export.save), ``torchscript``, ``safetensors``, ``onnx``, or a
    description of something else, from the file's first bytes (and an ONNX file's suffix)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                formats = [archive.read(n) for n in names if n.count("/") == 1 and n.endswith("/archive_format")]
        except (zipfile.BadZipFile, OSError):
            return "a damaged zip archive"
        if b"pt2" in formats:  # torch.export's archive says so in <root>/archive_format
            return "pt2"
        # TorchScript archives carry their code and constants; torch.save archives hold data.pkl only.
        return "torchscript" if any(n.endswith("/constants.pkl") or "/code/" in n for n in names) else "torch"
    if head.startswith(_TORCH_MAGIC):
        return "torch"
    if head[8:10] == b'{"':  # safetensors: the header's length (8 bytes), then the header, JSON
        return "safetensors"
    if path.suffix.lower() == ".onnx":
        return "onnx"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html")):
        return "an HTML page: a download link saved instead of the file?"
    return "an empty file" if not head else f"a file starting with {head[:16]!r}"


def _in_run_folder(folder: Path) -> Path:
    for candidate in (folder / "target.pt", folder / "checkpoints" / "last.ckpt"):
        if candidate.is_file():
            return candidate
    raise SSKTError(f"{folder} is a folder without target.pt or checkpoints/last.ckpt; give {KINDS}")


def _from_sskt_file(path: Path, obj: dict) -> LoadedModel:
    arch = obj["arch"]
    model = create_model(arch, obj["num_classes"], obj["in_chans"])
    load_weights(model, obj["state_dict"], str(path))
    meta = {k: obj.get(k) for k in ("arch", "num_classes", "in_chans", "mean", "std", "classes", "multilabel")}
    shape = obj.get("input_shape")
    if not shape and obj.get("input_size"):
        shape = [obj["in_chans"], obj["input_size"], obj["input_size"]]
    if not shape or meta["multilabel"] is None:
        record = _run_record(path, arch)  # a run's target.pt: its checkpoint beside it knows the rest
        shape = shape or record.get("input_shape") or _natural_shape(path, arch, obj["in_chans"])
        meta["multilabel"] = bool(record.get("multilabel", False)) if meta["multilabel"] is None else meta["multilabel"]
    meta["input_shape"] = list(shape)
    net = NormalizedClassifier(model, obj["mean"], obj["std"])
    return _wrap(net, meta, path, "sskt")


def _run_record(path: Path, arch: str) -> dict[str, Any]:
    """The target record of the run folder's checkpoint beside a ``target.pt`` ({} when there is none)."""
    ckpt = path.parent / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        return {}
    try:
        record = (read_checkpoint(ckpt).get("sskt") or {}).get("target") or {}
    except (SSKTError, AttributeError):
        return {}
    return record if record.get("arch") == arch else {}


def _natural_shape(path: Path, arch: str, in_chans: int) -> list[int]:
    size = model_spec(arch).input_size
    if not size:
        raise SSKTError(f"{path} does not record its input size and a {arch} has none of its own; export it "
                        f"again from its training checkpoint (sskt export last.ckpt model.pt)")
    print(f"sskt: {path.name} does not record its input size; using {size}, the {arch}'s natural one (export it "
          f"again from its training checkpoint to record the size it was trained at)", file=sys.stderr)
    return [in_chans, size, size]


def _from_safetensors(path: Path) -> LoadedModel:
    try:
        net, meta = load_safetensors(path)
    except SSKTError:
        raise
    except Exception as err:  # safetensors' own error class, a bad header, weights that do not fit
        raise SSKTError(f"{path} is not a readable sskt safetensors export ({str(err).splitlines()[0]}); export "
                        f"it again") from None
    return _wrap(net, meta, path, "safetensors")


def _from_torchscript(path: Path) -> LoadedModel:
    extra = {"sskt.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as err:
        raise SSKTError(f"{path} is not a readable TorchScript file ({str(err).splitlines()[0]}); export it "
                        f"again") from None
    if not extra["sskt.json"]:
        raise SSKTError(f"{path} is a TorchScript file but no sskt export (no sskt.json inside); run it with "
                        f"torch.jit.load(path)")
    return _wrap(net, json.loads(extra["sskt.json"]), path, "torchscript")


class ExportedProgramModule(nn.Module):
    """The module of a ``.pt2`` export (``torch.export.load(path).module()``). It was traced in eval mode
    (BatchNorm on its running statistics, no dropout) and torch refuses ``train()`` / ``eval()`` on it:
    here ``eval()`` sets the flags, ``train()`` is one clear error."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program
        self.train(False)

    def train(self, mode: bool = True) -> "ExportedProgramModule":
        if mode:
            raise SSKTError("a .pt2 export runs in eval mode only (it was traced so); to train further, start "
                            "from its run's training checkpoint (last.ckpt) or target.pt")
        for module in self.modules():
            module.training = False  # flags only: the traced graph already computes eval mode
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.program(images)


def _from_pt2(path: Path) -> LoadedModel:
    meta = _pt2_metadata(path)
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deserialiser's notices
            program = torch.export.load(fh).module()
    except Exception as err:  # torch's own errors: a damaged archive, a newer serialisation, unknown operators
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise SSKTError(f"{path} is not a readable torch.export file ({first}); export it again with this "
                        f"torch") from None
    return _wrap(ExportedProgramModule(program), meta, path, "pt2")


def _pt2_metadata(path: Path) -> dict[str, Any]:
    """The ``sskt.json`` of a ``.pt2`` archive, read before torch is given the file, which is refused when it
    holds pickles (torch.export.load unpickles them, and sskt writes none) or compiled code."""
    try:
        meta, unsafe = _pt2_contents(path)
    except (zipfile.BadZipFile, OSError, ValueError, AttributeError) as err:  # damaged zip, JSON or config
        raise SSKTError(f"{path} is not a readable torch.export file ({str(err).splitlines()[0]}); export it "
                        f"again") from None
    if unsafe:
        raise SSKTError(f"{path} holds pickled objects or compiled code ({unsafe[0]}), which sskt's exports never "
                        f"do and which could run code when loaded; export it again with sskt export")
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT or "input_shape" not in meta:
        raise SSKTError(f"{path} carries an sskt.json that is not sskt's export metadata; export it again")
    return meta


def _pt2_contents(path: Path) -> tuple[Any, list[str]]:
    """The parsed ``sskt.json`` of a ``.pt2`` archive and the entries that would be unpickled or run."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        found = [n for n in names if n.count("/") == 2 and n.endswith("/extra/sskt.json")]
        if not found:
            raise SSKTError(f"{path} is a torch.export file but no sskt export (no sskt.json inside); run it "
                            f"with torch.export.load(path).module()")
        meta = json.loads(archive.read(found[0]))
        unsafe = [n for n in names if "/data/aotinductor/" in n or "/data/constants/custom_obj_" in n
                  or "/data/constants/opaque_obj_" in n]
        for name in (n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))):
            config = json.loads(archive.read(name)).get("config", {})
            unsafe += [name for entry in config.values() if entry.get("use_pickle")]
        for name in (n for n in names if "/data/sample_inputs/" in n):
            try:  # torch.export.load would retry a refused one with full unpickling
                torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
            except Exception:
                unsafe.append(name)
    return meta, unsafe


def _wrap(net: nn.Module, meta: dict[str, Any], path: Path, fmt: str) -> LoadedModel:
    return LoadedModel(net, arch=meta.get("arch"), num_classes=meta["num_classes"], classes=meta.get("classes"),
                       input_shape=meta["input_shape"], multilabel=bool(meta.get("multilabel")), path=path,
                       format=fmt)
