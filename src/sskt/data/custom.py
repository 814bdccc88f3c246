"""Users' own data as a dataset by name.

:func:`image_splits` turns what a user has (``torch.utils.data.Dataset``\\ s of ``(image, label)``, lists of
``(path, label)`` pairs, ``(images, labels)`` tensors) into the uint8 tensors sskt trains on;
:func:`register_dataset` puts it, or a builder, in the ``DATASETS`` registry, so that ``data.dataset: <name>``
works and ``data.per_class``, ``val_per_class``, ``test_per_class``, ``unlabeled: rest``, ``image_size`` and
``grayscale_to_rgb`` apply to it as to a built-in dataset.

Images may be PIL images and files (decoded by the project's one policy, :mod:`sskt.data.images`: upright, RGB,
shorter side then centre square), tensors (C, H, W) or numpy arrays (H, W, C) or (H, W), uint8 or floats in
[0, 1] (their channels are kept). Images of different sizes are fitted to one square side: ``image_size`` if
given, else :func:`sskt.data.images.auto_image_size` of their sizes; images all of one size are kept as they are.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sskt.config import DataConfig
# _finish and _shape: the subsetting every in-memory dataset gets (to become public names of datasets.py).
from sskt.data.datasets import DATASETS, _finish, _shape, per_class_indices
from sskt.data.images import auto_image_size, decode_image, image_sizes, read_image, to_rgb
from sskt.data.tensor_dataset import ImageSplits, ImageTensorDataset
from sskt.errors import SSKTError

SplitData = Any  # a Dataset of (image, label), a list of (image or path, label), or (images, labels) tensors


def image_splits(train: SplitData, test: SplitData, val: SplitData | None = None,
                 classes: Sequence[str] | None = None, image_size: int | None = None) -> ImageSplits:
    """The :class:`ImageSplits` (uint8 tensors, whole splits, no subsetting) of users' own data.

    Each split is a ``torch.utils.data.Dataset`` (or list) of ``(image, label)`` pairs, a list of
    ``(path, label)`` pairs, or an ``(images, labels)`` pair of tensors (N, C, H, W). Labels are class indices
    or class names (then ``classes`` is their order, by default sorted). ``classes`` defaults to the train
    split's ``.classes`` (as torchvision datasets have), else ``"0"``, ``"1"``, ...

    Example:
        >>> from PIL import Image
        >>> train = [(Image.new("RGB", (40, 30), "red"), "red"), (Image.new("L", (20, 20), 255), "white")]
        >>> splits = image_splits(train, train, image_size=16)
        >>> tuple(splits.train.images.shape), splits.classes, splits.train.targets.tolist()
        ((2, 3, 16, 16), ['red', 'white'], [0, 1])
    """
    named = {"train": train, "test": test, **({"val": val} if val is not None else {})}
    converted, names, _ = _convert(named, classes, image_size)
    out = ImageSplits(ImageTensorDataset(*converted["train"]), ImageTensorDataset(*converted["test"]), names)
    if val is not None:
        out.val = ImageTensorDataset(*converted["val"])
    return out


def register_dataset(name: str, data: Mapping[str, SplitData] | Callable[[DataConfig], ImageSplits], *,
                     classes: Sequence[str] | None = None, image_size: int | None = None) -> None:
    """Make ``data.dataset: name`` load ``data``. Registering a name again replaces it, with a warning.

    ``data`` is a builder ``(DataConfig) -> ImageSplits`` (called at every load, as the built-in datasets are),
    or a mapping ``{"train": ..., "test": ..., ["val": ...]}`` of splits as :func:`image_splits` takes them
    (more keys are more splits, chosen with ``data.train_split`` / ``data.test_split``). A mapping is converted
    now, once (errors show at once), at ``image_size`` (or its own size, or a common one for mixed sizes);
    ``data.image_size`` in a config converts it again at that size. ``data.per_class`` and the other subset
    settings apply at every load; a ``val`` split of its own is the validation split (``data.val_per_class``
    then subsets it).

    Example:
        >>> import torch
        >>> images, labels = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40) % 4
        >>> tests = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)  # other images than the training ones
        >>> register_dataset("toy", {"train": (images, labels), "test": (tests, labels[:8])})
        >>> from sskt.data.datasets import load_data
        >>> splits = load_data(DataConfig(dataset="toy", per_class=2))
        >>> len(splits.train), splits.classes
        (8, ['0', '1', '2', '3'])
    """
    if not isinstance(data, Mapping):
        if not callable(data):
            raise SSKTError(f"register_dataset({name!r}): expected a mapping {{'train': ..., 'test': ...}} or a "
                            f"builder (DataConfig) -> ImageSplits, got {type(data).__name__}")
        if classes is not None or image_size is not None:
            raise SSKTError(f"register_dataset({name!r}): classes and image_size are for a mapping of splits; a "
                            f"builder sets them itself")
        DATASETS.register(name, stacklevel=3)(data)
        return
    splits = dict(data)
    missing = [k for k in ("train", "test") if k not in splits]
    if missing:
        raise SSKTError(f"register_dataset({name!r}): the mapping has no {missing[0]!r} split; give "
                        f"{{'train': ..., 'test': ...}} (and optionally 'val')")
    first, names, size = _convert(splits, classes, image_size)
    by_size: dict[int | None, dict[str, tuple[Tensor, Tensor]]] = {None: first, size: first}

    def build(cfg: DataConfig) -> ImageSplits:
        for split in (cfg.train_split, cfg.test_split):
            if split not in splits:
                raise SSKTError(f"dataset {name!r} has splits {sorted(splits)}, not {split!r}; fix data.train_split "
                                f"or data.test_split")
        if cfg.image_size not in by_size:  # decoded again at that size (not a resize of resized images)
            by_size[cfg.image_size] = _convert(splits, names, cfg.image_size)[0]
        return _subset(cfg, by_size[cfg.image_size], names)

    DATASETS.register(name, stacklevel=3)(build)


def _subset(cfg: DataConfig, tensors: dict[str, tuple[Tensor, Tensor]], classes: list[str]) -> ImageSplits:
    """``cfg``'s subsets of whole splits, by the built-in datasets' rules (``_finish``)."""
    (tr_x, tr_y), (te_x, te_y) = tensors[cfg.train_split], tensors[cfg.test_split]
    own_val = tensors.get("val") if "val" not in (cfg.train_split, cfg.test_split) else None
    # A validation split of its own: the training split is not partitioned for one.
    base = dataclasses.replace(cfg, val_per_class=None) if own_val is not None else cfg
    out = _finish(base, tr_x, tr_y, te_x, te_y, classes)
    if own_val is not None:
        keep = per_class_indices(own_val[1], cfg.val_per_class, cfg.subset_seed + 7919, classes, "val")
        out.val = ImageTensorDataset(_shape(own_val[0][keep], cfg), own_val[1][keep])
    return out


# -- conversion ---------------------------------------------------------------------------------------------


def _convert(splits: dict[str, SplitData], classes: Sequence[str] | None, image_size: int | None
             ) -> tuple[dict[str, tuple[Tensor, Tensor]], list[str], int | None]:
    """Every split as (uint8 images, long labels), fitted to one size; the class names; that size (None: the
    images' own, all alike)."""
    pending = {k: _collect(v, k) for k, v in splits.items()}
    names = _class_names(pending, classes, getattr(splits.get("train"), "classes", None))
    size = image_size
    if size is None:
        sizes = [s for images, _ in pending.values() for s in _sizes(images)]
        if len(set(sizes)) > 1:
            size = auto_image_size(sizes)
            print(f"sskt: images of {len(set(sizes))} sizes, fitted to {size}x{size} squares (shorter side, then "
                  f"the centre; set image_size to choose)", file=sys.stderr, flush=True)
    out = {}
    for split, (images, labels) in pending.items():
        x = _fit(images, size) if isinstance(images, Tensor) else _stack([_decode(i, size) for i in images], split)
        out[split] = (x, _label_ids(labels, names, split))
    channels = {x.shape[1] for x, _ in out.values()}
    if channels == {1, 3}:  # grey tensors beside colour ones: grey repeated to RGB
        out = {k: (x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x, y) for k, (x, y) in out.items()}
    return out, names, size


def _collect(data: SplitData, split: str) -> tuple[Tensor | list, list | Tensor]:
    """One pass over a split: its images (a uint8 batch, or a list of PIL images, uint8 tensors and paths, to
    be sized) and its labels as given."""
    if isinstance(data, ImageTensorDataset):
        return data.images, data.targets
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor) and data[0].ndim == 4:
        if data[0].shape[1] not in (1, 3):
            raise SSKTError(f"{split}: images are (N, C, H, W) with 1 or 3 channels, got {tuple(data[0].shape)}")
        images, labels = _as_uint8(data[0], split), torch.as_tensor(data[1])
        if len(images) != len(labels):
            raise SSKTError(f"{split}: {len(images)} images but {len(labels)} labels")
        return images, labels
    try:
        n = len(data)
    except TypeError:
        raise SSKTError(f"{split}: expected a torch Dataset or a list of (image, label) pairs, got "
                        f"{type(data).__name__}") from None
    if n == 0:
        raise SSKTError(f"{split}: the split is empty; give it images")
    images, labels = [], []
    for i in range(n):
        item = data[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise SSKTError(f"{split}[{i}] is a {type(item).__name__}, not an (image, label) pair; make the "
                            f"dataset return (image, label)")
        images.append(_pending(item[0], f"{split}[{i}]"))
        labels.append(item[1])
    return images, labels


def _pending(x: Any, where: str) -> Any:
    """An image as given, readied for sizing: a path, an upright RGB PIL image or a uint8 (C, H, W) tensor."""
    from PIL import Image

    if isinstance(x, (str, os.PathLike)):
        return Path(x)
    if isinstance(x, Image.Image):
        return to_rgb(x)
    if isinstance(x, np.ndarray):
        if x.ndim == 3 and x.shape[-1] not in (1, 3) and x.shape[0] in (1, 3):
            raise SSKTError(f"{where}: a numpy image is (H, W, C), got {x.shape}; transpose it to (H, W, C)")
        x = torch.from_numpy(np.ascontiguousarray(x))
        x = x.permute(2, 0, 1) if x.ndim == 3 else x
    if isinstance(x, Tensor):
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            hint = "; permute(2, 0, 1) it" if x.ndim == 3 and x.shape[-1] in (1, 3) else ""
            raise SSKTError(f"{where}: a tensor image is (C, H, W) with 1 or 3 channels, got {tuple(x.shape)}{hint}")
        return _as_uint8(x, where)
    raise SSKTError(f"{where}: an image must be a PIL image, a tensor, a numpy array or a file path, got "
                    f"{type(x).__name__}")


def _as_uint8(x: Tensor, where: str) -> Tensor:
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool or x.numel() == 0:
        return x.to(torch.uint8)
    lo, hi = float(x.min()), float(x.max())
    if x.is_floating_point():
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise SSKTError(f"{where}: float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; drop "
                            f"transforms.Normalize (sskt normalises for each network itself)")
        return (x.float() * 255).round().clamp(0, 255).to(torch.uint8)
    if lo < 0 or hi > 255:
        raise SSKTError(f"{where}: integer images must be in 0..255, got values in [{lo:g}, {hi:g}]")
    return x.to(torch.uint8)


def _sizes(images: Tensor | list) -> list[tuple[int, int]]:
    """(width, height) of each image (a file's from its header)."""
    if isinstance(images, Tensor):
        return [(images.shape[-1], images.shape[-2])] * len(images)
    out = []
    for im in images:
        out.append(image_sizes([im])[0] if isinstance(im, Path) else
                   (im.shape[-1], im.shape[-2]) if isinstance(im, Tensor) else im.size)
    return out


def _decode(im: Any, size: int | None) -> Tensor:
    """One pending image as a uint8 (C, H, W) tensor at ``size`` (files and PIL images: the decoding policy)."""
    if isinstance(im, Tensor):
        return _fit(im[None], size)[0]
    arr = read_image(im, size) if isinstance(im, Path) else decode_image(im, size)
    return torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1)  # a copy: PIL arrays are read-only


def _fit(x: Tensor, size: int | None) -> Tensor:
    """A uint8 (N, C, H, W) batch by the policy of :func:`sskt.data.images.fit_square`: shorter side to
    ``size`` (antialiased bilinear), then the centre square."""
    h, w = x.shape[-2:]
    if size is None or (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    y = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return y[..., top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8).contiguous()


def _stack(images: list[Tensor], split: str) -> Tensor:
    shapes = {tuple(x.shape[1:]) for x in images}
    if len(shapes) > 1:  # only without a size: sizes were all alike, so this is a channel mix
        if {x.shape[0] for x in images} == {1, 3}:
            images = [x.expand(3, -1, -1) if x.shape[0] == 1 else x for x in images]
        else:
            raise SSKTError(f"{split}: images of shapes {sorted(shapes)[:3]}; give image_size to fit them")
    return torch.stack(images)


def _class_names(pending: dict[str, tuple[Any, Any]], classes: Sequence[str] | None,
                 own: Sequence[str] | None) -> list[str]:
    """The class names: given, the train split's own, the sorted names of string labels, or "0", "1", ..."""
    labels = {split: ys.tolist() if isinstance(ys, Tensor) else ys for split, (_, ys) in pending.items()}
    if all(isinstance(y, str) for ys in labels.values() for y in ys):
        return list(classes) if classes is not None else sorted({y for ys in labels.values() for y in ys})
    if classes is not None:
        return [str(c) for c in classes]
    if own is not None and all(isinstance(c, str) for c in own):
        return list(own)
    top = max(_label_id(y, None, f"{split}[{i}]") for split, ys in labels.items() for i, y in enumerate(ys))
    return [str(i) for i in range(top + 1)]


def _label_ids(labels: list | Tensor, classes: list[str], split: str) -> Tensor:
    if isinstance(labels, Tensor):
        if labels.is_floating_point() or labels.ndim != 1:
            raise SSKTError(f"{split}: labels must be a 1-D tensor of class indices, got {labels.dtype} "
                            f"{tuple(labels.shape)}")
        ids = labels.long()
    else:
        index = {c: i for i, c in enumerate(classes)}
        ids = torch.tensor([_label_id(y, index, f"{split}[{i}]") for i, y in enumerate(labels)], dtype=torch.long)
    bad = ids[(ids < 0) | (ids >= len(classes))]
    if len(bad):
        raise SSKTError(f"{split}: label {int(bad[0])} is outside the {len(classes)} classes; give classes=[...] "
                        f"with a name for every label")
    return ids


def _label_id(y: Any, index: dict[str, int] | None, where: str) -> int:
    """A label as a class index (``index``: class name -> index, for names)."""
    if isinstance(y, str):
        if index is None or y not in index:
            raise SSKTError(f"{where}: label {y!r} is not one of classes {list(index or [])[:6]}; add it to classes")
        return index[y]
    if isinstance(y, Tensor) and y.numel() == 1 and not y.is_floating_point():
        return int(y)
    if isinstance(y, (int, np.integer)) and not isinstance(y, bool):
        return int(y)
    raise SSKTError(f"{where}: a label must be a class index (int) or a class name (str), got {y!r}")
