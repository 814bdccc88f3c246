"""Datasets by name, decoded once into uint8 tensors.

Built in: ``cifar10``, ``cifar100``, ``stl10`` (torchvision formats), ``mnist``, ``fashion-mnist``
(IDX files), ``imagefolder`` (folders of class folders, or a CSV file; :mod:`sskt.data.folder`) and
``digits`` (scikit-learn's 8x8 digits, bundled, for the quickstart). Register more with
``@DATASETS.register(name)``.
"""
from __future__ import annotations

import contextvars
import dataclasses
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from sskt.config import DataConfig
from sskt.data.folder import decode_size, imbalance_notice, labelled_files, list_images, notice
from sskt.data.images import IMAGE_SUFFIXES, decode_images
from sskt.data.images import cache_dir as _cache_dir  # noqa: F401  (sskt.data.extra_datasets uses it)
from sskt.data.overlap import check_test_overlap
from sskt.data.tensor_dataset import ImageSplits, ImageTensorDataset
from sskt.errors import SSKTError
from sskt.registry import Registry

DatasetBuilder = Callable[[DataConfig], ImageSplits]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")


def per_class_indices(labels: Tensor, n: int | None, seed: int, classes: list[str], split: str,
                      key: str = "per_class") -> Tensor:
    """Seeded choice of exactly ``n`` indices per class (all indices when ``n`` is None), sorted; too few
    images in a class is an error naming the largest ``n`` that works (``key``: the setting to change).

    Example:
        >>> per_class_indices(torch.tensor([0, 0, 1, 1, 1]), 1, 0, ["a", "b"], "train").tolist()  # doctest: +SKIP
        [1, 3]
    """
    if n is None:
        return torch.arange(len(labels))
    if n < 1:
        raise SSKTError(f"per_class must be >= 1, got {n}")
    counts = torch.bincount(labels.long(), minlength=len(classes)).tolist() if len(labels) else [0] * len(classes)
    short = [c for c in range(len(classes)) if counts[c] < n]
    if short:
        low = min(range(len(classes)), key=counts.__getitem__)
        fix = (f"set data.{key} to {counts[low]} or less (class {classes[low]!r} has {counts[low]})" if counts[low]
               else f"class {classes[low]!r} has none, so add {split} images to it or remove it")
        raise SSKTError(f"class {classes[short[0]]!r} has {counts[short[0]]} {split} images, fewer than the {n} "
                        f"per class asked; {fix}")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(len(classes)):
        idx = (labels == c).nonzero().flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(chosen).sort().values


def _up_to_per_class(labels: Tensor, n: int, seed: int, classes: list[str], keep: int) -> tuple[Tensor, list]:
    """Seeded choice of up to ``n`` indices per class, leaving ``keep`` of each class unchosen; with the
    (class, count) of every class that gave fewer. Draws as :func:`per_class_indices` does, so where
    every class has enough, the choice is the same."""
    g = torch.Generator().manual_seed(seed)
    chosen, short = [], []
    for c in range(len(classes)):
        idx = (labels == c).nonzero().flatten()
        take = max(0, min(n, len(idx) - keep))
        if take < n:
            short.append((classes[c], take))
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:take]])
    return torch.cat(chosen).sort().values, short


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
    ``val_per_class`` and ``unlabeled_count`` are "up to": a class with fewer to spare gives what it has
    (one notice line), and every class keeps at least one labelled image.
    """
    n = len(labels)
    val = None
    if cfg.val_per_class is not None:
        whole = cfg.per_class is None  # everything is labelled: the validation images come out of the labelled ones
        labeled = torch.arange(n) if whole else per_class_indices(labels, cfg.per_class, cfg.subset_seed, classes,
                                                                   cfg.train_split)
        rest = torch.arange(n) if whole else _without(torch.arange(n), labeled)
        pick, short = _up_to_per_class(labels[rest], cfg.val_per_class, cfg.subset_seed + 7919, classes, int(whole))
        val = rest[pick]
        spare = "keeping one training image each" if whole else f"outside the {cfg.per_class} labelled per class"
        if len(val) == 0:
            raise SSKTError(f"data.val_per_class={cfg.val_per_class}: no class has images to spare for validation "
                            f"({spare}); " + ("add images" if whole else "lower data.per_class"))
        if short:
            name, k = min(short, key=lambda s: s[1])
            notice(f"data.val_per_class={cfg.val_per_class} but {len(short)} of {len(classes)} classes have fewer "
                   f"images to spare ({spare}; fewest: {name!r} with {k}); validating on the {len(val)} there are")
        if whole:
            labeled = _without(labeled, val)
    else:
        labeled = per_class_indices(labels, cfg.per_class, cfg.subset_seed, classes, cfg.train_split)
    wanted = _MIN_TRAIN_IMAGES.get()
    if len(labeled) < wanted:  # known before anything is decoded
        raise SSKTError(f"the training split has {len(labeled)} labelled images, fewer than train.batch_size="
                        f"{wanted}; lower the batch size")
    unlabeled = None
    if cfg.unlabeled == "rest":
        taken = labeled if val is None else torch.cat([labeled, val])
        unlabeled = _without(torch.arange(n), taken)
        if len(unlabeled) == 0:
            fix = ("set data.per_class (labelled images per class) to leave some unlabelled" if cfg.per_class is None
                   else f"lower data.per_class={cfg.per_class}" + (f" or data.val_per_class={cfg.val_per_class}"
                                                                    if cfg.val_per_class else ""))
            raise SSKTError(f"data.unlabeled=rest but every training image is labelled; {fix}, or give "
                            f"data.unlabeled a folder of unlabelled images")
        if cfg.unlabeled_count is not None:
            g = torch.Generator().manual_seed(cfg.subset_seed + 104729)
            unlabeled = unlabeled[torch.randperm(len(unlabeled), generator=g)[:cfg.unlabeled_count]].sort().values
            _count_notice(cfg.unlabeled_count, n - len(taken))
    imbalance_notice(labels[labeled], classes)
    return TrainPartition(labeled, val, unlabeled)


def _count_notice(asked: int, there: int) -> None:
    if asked > there:
        notice(f"data.unlabeled_count={asked} but {there} images are unlabelled; using all {there}")


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
    te = per_class_indices(test_y, cfg.test_per_class, cfg.subset_seed, classes, cfg.test_split, "test_per_class")
    tr = part.labeled
    splits = ImageSplits(ImageTensorDataset(_shape(train_x[tr], cfg), train_y[tr].long()),
                         ImageTensorDataset(_shape(test_x[te], cfg), test_y[te].long()), classes, meta=dict(meta))
    # Each stream's indices into its split: how a message names an image (sskt.data.overlap).
    splits.meta["rows"] = {"train": tr, "test": te, "val": part.val, "unlabeled": part.unlabeled}
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


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> ImageSplits:
    """Folders of class folders or a CSV file (:func:`sskt.data.folder.labelled_files`); classes sorted by
    name as torchvision's ImageFolder does. Where the data has no test split, a seeded, stratified one is
    made (``data.test_fraction``, ``data.val_fraction``, ``data.split_file``). Only the selected subset is
    decoded, once, by the one decoding policy; decoded tensors are cached (``SSKT_CACHE_DIR``)."""
    root = _require_root(cfg)
    data = labelled_files(cfg, root)
    classes = data.classes
    files, labels = data.part("train")
    val_files, val_labels = data.part("val")
    test_files, test_labels = data.part("test")
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    if 0 in counts:
        raise SSKTError(f"class {classes[counts.index(0)]!r} has no training images in {root}; add some or remove it")
    if not test_files:
        raise SSKTError(f"{root} marks no image as test; mark some, or drop its split column so that sskt splits it")
    if val_files and cfg.val_per_class is not None:
        raise SSKTError(f"the split of {root} has a val part and data.val_per_class is set; drop data.val_per_class")
    part = partition_train(labels, dataclasses.replace(cfg, val_per_class=None) if val_files else cfg, classes)
    size = decode_size(files, cfg.image_size)

    def decoded(paths: list[Path], targets: Tensor) -> ImageTensorDataset:
        return ImageTensorDataset(_shape(decode_images(paths, size), cfg), targets)

    def chosen(keep: Tensor) -> ImageTensorDataset:
        return decoded([files[i] for i in keep.tolist()], labels[keep])

    keep = per_class_indices(test_labels, cfg.test_per_class, cfg.subset_seed, classes, cfg.test_split,
                             "test_per_class")
    # Each stream's files, in order: how a message names an image (sskt.data.overlap).
    picked = {k: None if v is None else [files[i] for i in v.tolist()] for k, v in vars(part).items()}
    named = {"train": picked["labeled"], "test": [test_files[i] for i in keep.tolist()],
             "val": val_files or picked["val"], "unlabeled": picked["unlabeled"]}
    splits = ImageSplits(chosen(part.labeled), decoded(named["test"], test_labels[keep]), classes,
                         meta={"image_size": size, "files": named})
    if val_files:
        splits.val = decoded(val_files, val_labels)
    elif part.val is not None:
        splits.val = chosen(part.val)
    if part.unlabeled is not None:
        splits.unlabeled = chosen(part.unlabeled).images
    return splits


# The built-in datasets that read nothing from data.options (the others check the keys they are given).
TAKES_NO_OPTIONS = frozenset({"cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "imagefolder", "digits"})


def load_data(cfg: DataConfig, min_train_images: int = 0) -> ImageSplits:
    """The train and test splits of ``cfg.dataset``, subset and decoded, with the validation split and the
    unlabelled images when the config asks for them. Fewer than ``min_train_images`` labelled training
    images (a batch) is an error raised, for datasets that subset before decoding, before any decoding."""
    if cfg.options and cfg.dataset in TAKES_NO_OPTIONS:  # never silently ignored
        raise SSKTError(f"dataset {cfg.dataset!r} takes no data.options (got {sorted(cfg.options)}); remove them "
                        f"(its settings are data.* keys: sskt train --help lists them)")
    token = _MIN_TRAIN_IMAGES.set(min_train_images)
    try:
        splits = DATASETS.get(cfg.dataset)(cfg)
    finally:
        _MIN_TRAIN_IMAGES.reset(token)
    if cfg.val_per_class is not None and splits.val is None:
        raise SSKTError(f"dataset {cfg.dataset!r} does not support data.val_per_class yet; drop it")
    if cfg.val_fraction is not None and splits.val is None:
        raise SSKTError(f"data.val_fraction applies to image folders and CSV files (dataset: imagefolder); for "
                        f"{cfg.dataset!r} use data.val_per_class")
    if cfg.unlabeled is not None and cfg.unlabeled != "rest":
        splits.unlabeled, files = _unlabeled_folder(cfg, tuple(splits.train.images.shape[1:]))
        splits.meta.setdefault("files", {})["unlabeled"] = files
    elif cfg.unlabeled == "rest" and splits.unlabeled is None:
        raise SSKTError(f"dataset {cfg.dataset!r} does not support data.unlabeled=rest; give a folder of images")
    check_test_overlap(splits, cfg)  # here every stream is known, whichever dataset built them
    return splits


def unlabeled_folder(cfg: DataConfig, shape: tuple[int, ...]) -> Tensor:
    """Every image under the folder ``cfg.unlabeled`` (at any depth, hidden files skipped; any size,
    decoded at ``shape``'s square size by the decoding policy), or a seeded ``cfg.unlabeled_count``."""
    return _unlabeled_folder(cfg, shape)[0]


def _unlabeled_folder(cfg: DataConfig, shape: tuple[int, ...]) -> tuple[Tensor, list[Path]]:
    root = Path(str(cfg.unlabeled)).expanduser()
    if not root.is_dir():
        raise SSKTError(f"data.unlabeled: {root} is not a folder; give 'rest' or a folder of images")
    if len(shape) != 3:
        raise SSKTError("data.unlabeled folders hold images; video targets can't use them")
    files = list_images(root)
    if not files:
        raise SSKTError(f"data.unlabeled: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    if cfg.unlabeled_count is not None:
        g = torch.Generator().manual_seed(cfg.subset_seed + 104729)
        _count_notice(cfg.unlabeled_count, len(files))
        files = [files[i] for i in torch.randperm(len(files), generator=g)[:cfg.unlabeled_count].sort().values]
    if shape[-1] != shape[-2]:
        raise SSKTError("data.unlabeled folders need square training images; set data.image_size")
    images = decode_images(files, shape[-1])
    if shape[0] == 1:
        images = images[:, :1]  # grey training images: keep one channel (the first of the decoded RGB)
    return images, files
