"""UCF101 / HMDB51 videos and their official split files: which video (a frame folder or a file) is in
which split, with its class."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union


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
