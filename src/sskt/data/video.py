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

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from sskt.errors import SSKTError
from sskt.data.video_reader import VideoReader, eval_clip_indices, resize_crop, train_clip_indices
from sskt.data.video_splits import VideoSplit

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
