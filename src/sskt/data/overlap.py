"""No test image in training, checked by content: every training stream against the test split.

An image of a training stream (the labelled images, the validation split, the unlabelled images, and so
whatever is built from them) "is a test image" when its pixels, as loaded (decoded, grey -> RGB, resized),
equal a test image's byte for byte, whatever its file is called. The validation split is also checked
against the labelled images. Overlap is one error naming the count and an example; with
``data.allow_test_overlap: true`` it is one notice line. ``ImageSplits.meta["test_overlap"]`` is the record:
``{}`` (checked, none) or the counts allowed (``{"unlabeled": 30}``; keys train, val, unlabeled, val_train).
Exact copies within the test split, or within training, are fine. Clips (video datasets) are not checked.

Example:
    >>> import torch
    >>> from sskt.data.tensor_dataset import ImageSplits, ImageTensorDataset
    >>> x = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).reshape(4, 3, 2, 2)
    >>> splits = ImageSplits(ImageTensorDataset(x[:2], torch.zeros(2)), ImageTensorDataset(x[2:], torch.zeros(2)), ["a"])
    >>> splits.unlabeled = x[1:3]                                # x[2] is a test image
    >>> overlap_counts(splits)
    {'unlabeled': 1}
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from sskt.config import DataConfig
from sskt.data.folder import notice
from sskt.data.tensor_dataset import ImageSplits
from sskt.errors import SSKTError

# Rows up to this many bytes are hashed whole (a 128-bit digest: equal digests are equal rows). Larger rows
# (clips, large photos) are hashed by a fixed sample of their bytes and candidates are then compared whole,
# which keeps hashing a video split to a fraction of a second.
_WHOLE_ROW_BYTES = 1 << 16
_SAMPLE_BYTES = 1 << 14

# Each checked pair: (stream, the one it must not share images with), and the word each is named by.
_PAIRS = (("train", "test"), ("val", "test"), ("unlabeled", "test"), ("val", "train"))
_WHAT = {"train": "labelled training images", "val": "validation images", "unlabeled": "unlabelled images",
         "test": "test images"}
_ONE = {"train": "labelled training image", "val": "validation image", "unlabeled": "unlabelled image",
        "test": "test image"}
_FLAG = "data.allow_test_overlap: true"


def row_digests(x: Tensor) -> tuple[list[bytes], bool]:
    """One digest per image (row) of the uint8 tensor ``x`` (N, ...), and whether they are of whole rows
    (else of a sample of each row's bytes: equal rows still agree, but unequal rows may too)."""
    a = np.ascontiguousarray(x.detach().cpu().numpy()).reshape(len(x), -1)
    whole = a.shape[1] <= _WHOLE_ROW_BYTES
    if not whole:
        a = np.ascontiguousarray(a[:, :: a.shape[1] // _SAMPLE_BYTES])
    width = a.shape[1]
    flat = memoryview(a.reshape(-1))  # slices of one buffer: no copy per row
    return [hashlib.blake2b(flat[i * width:(i + 1) * width], digest_size=16).digest() for i in range(len(a))], whole


def shared_rows(x: Tensor, ref: Tensor, digests: dict[int, tuple[list[bytes], bool]] | None = None
                ) -> list[tuple[int, int]]:
    """``(i, j)`` for every row ``x[i]`` equal to a row of ``ref`` (``j``: the first such row).
    ``digests``: :func:`row_digests` of tensors already hashed, by ``id``, so each stream is hashed once."""
    if len(x) == 0 or len(ref) == 0 or x.shape[1:] != ref.shape[1:]:
        return []  # images of another shape can't be equal
    memo = {} if digests is None else digests
    for t in (x, ref):
        if id(t) not in memo:
            memo[id(t)] = row_digests(t)
    (x_digests, _), (ref_digests, whole) = memo[id(x)], memo[id(ref)]
    index: dict[bytes, list[int]] = {}
    for j, d in enumerate(ref_digests):
        index.setdefault(d, []).append(j)
    found = []
    for i, d in enumerate(x_digests):
        for j in index.get(d, ()):
            if whole or torch.equal(x[i], ref[j]):
                found.append((i, j))
                break
    return found


def _streams(splits: ImageSplits) -> dict[str, Tensor]:
    out = {"train": splits.train.images, "test": splits.test.images}
    if splits.val is not None:
        out["val"] = splits.val.images
    if splits.unlabeled is not None:
        out["unlabeled"] = splits.unlabeled
    return out


def overlap_counts(splits: ImageSplits) -> dict[str, int]:
    """How many images of each training stream equal a test image (keys train, val, unlabeled), and how
    many validation images equal a labelled one (key ``val_train``); streams without overlap are left out."""
    return {k: len(v) for k, v in _overlaps(splits).items()}


def _overlaps(splits: ImageSplits) -> dict[str, list[tuple[int, int]]]:
    streams = _streams(splits)
    if streams["test"].ndim != 4:
        # Clips (N,C,T,H,W) are skipped: they are windows cut at load time, so equal clips mean equal frames
        # (a fade to black, say) more often than a test video in training, which the split files decide.
        return {}
    out, memo = {}, {}
    for a, b in _PAIRS:
        if a in streams and b in streams:
            pairs = shared_rows(streams[a], streams[b], memo)
            if pairs:
                out[a if b == "test" else f"{a}_{b}"] = pairs
    return out


def _namer(splits: ImageSplits, stream: str, cfg: DataConfig) -> Callable[[int], str]:
    """How to name image ``i`` of ``stream``: its file, else its index in the dataset's split, else its place."""
    files = (splits.meta.get("files") or {}).get(stream)
    if files is not None:
        return lambda i: str(files[i])
    rows = (splits.meta.get("rows") or {}).get(stream)
    if rows is not None:
        split = cfg.test_split if stream == "test" else cfg.train_split
        return lambda i: f"{split} image {int(rows[i])}"
    return lambda i: f"{_ONE[stream]} {i}"


def _fix(stream: str, cfg: DataConfig) -> str:
    if stream == "unlabeled" and cfg.unlabeled not in (None, "rest"):
        return f"point data.unlabeled elsewhere or remove them from {cfg.unlabeled}"
    return "remove one copy of each from the data"


def check_test_overlap(splits: ImageSplits, cfg: DataConfig) -> None:
    """Refuse training streams that share images with the test split (and a validation split that shares
    them with the labelled images), by content; with ``cfg.allow_test_overlap``, one notice line and the
    counts in ``splits.meta["test_overlap"]``."""
    if splits.test.images.ndim != 4:
        return  # clips (see _overlaps): nothing checked, so nothing recorded
    found = _overlaps(splits)
    if found and not cfg.allow_test_overlap:
        key, pairs = next(iter(found.items()))
        stream, ref = (key, "test") if key in _WHAT else key.split("_")
        name, ref_name = _namer(splits, stream, cfg), _namer(splits, ref, cfg)
        i, j = pairs[0]
        example = name(i) if name(i) == ref_name(j) else f"{name(i)} = {ref_name(j)}"
        are = f"is also a {_ONE[ref]}" if len(pairs) == 1 else f"are also {_WHAT[ref]}"
        use = "validate on" if stream == "val" else "train on"
        raise SSKTError(f"{len(pairs)} of the {len(_streams(splits)[stream])} {_WHAT[stream]} {are} (e.g. {example}, "
                        f"by content); {_fix(stream, cfg)}, or set {_FLAG} to {use} them anyway (recorded in "
                        f"result.json)")
    counts = {k: len(v) for k, v in found.items()}
    splits.meta["test_overlap"] = counts  # {}: checked, and none
    if counts:
        tested = {k: n for k, n in counts.items() if k in _WHAT}
        said = ", ".join(f"{n} {_ONE[k] if n == 1 else _WHAT[k]}" for k, n in tested.items())
        verb = "is also a test image" if list(tested.values()) == [1] else "are also test images"
        parts = [f"{said} {verb} (by content)"] if tested else []
        if "val_train" in counts:
            n = counts["val_train"]
            parts.append(f"{n} {_ONE['val'] + ' is' if n == 1 else _WHAT['val'] + ' are'} also labelled")
        notice(f"{_FLAG}: {'; '.join(parts)}; used anyway, and recorded in result.json (test_overlap)")
