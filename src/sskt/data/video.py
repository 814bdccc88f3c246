"""Video clip data: UCF101 / HMDB51 with their official splits, and a synthetic "moving CIFAR" set.

Videos are read either from decoded frame folders (one folder of ``.jpg``/``.png`` frames per video,
e.g. ``<root>/<class>/<video>/image_00001.jpg`` as written by the Hara et al. 3D-ResNets scripts)
or from the video files themselves through PyAV (``pip install av``). A frame folder named after the
video (without extension) is preferred over the file when both exist: decoding JPEG frames is much
cheaper than decoding the video.

Temporal sampling follows Hara et al.: training takes one random window of ``clip_len`` consecutive
frames (every ``stride``-th frame) and loop-pads short videos (the frame sequence is repeated from its
start); testing takes ``num_clips`` windows evenly spaced over the video, and the per-clip scores are
averaged per video with :func:`average_clip_scores`. Clips are uint8 (C, T, H, W), in [0, 255], not
normalised (the target and each source normalise themselves).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from sskt.errors import SSKTError

PathLike = Union[str, os.PathLike]
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg")


@dataclass(frozen=True)
class VideoEntry:
    """One video: a frame folder or a video file, and its class index."""

    path: Path
    label: int


@dataclass
class VideoSplit:
    """The videos of one split and the class names (``label`` indexes ``classes``)."""

    entries: list[VideoEntry]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.entries)


# ----------------------------------------------------------------------------- split files


def _resolve(root: Path, rel: str) -> Path | None:
    """``<root>/<class>/<name>``: the frame folder ``<name stem>`` if it exists, else the file."""
    rel_path = Path(rel)
    folder = root / rel_path.parent / rel_path.stem
    if folder.is_dir():
        return folder
    file = root / rel_path
    return file if file.is_file() else None


def _collect(root: Path, listed: list[tuple[str, int]], list_name: str, missing: str) -> list[VideoEntry]:
    if missing not in ("error", "skip"):
        raise SSKTError(f"missing must be 'error' or 'skip', got {missing!r}")
    entries, lost = [], []
    for rel, label in listed:
        p = _resolve(root, rel)
        if p is None:
            lost.append(rel)
        else:
            entries.append(VideoEntry(p, label))
    if lost and missing == "error":
        raise SSKTError(
            f"{len(lost)} of {len(listed)} videos listed in {list_name} are not under {root} "
            f"(neither a frame folder nor a video file), e.g. {lost[0]}; pass missing='skip' to use the rest"
        )
    return entries


def _check_subset(subset: str) -> None:
    if subset not in ("train", "test"):
        raise SSKTError(f"subset must be 'train' or 'test', got {subset!r}")


def ucf101_split(
    root: PathLike, split_dir: PathLike, split: int = 1, subset: str = "train", missing: str = "error"
) -> VideoSplit:
    """UCF101 videos of one official split.

    Args:
        root: ``<root>/<Class>/<video>`` frame folders (``v_X_g08_c01/``) or files (``v_X_g08_c01.avi``).
        split_dir: the folder of ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``
            (``ucfTrainTestlist`` in the official archive).
        split: 1, 2 or 3.
        subset: ``train`` or ``test``.
        missing: ``error`` (default) or ``skip`` listed videos that are not on disk.

    Labels are 0-based indices into the ``classInd.txt`` order, taken from each line's class folder.
    """
    _check_subset(subset)
    root, split_dir = Path(root).expanduser(), Path(split_dir).expanduser()
    class_file = split_dir / "classInd.txt"
    list_file = split_dir / f"{subset}list0{split}.txt"
    for f in (class_file, list_file):
        if not f.is_file():
            raise SSKTError(f"UCF101 split file not found: {f}")
    classes: list[str] = []
    for line in class_file.read_text().splitlines():
        if line.strip():
            idx, name = line.split()
            if int(idx) != len(classes) + 1:
                raise SSKTError(f"{class_file}: expected class index {len(classes) + 1}, got {idx}")
            classes.append(name)
    index = {c: i for i, c in enumerate(classes)}
    listed = []
    for line in list_file.read_text().splitlines():
        if not line.strip():
            continue
        rel = line.split()[0]
        cls = rel.split("/")[0]
        if cls not in index:
            raise SSKTError(f"{list_file}: class {cls!r} of {rel} is not in {class_file}")
        listed.append((rel, index[cls]))
    return VideoSplit(_collect(root, listed, str(list_file), missing), classes)


_HMDB_SPLIT = re.compile(r"^(?P<cls>.+)_test_split(?P<n>\d)\.txt$")


def hmdb51_split(
    root: PathLike, split_dir: PathLike, split: int = 1, subset: str = "train", missing: str = "error"
) -> VideoSplit:
    """HMDB51 videos of one official split.

    Args:
        root: ``<root>/<class>/<video>`` frame folders or video files.
        split_dir: the folder of ``<class>_test_split<N>.txt`` files (``testTrainMulti_7030_splits``),
            whose lines are ``<video>.avi <id>`` with id 1 = train, 2 = test, 0 = unused.
        split: 1, 2 or 3.
        subset: ``train`` or ``test``.
        missing: ``error`` or ``skip`` listed videos that are not on disk.

    Classes are the sorted class names of the split files (the order Hara et al. use).
    """
    _check_subset(subset)
    root, split_dir = Path(root).expanduser(), Path(split_dir).expanduser()
    files = {}
    if split_dir.is_dir():
        for f in split_dir.iterdir():
            m = _HMDB_SPLIT.match(f.name)
            if m and int(m["n"]) == split:
                files[m["cls"]] = f
    if not files:
        raise SSKTError(f"no HMDB51 split files '<class>_test_split{split}.txt' in {split_dir}")
    classes = sorted(files)
    want = "1" if subset == "train" else "2"
    listed = []
    for label, cls in enumerate(classes):
        for line in files[cls].read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == want:
                listed.append((f"{cls}/{parts[0]}", label))
    return VideoSplit(_collect(root, listed, f"{split_dir}/*_test_split{split}.txt", missing), classes)


# ----------------------------------------------------------------------------- frame access


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_frames(folder: PathLike) -> list[Path]:
    """The image files of a frame folder in natural order (``image_2`` before ``image_10``)."""
    folder = Path(folder)
    frames = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS]
    if not frames:
        raise SSKTError(f"no frames ({'/'.join(FRAME_EXTENSIONS)}) in {folder}")
    return sorted(frames, key=lambda p: _natural_key(p.name))


def _open_video(path: Path) -> Any:
    try:
        import av  # optional dependency, only needed for video files
    except ImportError:
        raise SSKTError(f"reading video files needs PyAV (pip install av), or decode {path} to a frame folder") from None
    try:
        return av.open(str(path))
    except Exception as e:  # PyAV raises its own error hierarchy (av.error.*)
        raise SSKTError(f"cannot open video {path}: {e}") from None


class VideoReader:
    """Random access to the frames of one video (frame folder or video file).

    Video files are decoded once per :meth:`read` (frames kept in the decoder's YUV format and only
    the requested ones converted to RGB), so a short clip of a long video still costs a full decode:
    prefer frame folders for large-scale training.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.is_folder = self.path.is_dir()
        self._frames: list[Path] | None = None

    def frame_files(self) -> list[Path]:
        if self._frames is None:
            self._frames = list_frames(self.path)
        return self._frames

    def read_all_video_frames(self) -> list[Any]:
        with _open_video(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            try:
                frames = list(container.decode(stream))
            except Exception as e:
                raise SSKTError(f"cannot decode video {self.path}: {e}") from None
        if not frames:
            raise SSKTError(f"video {self.path} has no decodable frames")
        return frames

    def num_frames(self) -> int:
        """Number of frames (for video files: counted by decoding when the header has no count)."""
        if self.is_folder:
            return len(self.frame_files())
        with _open_video(self.path) as container:
            n = container.streams.video[0].frames
        return n if n > 0 else len(self.read_all_video_frames())

    def read(self, indices: Sequence[int] | None = None) -> tuple[Tensor, int]:
        """Frames ``indices`` (default: all) as uint8 (T, H, W, 3), and the video's frame count.

        Indices are taken modulo the frame count, so loop-padded index lists work directly.
        """
        if self.is_folder:
            files = self.frame_files()
            n = len(files)
            idx = range(n) if indices is None else [i % n for i in indices]
            cache: dict[int, np.ndarray] = {}
            out = []
            for i in idx:
                if i not in cache:  # loop padding repeats frames: decode each once
                    try:
                        with Image.open(files[i]) as im:
                            cache[i] = np.array(im.convert("RGB"), dtype=np.uint8)
                    except (UnidentifiedImageError, OSError, ValueError) as e:
                        raise SSKTError(f"cannot decode frame {files[i]}: {e}") from None
                out.append(cache[i])
        else:
            frames = self.read_all_video_frames()
            n = len(frames)
            idx = range(n) if indices is None else [i % n for i in indices]
            rgb = {i: frames[i].to_ndarray(format="rgb24") for i in set(idx)}
            out = [rgb[i] for i in idx]
        shapes = {a.shape for a in out}
        if len(shapes) != 1:
            raise SSKTError(f"frames of {self.path} differ in size: {sorted(shapes)}")
        return torch.from_numpy(np.stack(out)), n


# ----------------------------------------------------------------------------- temporal sampling


def _looped(start: int, n_frames: int, clip_len: int, stride: int) -> list[int]:
    """``clip_len`` indices from ``start`` every ``stride`` frames, repeating from ``start`` (loop
    padding, as in Hara et al.) when the video ends first."""
    base = list(range(start, n_frames, stride))[:clip_len] or [start]
    return [base[i % len(base)] for i in range(clip_len)]


def train_clip_indices(n_frames: int, clip_len: int, stride: int = 1, generator: torch.Generator | None = None) -> list[int]:
    """A random window of ``clip_len`` frames (temporal jitter for training), loop-padded if short."""
    span = (clip_len - 1) * stride + 1
    start = 0
    if n_frames > span:
        start = int(torch.randint(0, n_frames - span + 1, (1,), generator=generator))
    return _looped(start, n_frames, clip_len, stride)


def eval_clip_indices(n_frames: int, clip_len: int, num_clips: int, stride: int = 1) -> list[list[int]]:
    """``num_clips`` windows with evenly spaced starts from the first frame to the last full window."""
    span = (clip_len - 1) * stride + 1
    last = max(0, n_frames - span)
    starts = [round(last * k / (num_clips - 1)) if num_clips > 1 else last // 2 for k in range(num_clips)]
    return [_looped(s, n_frames, clip_len, stride) for s in starts]


# ----------------------------------------------------------------------------- spatial transform


def resize_crop(
    frames: Tensor, size: int | None, crop: int | None, train: bool, hflip: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """uint8 (T, H, W, 3) frames -> uint8 (3, T, h, w) clip.

    The shorter side is resized to ``size`` (bilinear, antialiased; ``None`` keeps it), then a
    ``crop x crop`` window is taken: random position when ``train``, centre otherwise (``None``: no
    crop). With ``train`` and ``hflip`` the whole clip is mirrored with probability 1/2. One crop and
    one flip per clip, so the motion stays coherent across frames.
    """
    x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W)
    if size is not None:
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        if new != (h, w):
            x = F.interpolate(x.float(), size=new, mode="bilinear", align_corners=False, antialias=True)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
    if crop is not None:
        h, w = x.shape[-2:]
        if h < crop or w < crop:
            raise SSKTError(f"crop {crop} is larger than the resized frames {h}x{w}; lower crop or raise size")
        if train:
            top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
        else:
            top, left = (h - crop) // 2, (w - crop) // 2
        x = x[..., top:top + crop, left:left + crop]
    if train and hflip and bool(torch.rand((), generator=generator) < 0.5):
        x = x.flip(-1)
    return x.permute(1, 0, 2, 3).contiguous()


# ----------------------------------------------------------------------------- dataset


class VideoClipDataset(Dataset):
    """Clips of a :class:`VideoSplit` as ``{"image": uint8 (3, T, h, w), "target", "index"}`` dicts.

    Training mode: one item per video, a random window (see :func:`train_clip_indices`), random crop
    and optional flip; randomness comes from torch's global generator, which DataLoader seeds per
    worker. Test mode: ``num_clips`` items per video (item ``i`` is clip ``i % num_clips`` of video
    ``i // num_clips``), centre crop, plus a ``"video"`` entry; average the per-clip scores with
    :func:`average_clip_scores`. Keeping one clip per item keeps the batch shape (B, 3, T, h, w) the
    same in training and evaluation.

    Example:
        >>> split = ucf101_split("UCF101/jpg", "UCF101/ucfTrainTestlist", 1, "test")  # doctest: +SKIP
        >>> ds = VideoClipDataset(split, train=False, clip_len=16, num_clips=10)     # doctest: +SKIP
    """

    def __init__(
        self,
        split: VideoSplit,
        train: bool,
        clip_len: int = 16,
        num_clips: int = 10,
        stride: int = 1,
        size: int | None = 128,
        crop: int | None = 112,
        hflip: bool = True,
    ) -> None:
        if clip_len < 1 or num_clips < 1 or stride < 1:
            raise SSKTError("clip_len, num_clips and stride must be >= 1")
        self.split = split
        self.train = train
        self.clip_len, self.num_clips, self.stride = clip_len, num_clips, stride
        self.size, self.crop, self.hflip = size, crop, hflip
        self._readers: dict[int, VideoReader] = {}  # caches each frame folder's listing

    @property
    def classes(self) -> list[str]:
        return self.split.classes

    @property
    def targets(self) -> Tensor:
        """(num_videos,) labels, per video (not per test clip)."""
        return torch.tensor([e.label for e in self.split.entries], dtype=torch.long)

    def __len__(self) -> int:
        n = len(self.split.entries)
        return n if self.train else n * self.num_clips

    def _reader(self, v: int) -> VideoReader:
        if v not in self._readers:
            self._readers[v] = VideoReader(self.split.entries[v].path)
        return self._readers[v]

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, k = (i, 0) if self.train else divmod(i, self.num_clips)
        reader = self._reader(v)
        n = reader.num_frames()
        if self.train:
            idx = train_clip_indices(n, self.clip_len, self.stride)
        else:
            idx = eval_clip_indices(n, self.clip_len, self.num_clips, self.stride)[k]
        frames, _ = reader.read(idx)
        clip = resize_crop(frames, self.size, self.crop, self.train, self.hflip)
        item: dict[str, Any] = {"image": clip, "target": self.split.entries[v].label, "index": i}
        if not self.train:
            item["video"] = v
        return item


def average_clip_scores(scores: Tensor, video: Tensor, num_videos: int | None = None) -> Tensor:
    """Mean of per-clip scores per video: (M, K) scores and (M,) video ids -> (num_videos, K).

    Pass softmax probabilities to follow Hara et al.'s video-level evaluation (they average the
    clips' softmax outputs); logits also work and rank classes almost identically.
    """
    video = video.long().to(scores.device)
    num_videos = int(video.max()) + 1 if num_videos is None else num_videos
    total = torch.zeros(num_videos, scores.shape[1], dtype=scores.dtype, device=scores.device)
    total.index_add_(0, video, scores)
    count = torch.bincount(video, minlength=num_videos).clamp_min(1).to(scores.dtype)
    return total / count[:, None]


# ----------------------------------------------------------------------------- moving CIFAR

# Linear motions: (dx, dy) in image coordinates (y grows downward).
_LINEAR: dict[str, tuple[int, int]] = {
    "right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1),
    "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1), "up-left": (-1, -1),
}
MOTIONS: tuple[str, ...] = (*_LINEAR, "circle", "zoom-in", "zoom-out", "static-jitter")
DEFAULT_MOTIONS: tuple[str, ...] = (
    "right", "left", "up", "down", "up-right", "down-left", "circle", "zoom-in", "zoom-out", "static-jitter",
)


class MovingClips(NamedTuple):
    """Generated moving-object clips.

    Attributes:
        clips: uint8 (n, 3, T, H, W).
        labels: long (n,): index of the motion in the ``motions`` argument (the class to learn).
        image_index: long (n,): which input image moves (drawn independently of the motion, so the
            object's identity carries no information about the label).
    """

    clips: Tensor
    labels: Tensor
    image_index: Tensor


def _trajectories(
    motion: list[str], T: int, W: int, s: int, g: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Per clip and frame: object centre x, y and side length, in canvas pixels; all inside the canvas."""
    n = len(motion)
    t = torch.linspace(0, 1, T)
    m = float(W - s)  # free travel range of the full-size object's top-left corner
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    x0 = torch.zeros(n, T)
    y0 = torch.zeros(n, T)
    size = torch.full((n, T), float(s))
    for i, name in enumerate(motion):
        if name in _LINEAR:
            dx, dy = _LINEAR[name]
            dist = m * (0.6 + 0.4 * u(()))  # speed varies per clip, direction is the class
            for d, pos in ((dx, x0), (dy, y0)):
                if d == 0:
                    pos[i] = m * u(())  # a random fixed place on the still axis
                else:
                    progress = t if d > 0 else 1 - t
                    pos[i] = (m - dist) * u(()) + dist * progress
        elif name == "circle":  # clockwise on screen: the angle grows and y points down
            r = m / 2 * (0.6 + 0.4 * u(()))
            a = 2 * math.pi * (u(()) + t * (T - 1) / T)
            x0[i], y0[i] = m / 2 + r * torch.cos(a), m / 2 + r * torch.sin(a)
        elif name in ("zoom-in", "zoom-out"):
            scale = 0.5 + 0.5 * (t if name == "zoom-in" else 1 - t)
            size[i] = s * scale
            cx, cy = m * u(()), m * u(())  # top-left of the full-size box; the centre stays fixed
            x0[i], y0[i] = cx + (s - size[i]) / 2, cy + (s - size[i]) / 2
        elif name == "static-jitter":
            j = max(1, W // 32)  # +-j px of per-frame shake around a fixed place
            base_x, base_y = j + (m - 2 * j) * u(()), j + (m - 2 * j) * u(())
            x0[i] = base_x + torch.randint(-j, j + 1, (T,), generator=g)
            y0[i] = base_y + torch.randint(-j, j + 1, (T,), generator=g)
        else:
            raise SSKTError(f"unknown motion {name!r}; known: {', '.join(MOTIONS)}")
    # Whole-pixel positions keep full-size objects crisp (an exact copy of the input pixels).
    x0, y0 = x0.round(), y0.round()
    return x0 + size / 2, y0 + size / 2, size


def moving_cifar(
    images: Tensor,
    n: int,
    seed: int = 0,
    canvas: int = 64,
    frames: int = 16,
    motions: Sequence[str] = DEFAULT_MOTIONS,
    object_size: int | None = None,
    background: int = 0,
) -> MovingClips:
    """Clips of an image moving over a plain canvas; the class is the motion, not the object.

    Each clip draws a motion uniformly from ``motions`` and an image uniformly from ``images``
    (independently), then renders ``frames`` frames of the image, resized to ``object_size``
    (default ``canvas // 2``), moving along the motion: a straight line (``right``, ``left``, ``up``,
    ``down`` and diagonals; random start, random speed covering 60-100% of the free range), a
    clockwise ``circle`` around the centre, ``zoom-in`` / ``zoom-out`` (side from 50% to 100% or
    back, fixed centre) or ``static-jitter`` (a fixed place, +-1 px shake per 32 px of canvas).
    The object always stays fully inside the canvas. A 2D network sees one frame and cannot tell
    the class; a 3D network can, which is what makes this a test bed for 3D targets with 2D sources.

    Args:
        images: uint8 (N, 3, h, w), e.g. CIFAR-10 (N, 3, 32, 32).
        n: number of clips.
        seed: generator seed (same inputs and seed, same clips).
        canvas: H = W of the clip.
        frames: T.
        motions: the classes, in label order (see ``MOTIONS`` for all 12 names).
        object_size: side of the moving image in pixels.
        background: canvas grey level 0..255.

    Example:
        >>> imgs = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
        >>> m = moving_cifar(imgs, n=4, canvas=48, frames=8)
        >>> m.clips.shape, m.labels.shape
        (torch.Size([4, 3, 8, 48, 48]), torch.Size([4]))
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, h, w) tensor, got {tuple(images.shape)}")
    motions = list(motions)
    unknown = [m for m in motions if m not in MOTIONS]
    if unknown or not motions:
        raise SSKTError(f"unknown motion(s) {unknown}; known: {', '.join(MOTIONS)}")
    s = object_size or canvas // 2
    if not 4 <= s <= canvas:
        raise SSKTError(f"object_size must be between 4 and the canvas ({canvas}), got {s}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(motions), (n,), generator=g)
    image_index = torch.randint(0, images.shape[0], (n,), generator=g)
    cx, cy, side = _trajectories([motions[i] for i in labels.tolist()], frames, canvas, s, g)

    C = images.shape[1]
    obj = images[image_index]
    if obj.shape[-2:] != (s, s):
        obj = F.interpolate(obj.float(), size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        obj = obj.round_().clamp_(0, 255).to(torch.uint8)
    out = torch.full((n, C, frames, canvas, canvas), background, dtype=torch.uint8)
    # Full-size frames sit at whole-pixel positions: paste them (exact, no resampling), in chunks
    # of frames to bound the size of the broadcast index tensors.
    view = out.permute(0, 2, 3, 4, 1)  # (n, T, H, W, C) view of the same storage
    ar = torch.arange(s)
    full = (side == s).nonzero()
    for a in range(0, len(full), 1024):
        ii, ff = full[a:a + 1024].unbind(1)
        top = (cy[ii, ff] - s / 2).long()[:, None] + ar  # (F, s)
        left = (cx[ii, ff] - s / 2).long()[:, None] + ar
        view[ii[:, None, None], ff[:, None, None], top[:, :, None], left[:, None, :]] = obj[ii].permute(0, 2, 3, 1)
    # Scaled frames (zooms) are resampled: the map from canvas to object coordinates is a scale
    # plus a shift per axis, x_obj = x_canvas * W / side + (W - 2 cx) / side (align_corners=False).
    base = (torch.arange(canvas) * 2 + 1) / canvas - 1  # pixel centres in [-1, 1]
    todo = (side != s).nonzero()
    for a in range(0, len(todo), 1024):
        ii, ff = todo[a:a + 1024].unbind(1)
        sd, x, y = side[ii, ff][:, None], cx[ii, ff][:, None], cy[ii, ff][:, None]
        gx = (base * canvas / sd + (canvas - 2 * x) / sd)[:, None, :].expand(-1, canvas, -1)
        gy = (base * canvas / sd + (canvas - 2 * y) / sd)[:, :, None].expand(-1, -1, canvas)
        grid = torch.stack([gx, gy], dim=-1)
        src = obj[ii].float()
        # A mask channel so the background level is applied only outside the object.
        r = F.grid_sample(torch.cat([src, torch.ones_like(src[:, :1])], 1), grid, mode="bilinear",
                          padding_mode="zeros", align_corners=False)
        frame = r[:, :C] + (1 - r[:, C:]) * background
        out[ii, :, ff] = frame.round_().clamp_(0, 255).to(torch.uint8)
    return MovingClips(out, labels, image_index)
