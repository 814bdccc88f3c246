"""Multi-label and video datasets for ``sskt train``: ``voc2007``, ``multilabel-csv``, ``cifar-mosaic``,
``ucf101``, ``hmdb51`` and ``moving-cifar``.

All of them follow the engine's in-memory design (:class:`ImageSplits` of uint8 tensors served a whole
batch at a time), so they are decoded once when the run starts:

- multi-label splits (``multilabel=True``) hold float multi-hot targets (N, L) and the ignore mask
  (VOC "difficult"-only entries) as ``extras["ignore"]``; the engine's mAP leaves those entries out;
- video splits hold uint8 clips (N, 3, T, H, W). Real videos (UCF101 / HMDB51) are cut into a fixed
  set of clips at load time (``train_clips`` random windows per training video, ``test_clips``
  evenly spaced windows per test video, centre crop), cached on disk; the engine's per-batch random
  crop and flip are applied on top. Metrics are per clip; ``extras["video"]`` keeps each clip's video.

Dataset-specific settings go in ``data.options`` (unknown keys are errors).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from sskt.config import DataConfig
from sskt.data.datasets import DATASETS, _cache_dir, _require_root, imagefolder, per_class_indices
from sskt.data.tensor_dataset import ImageSplits, ImageTensorDataset
from sskt.data.moving_cifar import DEFAULT_MOTIONS, moving_cifar
from sskt.data.video_reader import VideoReader, eval_clip_indices, resize_crop, train_clip_indices
from sskt.data.video_splits import VideoSplit, hmdb51_split, ucf101_split
from sskt.errors import SSKTError


def _options(cfg: DataConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """``data.options`` merged over ``defaults``; unknown keys are errors."""
    given = dict(cfg.options or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise SSKTError(f"dataset {cfg.dataset!r}: unknown data.options {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


def _no_per_class(cfg: DataConfig, hint: str) -> None:
    if cfg.per_class is not None or cfg.test_per_class is not None:
        raise SSKTError(f"dataset {cfg.dataset!r} is multi-label: data.per_class does not apply; {hint}")


def _limit(n: int, limit: int | None, seed: int) -> Tensor:
    """A seeded random subset of ``limit`` of ``n`` indices (sorted), or all of them."""
    if limit is None or limit >= n:
        return torch.arange(n)
    if limit < 1:
        raise SSKTError(f"image limits must be >= 1, got {limit}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def _multilabel_splits(parts: list[Any], cfg: DataConfig, opts: dict[str, Any], **meta: Any) -> ImageSplits:
    """MultiLabelSplit train/test -> ImageSplits (multilabel, ignore mask in extras), with limits."""
    out = []
    for split, limit in zip(parts, (opts.get("train_images"), opts.get("test_images"))):
        keep = _limit(len(split.targets), limit, cfg.subset_seed)
        extras = {"ignore": split.ignore[keep].bool()}
        out.append(ImageTensorDataset(split.images[keep], split.targets[keep].float(), extras))
    return ImageSplits(out[0], out[1], list(parts[0].classes), multilabel=True, meta=dict(meta))


def _size(cfg: DataConfig, default: int) -> int:
    return cfg.image_size if cfg.image_size is not None else default


# ----------------------------------------------------------------------------- multi-label images


@DATASETS.register("voc2007")
def voc2007(cfg: DataConfig) -> ImageSplits:
    """PASCAL VOC 2007 classification; ``data.root`` is the ``VOCdevkit`` folder (or ``VOC2007``).

    ``train_split: train`` (the default) means VOC's ``trainval`` list, the standard protocol; ``val``,
    ``trainval`` and ``test`` are taken literally. Images are resized to ``data.image_size`` (default
    224; 128 halves memory). Options: ``train_images`` / ``test_images`` (seeded subset sizes),
    ``workers`` (decoding threads).
    """
    from sskt.data.voc import load_voc2007

    opts = _options(cfg, {"train_images": None, "test_images": None, "workers": 2})
    _no_per_class(cfg, "use data.options.train_images for a seeded subset")
    root = _require_root(cfg)
    size = _size(cfg, 224)
    train_list = "trainval" if cfg.train_split == "train" else cfg.train_split
    parts = [load_voc2007(root, s, size, opts["workers"]) for s in (train_list, cfg.test_split)]
    return _multilabel_splits(parts, cfg, opts, voc_splits=[train_list, cfg.test_split])


@DATASETS.register("multilabel-csv")
def multilabel_csv(cfg: DataConfig) -> ImageSplits:
    """An image folder plus a CSV ``image,labels`` per split (see :func:`sskt.data.voc.load_multilabel_csv`).

    ``data.options``: ``{train: {csv: ..., image_dir: ...}, test: {csv: ..., image_dir: ...}}`` (keys are
    ``data.train_split`` / ``data.test_split``); relative paths are resolved against ``data.root`` when
    it is set. Classes are the training CSV's sorted labels; the test CSV must use only those.
    """
    from sskt.data.voc import load_multilabel_csv

    opts = _options(cfg, {cfg.train_split: None, cfg.test_split: None, "train_images": None, "test_images": None,
                          "workers": 2})
    _no_per_class(cfg, "use data.options.train_images for a seeded subset")
    base = Path(cfg.root).expanduser() if cfg.root else Path(".")
    size = _size(cfg, 224)
    parts: list[Any] = []
    for split in (cfg.train_split, cfg.test_split):
        spec = opts[split]
        if not isinstance(spec, dict) or "csv" not in spec:
            raise SSKTError(f"multilabel-csv needs data.options.{split}: {{csv: <file>, image_dir: <folder>}}")
        csv_path = base / Path(spec["csv"]).expanduser()
        image_dir = base / Path(spec.get("image_dir", Path(spec["csv"]).parent)).expanduser()
        classes = parts[0].classes if parts else None
        parts.append(load_multilabel_csv(csv_path, image_dir, size, classes, opts["workers"]))
    return _multilabel_splits(parts, cfg, opts)


@DATASETS.register("cifar-mosaic")
def cifar_mosaic(cfg: DataConfig) -> ImageSplits:
    """2x2 mosaics of single-label images (64x64 for CIFAR-10) labelled with the set of tile classes.

    ``data.root`` is an imagefolder root (``<root>/<split>/<class>/<image>``, e.g. the CIFAR-10 JPEG
    copy). Training mosaics use only images of ``data.train_split``, test mosaics only images of
    ``data.test_split``, so no tile is shared. ``data.per_class`` / ``test_per_class`` limit the pool of
    tile images per class (the low-label setting). Options: ``train_mosaics`` (default 10,000),
    ``test_mosaics`` (2,000), ``seed`` (default ``data.subset_seed``; test mosaics use seed + 1),
    ``max_classes`` (1-4 distinct classes per mosaic). ``data.image_size`` resizes the mosaics.
    """
    from sskt.data.mosaic import make_mosaics

    opts = _options(cfg, {"train_mosaics": 10_000, "test_mosaics": 2_000, "seed": None, "max_classes": 4})
    seed = cfg.subset_seed if opts["seed"] is None else int(opts["seed"])
    tiles = imagefolder(dataclasses.replace(cfg, dataset="imagefolder", image_size=None))
    out = []
    for k, (pool, n) in enumerate(((tiles.train, opts["train_mosaics"]), (tiles.test, opts["test_mosaics"]))):
        if int(n) < 1:
            raise SSKTError(f"cifar-mosaic: mosaic counts must be >= 1, got {n}")
        m = make_mosaics(pool.images, pool.targets, int(n), seed + k, tiles.num_classes, int(opts["max_classes"]))
        images = _resize(m.images, cfg.image_size)
        out.append(ImageTensorDataset(images, m.targets, {"ignore": torch.zeros_like(m.targets, dtype=torch.bool)}))
    return ImageSplits(out[0], out[1], tiles.classes, multilabel=True, meta={"mosaic_seed": seed})


def _resize(x: Tensor, size: int | None) -> Tensor:
    """uint8 (..., H, W) images or clips resized to ``size`` (bilinear, antialiased), or unchanged."""
    if size is None or (x.shape[-1] == size and x.shape[-2] == size):
        return x
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:]).float()
    flat = torch.nn.functional.interpolate(flat, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False)
    return flat.round_().clamp_(0, 255).to(torch.uint8).reshape(*lead, x.shape[-3], size, size)


# ----------------------------------------------------------------------------- video


def _clip_cache_key(paths: list[Path], settings: dict[str, Any]) -> Path:
    h = hashlib.sha256(repr(sorted(settings.items())).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return _cache_dir() / "clips" / f"{h.hexdigest()[:24]}.npz"


def decode_clips(split: Any, train: bool, clip_len: int, stride: int, clips: int, size: int | None,
                 crop: int | None, seed: int, workers: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Cut every video of a :class:`~sskt.data.video_splits.VideoSplit` into ``clips`` uint8 clips (3, T, h, w).

    Training: ``clips`` random windows per video (seeded); test: ``clips`` evenly spaced windows.
    Frames are resized (shorter side ``size``) and centre-cropped to ``crop``. Returns
    ``(clips (M, 3, T, h, w), labels (M,), video index (M,))``; cached on disk (``SSKT_CACHE_DIR``)
    by file list, modification times and settings.
    """
    if not split.entries:
        raise SSKTError("the video split is empty; check the split files and data.root")
    settings = {"train": train, "clip_len": clip_len, "stride": stride, "clips": clips, "size": size,
                "crop": crop, "seed": seed}
    cache = _clip_cache_key([e.path for e in split.entries], settings)
    if cache.is_file():
        try:
            with np.load(cache) as z:
                return torch.from_numpy(z["clips"]), torch.from_numpy(z["labels"]), torch.from_numpy(z["video"])
        except (ValueError, OSError, EOFError, KeyError):
            cache.unlink(missing_ok=True)  # damaged: rebuilt, never used

    def one(v: int) -> list[Tensor]:
        reader = VideoReader(split.entries[v].path)
        n = reader.num_frames()
        g = torch.Generator().manual_seed(seed * 1_000_003 + v)
        windows = ([train_clip_indices(n, clip_len, stride, g) for _ in range(clips)] if train
                   else eval_clip_indices(n, clip_len, clips, stride))
        # One read of the union of frames per video (a video file is decoded once).
        wanted = sorted({i % n for w in windows for i in w})
        frames, _ = reader.read(wanted)
        pos = {f: j for j, f in enumerate(wanted)}
        return [resize_crop(frames[[pos[i % n] for i in w]], size, crop, train=False) for w in windows]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        per_video = list(pool.map(one, range(len(split.entries))))
    shapes = {c.shape for cs in per_video for c in cs}
    if len(shapes) != 1:
        raise SSKTError(f"clips have different shapes {sorted(shapes)[:3]}; set data.options.crop")
    out = torch.stack([c for cs in per_video for c in cs])
    labels = torch.tensor([e.label for e in split.entries for _ in range(clips)], dtype=torch.long)
    video = torch.arange(len(split.entries)).repeat_interleave(clips)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, clips=out.numpy(), labels=labels.numpy(), video=video.numpy())
    os.replace(tmp, cache)
    return out, labels, video


_VIDEO_DEFAULTS: dict[str, Any] = {"split_dir": None, "split": 1, "clip_len": 16, "stride": 1, "size": 128,
                                   "crop": 112, "train_clips": 1, "test_clips": 1, "missing": "error",
                                   "workers": 2, "seed": None}


def _video_dataset(split_fn: Callable[..., VideoSplit]) -> Callable[[DataConfig], ImageSplits]:
    def build(cfg: DataConfig) -> ImageSplits:
        opts = _options(cfg, _VIDEO_DEFAULTS)
        root = _require_root(cfg)
        if opts["split_dir"] is None:
            raise SSKTError(f"dataset {cfg.dataset!r} needs data.options.split_dir (the official split files)")
        split_dir = Path(opts["split_dir"]).expanduser()
        split_dir = split_dir if split_dir.is_absolute() or split_dir.exists() else root / split_dir
        seed = cfg.subset_seed if opts["seed"] is None else int(opts["seed"])
        out = []
        classes: list[str] = []
        for subset, n_per_class, clips in (("train", cfg.per_class, opts["train_clips"]),
                                           ("test", cfg.test_per_class, opts["test_clips"])):
            vs = split_fn(root, split_dir, int(opts["split"]), subset, opts["missing"])
            classes = vs.classes
            if n_per_class is not None:  # N videos per class, seeded, before decoding
                labels = torch.tensor([e.label for e in vs.entries])
                keep = per_class_indices(labels, n_per_class, cfg.subset_seed, classes, subset)
                vs = VideoSplit([vs.entries[i] for i in keep.tolist()], classes)
            x, y, vid = decode_clips(vs, subset == "train", int(opts["clip_len"]), int(opts["stride"]), int(clips),
                                     opts["size"], opts["crop"], seed, int(opts["workers"]))
            out.append(ImageTensorDataset(x, y, {"video": vid}))
        return ImageSplits(out[0], out[1], classes, meta={"clips_per_video": [opts["train_clips"], opts["test_clips"]]})

    build.__doc__ = (f"{split_fn.__name__.split('_')[0].upper()} clips from frame folders or video files (PyAV); "
                     "see the module docstring and docs/multilabel-video.md for data.options.")
    return build


DATASETS.register("ucf101")(_video_dataset(ucf101_split))
DATASETS.register("hmdb51")(_video_dataset(hmdb51_split))


@DATASETS.register("moving-cifar")
def moving_cifar_dataset(cfg: DataConfig) -> ImageSplits:
    """Clips of CIFAR images moving over a canvas; the class is the motion (see :func:`moving_cifar`).

    ``data.root`` is an imagefolder root (CIFAR-10 JPEG copy): training clips move images of
    ``data.train_split``, test clips images of ``data.test_split``. Options: ``train_clips`` (default
    5,000), ``test_clips`` (2,000), ``canvas`` (48), ``frames`` (8), ``motions`` (default the 10
    ``DEFAULT_MOTIONS``), ``object_size``, ``background``, ``pool_per_class`` (CIFAR images per class
    to draw objects from; default all), ``seed`` (default ``data.subset_seed``; test clips use seed + 1).
    ``data.per_class`` / ``test_per_class`` keep N clips per motion class.
    """
    opts = _options(cfg, {"train_clips": 5_000, "test_clips": 2_000, "canvas": 48, "frames": 8,
                          "motions": list(DEFAULT_MOTIONS), "object_size": None, "background": 0,
                          "pool_per_class": None, "seed": None})
    seed = cfg.subset_seed if opts["seed"] is None else int(opts["seed"])
    pool = opts["pool_per_class"]
    tiles = imagefolder(dataclasses.replace(cfg, dataset="imagefolder", image_size=None, per_class=pool,
                                            test_per_class=pool))
    motions = [str(m) for m in opts["motions"]]
    out = []
    for k, (src, n, per_class) in enumerate(((tiles.train, opts["train_clips"], cfg.per_class),
                                             (tiles.test, opts["test_clips"], cfg.test_per_class))):
        if int(n) < 1:
            raise SSKTError(f"moving-cifar: clip counts must be >= 1, got {n}")
        mc = moving_cifar(src.images, int(n), seed + k, int(opts["canvas"]), int(opts["frames"]), motions,
                          opts["object_size"], int(opts["background"]))
        keep = per_class_indices(mc.labels, per_class, cfg.subset_seed, motions, "train" if k == 0 else "test")
        out.append(ImageTensorDataset(_resize(mc.clips[keep], cfg.image_size), mc.labels[keep]))
    return ImageSplits(out[0], out[1], motions, meta={"moving_cifar_seed": seed})
