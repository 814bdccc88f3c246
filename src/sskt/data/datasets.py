"""Datasets by name, decoded once into uint8 tensors.

Built in: ``cifar10``, ``cifar100``, ``stl10`` (torchvision formats), ``mnist``, ``fashion-mnist``
(IDX files), ``imagefolder`` (``root/<split>/<class>/<image>``) and ``digits`` (scikit-learn's 8x8
digits, bundled, for the quickstart). Register more with ``@DATASETS.register(name)``.
"""
from __future__ import annotations

import contextvars
import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from sskt.config import DataConfig
from sskt.data.tensor_dataset import ImageSplits, ImageTensorDataset
from sskt.errors import SSKTError
from sskt.registry import Registry

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp"}

DatasetBuilder = Callable[[DataConfig], ImageSplits]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")


def per_class_indices(labels: Tensor, n: int | None, seed: int, classes: list[str], split: str) -> Tensor:
    """Seeded choice of ``n`` indices per class (all indices when ``n`` is None), sorted.

    Example:
        >>> per_class_indices(torch.tensor([0, 0, 1, 1, 1]), 1, 0, ["a", "b"], "train").tolist()  # doctest: +SKIP
        [1, 3]
    """
    if n is None:
        return torch.arange(len(labels))
    if n < 1:
        raise SSKTError(f"per_class must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(len(classes)):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < n:
            raise SSKTError(
                f"class {classes[c]!r} has {len(idx)} {split} images, fewer than the {n} per class asked; "
                f"lower per_class"
            )
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(chosen).sort().values


@dataclass
class TrainPartition:
    """Indices of the training split's images: labelled, validation and unlabelled (disjoint, sorted)."""

    labeled: Tensor
    val: Tensor | None
    unlabeled: Tensor | None


# What the caller of load_data needs at least (a training batch), checked once the labelled subset is known.
_MIN_TRAIN_IMAGES: contextvars.ContextVar[int] = contextvars.ContextVar("sskt_min_train_images", default=0)


def partition_train(labels: Tensor, cfg: DataConfig, classes: list[str]) -> TrainPartition:
    """Split the training split into the labelled subset, the validation split and the unlabelled pool.

    The labelled subset is the same with or without a validation split or unlabelled images (it is
    drawn first, with ``subset_seed``), so runs with and without them train on the same labels.
    """
    n = len(labels)
    val = None
    if cfg.per_class is None and cfg.val_per_class is not None:
        # Everything is labelled: the validation images come out of the labelled ones.
        val = per_class_indices(labels, cfg.val_per_class, cfg.subset_seed + 7919, classes, cfg.train_split)
        labeled = _without(torch.arange(n), val)
    else:
        labeled = per_class_indices(labels, cfg.per_class, cfg.subset_seed, classes, cfg.train_split)
        if cfg.val_per_class is not None:
            rest = _without(torch.arange(n), labeled)
            try:
                pick = per_class_indices(labels[rest], cfg.val_per_class, cfg.subset_seed + 7919, classes,
                                         cfg.train_split)
            except SSKTError:
                raise SSKTError(f"data.val_per_class={cfg.val_per_class}: some class has too few training images "
                                f"outside the {cfg.per_class} labelled per class; lower val_per_class") from None
            val = rest[pick]
    wanted = _MIN_TRAIN_IMAGES.get()
    if len(labeled) < wanted:  # known before anything is decoded
        raise SSKTError(f"the training split has {len(labeled)} labelled images, fewer than train.batch_size="
                        f"{wanted}; lower the batch size")
    unlabeled = None
    if cfg.unlabeled == "rest":
        taken = labeled if val is None else torch.cat([labeled, val])
        unlabeled = _without(torch.arange(n), taken)
        if len(unlabeled) == 0:
            raise SSKTError("data.unlabeled=rest but every training image is labelled; set data.per_class")
        if cfg.unlabeled_count is not None:
            if cfg.unlabeled_count > len(unlabeled):
                raise SSKTError(f"data.unlabeled_count={cfg.unlabeled_count} but only {len(unlabeled)} training "
                                f"images are left unlabelled; lower unlabeled_count")
            g = torch.Generator().manual_seed(cfg.subset_seed + 104729)
            unlabeled = unlabeled[torch.randperm(len(unlabeled), generator=g)[:cfg.unlabeled_count]].sort().values
    return TrainPartition(labeled, val, unlabeled)


def _without(indices: Tensor, drop: Tensor) -> Tensor:
    keep = torch.ones(int(indices.max()) + 1 if len(indices) else 0, dtype=torch.bool)
    keep[drop] = False
    return indices[keep[indices]]


def _require_root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise SSKTError(f"dataset {cfg.dataset!r} needs data.root (a local folder)")
    root = Path(cfg.root).expanduser()
    if not root.exists() and not cfg.download:
        raise SSKTError(f"data root {root} does not exist; fix data.root (or set data.download: true where allowed)")
    return root


def _finish(cfg: DataConfig, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
            classes: list[str], **meta: object) -> ImageSplits:
    """Subset, grey -> RGB, resize; shared by the in-memory datasets."""
    part = partition_train(train_y, cfg, classes)
    te = per_class_indices(test_y, cfg.test_per_class, cfg.subset_seed, classes, cfg.test_split)
    tr = part.labeled
    splits = ImageSplits(ImageTensorDataset(_shape(train_x[tr], cfg), train_y[tr].long()),
                         ImageTensorDataset(_shape(test_x[te], cfg), test_y[te].long()), classes, meta=dict(meta))
    if part.val is not None:
        splits.val = ImageTensorDataset(_shape(train_x[part.val], cfg), train_y[part.val].long())
    if part.unlabeled is not None:
        splits.unlabeled = _shape(train_x[part.unlabeled], cfg)
    return splits


def _shape(x: Tensor, cfg: DataConfig) -> Tensor:
    if cfg.grayscale_to_rgb and x.shape[1] == 1:
        x = x.expand(-1, 3, *x.shape[2:]).contiguous()
    if cfg.image_size is not None and (x.shape[-1] != cfg.image_size or x.shape[-2] != cfg.image_size):
        x = torch.nn.functional.interpolate(x.float(), size=(cfg.image_size, cfg.image_size), mode="bilinear",
                                            antialias=True, align_corners=False).round().clamp(0, 255).byte()
    return x


def _download(cfg: DataConfig, cls_name: str, root: Path) -> None:
    """Fetch a torchvision dataset into ``root``; only ever called when ``data.download`` is true."""
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    for kwargs in ({"split": "train"}, {"split": "test"}) if cls_name == "STL10" else ({"train": True}, {"train": False}):
        cls(str(root), download=True, **kwargs)


def _unpickle(path: Path) -> dict:
    import pickle

    if not path.is_file():
        raise SSKTError(f"{path} not found; point data.root at the folder holding {path.parent.name}/ "
                        f"(or set data.download: true on a machine that is online)")
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def _cifar(folder: str, train_files: list[str], test_file: str, label_key: str, meta: tuple[str, str]) -> DatasetBuilder:
    """CIFAR-10/100 in torchvision's (python pickle) layout: ``root/<folder>/data_batch_*`` etc."""

    def build(cfg: DataConfig) -> ImageSplits:
        root = _require_root(cfg)
        if cfg.download:
            _download(cfg, "CIFAR10" if folder.startswith("cifar-10-") else "CIFAR100", root)
        base = root / folder

        def read(files: list[str]) -> tuple[Tensor, Tensor]:
            parts = [_unpickle(base / f) for f in files]
            x = np.concatenate([p["data"] for p in parts]).reshape(-1, 3, 32, 32)
            y = np.concatenate([np.asarray(p[label_key]) for p in parts])
            return torch.from_numpy(x.copy()), torch.from_numpy(y)

        splits = {"train": train_files, "test": [test_file]}
        for split in (cfg.train_split, cfg.test_split):
            if split not in splits:
                raise SSKTError(f"{folder} has splits train and test, not {split!r}")
        classes = list(_unpickle(base / meta[0])[meta[1]])
        return _finish(cfg, *read(splits[cfg.train_split]), *read(splits[cfg.test_split]), classes)

    return build


DATASETS.register("cifar10")(_cifar("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                                    "labels", ("batches.meta", "label_names")))
DATASETS.register("cifar100")(_cifar("cifar-100-python", ["train"], "test", "fine_labels", ("meta", "fine_label_names")))


@DATASETS.register("stl10")
def stl10(cfg: DataConfig) -> ImageSplits:
    """STL-10's labelled splits in the binary layout (``root/stl10_binary/{train,test}_{X,y}.bin``)."""
    root = _require_root(cfg)
    if cfg.download:
        _download(cfg, "STL10", root)
    base = root / "stl10_binary"

    def read(split: str) -> tuple[Tensor, Tensor]:
        xf, yf = base / f"{split}_X.bin", base / f"{split}_y.bin"
        for f in (xf, yf):
            if not f.is_file():
                raise SSKTError(f"{f} not found; point data.root at the folder holding stl10_binary/")
        x = np.fromfile(xf, dtype=np.uint8).reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # stored column-major
        y = np.fromfile(yf, dtype=np.uint8).astype(np.int64) - 1  # labels are 1..10 on disk
        return torch.from_numpy(x.copy()), torch.from_numpy(y)

    names = (base / "class_names.txt").read_text().split() if (base / "class_names.txt").is_file() else \
        [str(i) for i in range(10)]
    return _finish(cfg, *read(cfg.train_split), *read(cfg.test_split), names)


def read_idx(path: Path) -> Tensor:
    """An IDX file (MNIST format, optionally gzipped) as a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if (magic >> 8) != 0x08:
        raise SSKTError(f"{path} is not a uint8 IDX file; re-download it")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise SSKTError(f"{path} is truncated ({arr.size} of {int(np.prod(dims))} bytes); re-download it")
    return torch.from_numpy(arr.reshape(dims).copy())


def _idx_dataset(classes: list[str]) -> DatasetBuilder:
    def build(cfg: DataConfig) -> ImageSplits:
        root = _require_root(cfg)

        def find(stem: str) -> Path:
            for name in (stem, stem + ".gz"):
                if (root / name).is_file():
                    return root / name
            raise SSKTError(f"{stem}(.gz) not found in {root}; point data.root at the folder of the IDX files")

        parts = []
        for prefix in ("train", "t10k"):
            parts += [read_idx(find(f"{prefix}-images-idx3-ubyte")).unsqueeze(1), read_idx(find(f"{prefix}-labels-idx1-ubyte"))]
        return _finish(cfg, *parts, classes)

    return build


DATASETS.register("mnist")(_idx_dataset([str(i) for i in range(10)]))
DATASETS.register("fashion-mnist")(_idx_dataset(
    ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]))


@DATASETS.register("digits")
def digits(cfg: DataConfig) -> ImageSplits:
    """scikit-learn's 1,797 8x8 digits, split by a fixed seed into three disjoint parts:
    ``source`` (40%, for pretraining a source), ``train`` (30%) and ``test`` (30%)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    n_src, n_tr = int(0.4 * len(y)), int(0.3 * len(y))
    parts = {"source": perm[:n_src], "train": perm[n_src:n_src + n_tr], "test": perm[n_src + n_tr:]}
    for split in (cfg.train_split, cfg.test_split):
        if split not in parts:
            raise SSKTError(f"digits has splits {sorted(parts)}, not {split!r}")
    tr, te = parts[cfg.train_split], parts[cfg.test_split]
    return _finish(cfg, x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)])


def _cache_dir() -> Path:
    return Path(os.environ.get("SSKT_CACHE_DIR", Path.home() / ".cache" / "sskt"))


def decode_images(paths: list[Path], size: int | None) -> Tensor:
    """Decode image files to a uint8 (N,3,H,W) tensor, cached on disk by file list, size and mtime."""
    from PIL import Image, UnidentifiedImageError

    h = hashlib.sha256(str(size).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = _cache_dir() / "decoded" / f"{h.hexdigest()[:24]}.npy"
    if cache.is_file():
        try:
            return torch.from_numpy(np.load(cache))
        except (ValueError, OSError, EOFError):
            cache.unlink(missing_ok=True)  # a damaged cache is rebuilt, never used
    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                arrays.append(np.asarray(im))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise SSKTError(f"corrupt image file {p} ({err.__class__.__name__}); delete or replace it") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise SSKTError(f"images have different sizes {sorted(shapes)[:3]}; set data.image_size to resize them")
    out = np.stack(arrays).transpose(0, 3, 1, 2).copy() if arrays else np.zeros((0, 3, size or 1, size or 1), np.uint8)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, cache)
    return torch.from_numpy(out)


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> ImageSplits:
    """``root/<split>/<class>/<image>``; classes sorted by name as torchvision's ImageFolder does.
    Only the selected subset is decoded, once; decoded tensors are cached (``SSKT_CACHE_DIR``)."""
    root = _require_root(cfg)

    def listing(split: str) -> tuple[list[Path], list[str]]:
        d = root / split
        if not d.is_dir():
            raise SSKTError(f"{d} not found: an imagefolder root needs {split}/<class>/<image> folders")
        classes = sorted(c.name for c in d.iterdir() if c.is_dir())
        if not classes:
            raise SSKTError(f"{d} has no class folders")
        return sorted(p for c in classes for p in (d / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), classes

    files, classes = listing(cfg.train_split)
    labels = torch.tensor([classes.index(p.parent.name) for p in files], dtype=torch.long)
    empty = [c for c, n in zip(classes, torch.bincount(labels, minlength=len(classes)).tolist()) if n == 0]
    if empty:  # a class folder without images would train as a class that never occurs
        raise SSKTError(f"class folder(s) {empty[:5]} under {root / cfg.train_split} hold no images "
                        f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folders")
    part = partition_train(labels, cfg, classes)

    def decoded(keep: Tensor) -> ImageTensorDataset:
        return ImageTensorDataset(_shape(decode_images([files[i] for i in keep.tolist()], cfg.image_size), cfg),
                                  labels[keep])

    train = decoded(part.labeled)
    test_files, test_classes = listing(cfg.test_split)
    if test_classes != classes:
        raise SSKTError(f"{root}/{cfg.test_split} has different class folders from {root}/{cfg.train_split}")
    test_labels = torch.tensor([classes.index(p.parent.name) for p in test_files])
    keep = per_class_indices(test_labels, cfg.test_per_class, cfg.subset_seed, classes, cfg.test_split)
    test = ImageTensorDataset(_shape(decode_images([test_files[i] for i in keep.tolist()], cfg.image_size), cfg),
                              test_labels[keep])
    splits = ImageSplits(train, test, classes)
    if part.val is not None:
        splits.val = decoded(part.val)
    if part.unlabeled is not None:
        splits.unlabeled = decoded(part.unlabeled).images
    return splits


def load_data(cfg: DataConfig, min_train_images: int = 0) -> ImageSplits:
    """The train and test splits of ``cfg.dataset``, subset and decoded, with the validation split and the
    unlabelled images when the config asks for them. Fewer than ``min_train_images`` labelled training
    images (a batch) is an error raised, for datasets that subset before decoding, before any decoding."""
    token = _MIN_TRAIN_IMAGES.set(min_train_images)
    try:
        splits = DATASETS.get(cfg.dataset)(cfg)
    finally:
        _MIN_TRAIN_IMAGES.reset(token)
    if cfg.val_per_class is not None and splits.val is None:
        raise SSKTError(f"dataset {cfg.dataset!r} does not support data.val_per_class yet; drop it")
    if cfg.unlabeled is not None and cfg.unlabeled != "rest":
        splits.unlabeled = unlabeled_folder(cfg, tuple(splits.train.images.shape[1:]))
    elif cfg.unlabeled == "rest" and splits.unlabeled is None:
        raise SSKTError(f"dataset {cfg.dataset!r} does not support data.unlabeled=rest; give a folder of images")
    return splits


def unlabeled_folder(cfg: DataConfig, shape: tuple[int, ...]) -> Tensor:
    """Every image under the folder ``cfg.unlabeled`` (recursively; any size, resized to ``shape``'s
    height and width), or a seeded ``cfg.unlabeled_count`` of them."""
    root = Path(str(cfg.unlabeled)).expanduser()
    if not root.is_dir():
        raise SSKTError(f"data.unlabeled: {root} is not a folder; give 'rest' or a folder of images")
    if len(shape) != 3:
        raise SSKTError("data.unlabeled folders hold images; video targets can't use them")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SSKTError(f"data.unlabeled: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    if cfg.unlabeled_count is not None:
        if cfg.unlabeled_count > len(files):
            raise SSKTError(f"data.unlabeled_count={cfg.unlabeled_count} but {root} holds {len(files)} images")
        g = torch.Generator().manual_seed(cfg.subset_seed + 104729)
        files = [files[i] for i in torch.randperm(len(files), generator=g)[:cfg.unlabeled_count].sort().values]
    if shape[-1] != shape[-2]:
        raise SSKTError("data.unlabeled folders need square training images; set data.image_size")
    images = decode_images(files, shape[-1])
    if shape[0] == 1:
        images = images[:, :1]  # grey training images: keep one channel (the first of the decoded RGB)
    return images
