"""What identifies a soft-label cache: its options (:class:`CacheSpec`), the fingerprints of the data and
the sources, the key made of them, and the stored views drawn from it. Any change of what the sources
would output changes the key (see :mod:`sskt.sources.cache` for the scheme)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Mapping

import torch
from annotated_types import Ge
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.sources.cache_file import FORMAT_VERSION
from sskt.sources.source import Source
from sskt.validation import validate


@dataclass
class CacheSpec:
    """How to cache soft labels (the ``cache:`` mapping of the SSKT method's options).

    ``mode``: ``exact`` (K stored views per image) or ``clean`` (one un-augmented output per image).
    ``views``: K, stored views per image (exact mode; at most (2*padding+1)^2 * (2 if flip) distinct).
    ``topk``: logits kept per view (the rest become one tail value, see the module docstring); a source
    with ``adapt: features`` keeps all of its features.
    ``dir``: where the files live (default ``$SSKT_CACHE_DIR/soft-labels``, else ``~/.cache/sskt/soft-labels``).
    ``seed``: seed of the stored views (part of the key). ``chunk``: images per resumable chunk.
    ``batch_size``: views per source forward while building (default: 32 on a CPU, where small batches stay
    in its caches and run faster per view, 256 on a GPU).
    ``verify``: on every open, this many stored (image, view) pairs are compared with the live
    sources (0: off); a disagreement stops the run (a key that missed something would show here).
    """

    # Types, ranges and choices are checked when the mapping is read (cache_spec).
    mode: Literal["exact", "clean"] = "exact"
    views: Annotated[int, Ge(1)] = 8
    topk: Annotated[int, Ge(1)] = 10
    dir: str | None = None
    seed: int = 0
    chunk: Annotated[int, Ge(1)] = 512
    batch_size: Annotated[int, Ge(1)] | None = None
    verify: Annotated[int, Ge(0)] = 8

    def __post_init__(self) -> None:
        if self.mode == "clean":
            self.views = 1

    @property
    def directory(self) -> Path:
        if self.dir:
            return Path(self.dir).expanduser()
        base = Path(os.environ.get("SSKT_CACHE_DIR", Path.home() / ".cache" / "sskt"))
        return base / "soft-labels"


def cache_spec(raw: Mapping | CacheSpec | None, where: str = "cache") -> CacheSpec | None:
    """A :class:`CacheSpec` from the YAML mapping (None: no cache); errors name the dotted key under
    ``where`` (``method.cache.views: must be >= 1, got 0``)."""
    return raw if raw is None else validate(CacheSpec, raw, where)


def _hash_tensor(h: "hashlib._Hash", t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    h.update(t.numpy().tobytes() if t.numel() else b"")


def dataset_fingerprint(images: Tensor, targets: Tensor) -> str:
    """Hash of the training images and labels (in order: cache rows are positions in the split)."""
    h = hashlib.sha256()
    _hash_tensor(h, images)
    _hash_tensor(h, targets)
    return h.hexdigest()


def weights_digest(module: nn.Module) -> str:
    """Hash of every parameter and buffer (so randomly initialised sources are told apart too)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue  # a counter: does not change outputs
        h.update(name.encode())
        _hash_tensor(h, t)
    return h.hexdigest()


def source_fingerprint(src: Source, precision: str) -> dict:
    """Everything that decides a source's output on a given view."""
    if src.bn_mode != "eval":
        raise SSKTError(f"source {src.name!r} has bn_mode={src.bn_mode!r}: its outputs depend on the batch and "
                        f"can't be cached; use bn_mode: eval or drop method.cache")
    return {
        "weights": weights_digest(src.network), "checkpoint": src.fingerprint,
        "network": type(src.network).__name__, "num_classes": src.num_classes,
        "input_size": src.input_size, "input_scale": src.input_scale,
        "mean": [round(float(v), 8) for v in src.normalize.mean.flatten().tolist()],
        "std": [round(float(v), 8) for v in src.normalize.std.flatten().tolist()],
        "resize": "bilinear,align_corners=False", "frames": src.frames, "precision": precision,
    }


def cache_key(dataset_fp: str, source_fp: dict, spec: CacheSpec, temperature: float, padding: int,
              flip: bool) -> tuple[str, dict]:
    """The key of one source's file and the parts it is made of (stored in the header)."""
    parts = {
        "format": FORMAT_VERSION, "dataset": dataset_fp, "source": source_fp, "mode": spec.mode,
        "views": spec.views, "topk": spec.topk, "view_seed": spec.seed, "padding": padding, "flip": bool(flip),
        "temperature": float(temperature),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts


def sample_views(n: int, k: int, padding: int, flip: bool, seed: int, mode: str = "exact") -> Tensor:
    """(n, k, 3) long views ``(dx, dy, flip)``: k distinct views per image, or the identity for clean."""
    if mode == "clean":
        return torch.tensor([padding, padding, 0]).expand(n, 1, 3).clone()
    side = 2 * padding + 1
    total = side * side * (2 if flip else 1)
    if k > total:
        raise SSKTError(f"cache.views={k} but padding {padding} and flip={flip} allow only {total} distinct views")
    g = torch.Generator().manual_seed(seed)
    # Distinct views per image: the first k of a random permutation of all view ids.
    ids = torch.rand(n, total, generator=g).argsort(dim=1)[:, :k]
    return torch.stack([ids % side, (ids // side) % side, ids // (side * side)], dim=-1)
