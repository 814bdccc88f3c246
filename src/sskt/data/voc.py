"""Multi-label image data: PASCAL VOC 2007 classification and a generic folder + CSV format.

Both loaders decode every image once, resize it to a fixed size and return a :class:`MultiLabelSplit`
of uint8 tensors, following the project's "decode once to uint8" convention. Memory cost is
N x 3 x H x W bytes: VOC 2007 trainval (5,011 images) at 224 px is about 750 MB; use a smaller
``size`` (e.g. 128 px, 250 MB) on small machines.

"Difficult" VOC objects go to an ignore mask, as in the VOC devkit's ``<class>_<split>.txt`` files
(label 0): an image whose only instances of a class are difficult is neither positive nor negative
for that class. :func:`sskt.metrics.classwise_map` takes that mask; a training loss can use it to
drop those entries (the official SSKT code instead treats them as negatives).
"""
from __future__ import annotations

import csv
import os
import re
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from sskt.errors import SSKTError

# The standard VOC order (alphabetical), which is also the devkit's and every paper's column order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
VOC_SPLITS: tuple[str, ...] = ("train", "val", "trainval", "test")

Size = Union[int, tuple[int, int]]
PathLike = Union[str, os.PathLike]


@dataclass
class MultiLabelSplit:
    """One split of a multi-label image dataset, decoded.

    Attributes:
        images: uint8 (N, 3, H, W).
        targets: float32 (N, L) multi-hot, 1.0 where the class is present.
        ignore: bool (N, L), True where the entry must be left out of losses and metrics
            (VOC: only "difficult" instances of that class in the image).
        classes: the L class names, in column order.
        ids: the N image identifiers (VOC image ids, or the CSV's ``image`` column).
    """

    images: Tensor
    targets: Tensor
    ignore: Tensor
    classes: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def _hw(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h <= 0 or w <= 0:
        raise SSKTError(f"image size must be positive, got {size!r}")
    return int(h), int(w)


def _decode_one(path: Path, hw: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            # convert() forces the full decode, so truncated files fail here and not later.
            im = im.convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR)
            return np.array(im, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)
    except FileNotFoundError:
        raise SSKTError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise SSKTError(f"cannot decode image {path}: {e}") from None


def decode_images(paths: Sequence[Path], size: Size = 224, workers: int = 4) -> Tensor:
    """Decode image files to one uint8 (N, 3, H, W) tensor, resized (aspect not kept) to ``size``.

    Args:
        paths: image files (any format PIL reads).
        size: output ``H = W = size``, or ``(H, W)``.
        workers: decoding threads (PIL releases the GIL while decoding and resizing).

    Raises:
        SSKTError: naming the first file that is missing or cannot be decoded.
    """
    hw = _hw(size)
    out = torch.empty((len(paths), 3, *hw), dtype=torch.uint8)
    if not paths:
        return out

    def fill(i: int) -> None:
        out[i] = torch.from_numpy(_decode_one(Path(paths[i]), hw)).permute(2, 0, 1)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(fill, range(len(paths))):  # iterating re-raises the first error
            pass
    return out


# ----------------------------------------------------------------------------- PASCAL VOC 2007


def find_voc2007(root: PathLike) -> Path:
    """Locate the ``VOC2007`` folder given it, its ``VOCdevkit`` parent, or the folder above that."""
    root = Path(root).expanduser()
    for cand in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (cand / "Annotations").is_dir() and (cand / "ImageSets" / "Main").is_dir():
            return cand
    raise SSKTError(
        f"no PASCAL VOC 2007 folder under {root}: expected VOCdevkit/VOC2007/"
        "{JPEGImages,Annotations,ImageSets/Main}"
    )


def parse_voc_annotation(path: PathLike, classes: Sequence[str] = VOC_CLASSES) -> tuple[Tensor, Tensor]:
    """Read one VOC XML annotation into ``(target, ignore)``, each of shape (L,).

    A class is positive if the image has at least one non-difficult instance of it, ignored if all
    its instances are difficult, negative otherwise.

    Raises:
        SSKTError: if the file is missing or malformed, or names a class not in ``classes``.
    """
    path = Path(path)
    index = {c: i for i, c in enumerate(classes)}
    target = torch.zeros(len(classes), dtype=torch.float32)
    difficult_only = torch.zeros(len(classes), dtype=torch.bool)
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise SSKTError(f"annotation file not found: {path}") from None
    except ET.ParseError as e:
        raise SSKTError(f"malformed VOC annotation {path}: {e}") from None
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise SSKTError(f"{path}: unknown class {name!r}; known: {', '.join(classes)}")
        c = index[name]
        # <difficult> is absent in some VOC 2012 files; absent means not difficult.
        if (obj.findtext("difficult") or "0").strip() == "1":
            difficult_only[c] = True
        else:
            target[c] = 1.0
    ignore = difficult_only & (target == 0)
    return target, ignore


def read_voc_labels(root: PathLike, split: str = "trainval") -> tuple[list[str], Tensor, Tensor]:
    """Image ids, multi-hot targets (N, 20) and ignore mask (N, 20) of a VOC 2007 split, no pixels."""
    if split not in VOC_SPLITS:
        raise SSKTError(f"unknown VOC split {split!r}; known: {', '.join(VOC_SPLITS)}")
    voc = find_voc2007(root)
    list_file = voc / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        raise SSKTError(f"VOC split file not found: {list_file}")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    targets = torch.zeros(len(ids), len(VOC_CLASSES))
    ignore = torch.zeros(len(ids), len(VOC_CLASSES), dtype=torch.bool)
    for i, image_id in enumerate(ids):
        targets[i], ignore[i] = parse_voc_annotation(voc / "Annotations" / f"{image_id}.xml")
    return ids, targets, ignore


def load_voc2007(root: PathLike, split: str = "trainval", size: Size = 224, workers: int = 4) -> MultiLabelSplit:
    """PASCAL VOC 2007 classification: decoded images, 20-class multi-hot targets, difficult mask.

    Args:
        root: the ``VOC2007`` folder, its ``VOCdevkit`` parent, or the folder holding ``VOCdevkit``.
        split: ``train``, ``val``, ``trainval`` or ``test`` (``ImageSets/Main/<split>.txt``).
        size: images are resized to ``size x size`` (or ``(H, W)``), aspect not kept.
        workers: decoding threads.

    Example:
        >>> s = load_voc2007("~/data/VOCdevkit", "test", size=224)  # doctest: +SKIP
        >>> s.images.shape, s.targets.shape, int(s.ignore.sum())      # doctest: +SKIP
        (torch.Size([4952, 3, 224, 224]), torch.Size([4952, 20]), ...)
    """
    ids, targets, ignore = read_voc_labels(root, split)
    voc = find_voc2007(root)
    images = decode_images([voc / "JPEGImages" / f"{i}.jpg" for i in ids], size, workers)
    return MultiLabelSplit(images, targets, ignore, list(VOC_CLASSES), ids)


# ----------------------------------------------------------------------------- folder + CSV

_LABEL_SEP = re.compile(r"[;\s]+")


def load_multilabel_csv(
    csv_path: PathLike,
    image_dir: PathLike,
    size: Size = 224,
    classes: Sequence[str] | None = None,
    workers: int = 4,
) -> MultiLabelSplit:
    """A generic multi-label dataset: a folder of images plus a CSV with columns ``image,labels``.

    ``image`` is a path relative to ``image_dir``; ``labels`` holds class names separated by spaces
    or ``;`` (an empty field means no label). Example CSV::

        image,labels
        a.jpg,cat dog
        b.png,person;bicycle

    Args:
        csv_path: the CSV file (with a header row).
        image_dir: the folder the ``image`` paths are relative to.
        size: output size, as in :func:`decode_images`.
        classes: the column order. Default: the sorted set of labels in this CSV. Pass the training
            split's ``classes`` when loading its test split so the columns agree.
        workers: decoding threads.

    Raises:
        SSKTError: missing columns, a label not in ``classes``, or an unreadable image.
    """
    csv_path, image_dir = Path(csv_path), Path(image_dir)
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [h.strip() for h in (reader.fieldnames or [])]
            if "image" not in fields or "labels" not in fields:
                raise SSKTError(f"{csv_path}: header must have columns 'image,labels', got {fields}")
            rows = [{k.strip(): (v or "") for k, v in r.items() if k is not None} for r in reader]
    except FileNotFoundError:
        raise SSKTError(f"label file not found: {csv_path}") from None
    ids = [r["image"].strip() for r in rows]
    labels = [[t for t in _LABEL_SEP.split(r["labels"].strip()) if t] for r in rows]
    if classes is None:
        classes = sorted({t for ls in labels for t in ls})
    index = {c: i for i, c in enumerate(classes)}
    targets = torch.zeros(len(ids), len(classes))
    for i, ls in enumerate(labels):
        for t in ls:
            if t not in index:
                raise SSKTError(f"{csv_path}: image {ids[i]!r} has label {t!r} not in classes {list(classes)}")
            targets[i, index[t]] = 1.0
    images = decode_images([image_dir / i for i in ids], size, workers)
    ignore = torch.zeros_like(targets, dtype=torch.bool)
    return MultiLabelSplit(images, targets, ignore, list(classes), ids)
