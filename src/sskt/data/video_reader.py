"""Reading clips from videos: frames from a frame folder or a video file (PyAV), Hara et al.'s temporal
sampling (a random looped window for training, evenly spaced windows for testing) and the spatial resize
and crop."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from sskt.errors import SSKTError
from sskt.data.video_splits import FRAME_EXTENSIONS, PathLike

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
