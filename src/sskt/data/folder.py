"""Users' image data as labelled files, and the train / val / test split sskt makes where the data has none.

Layouts accepted as ``data.root`` (``docs/data.md``):

- ``root/<train_split>/<class>/`` and ``root/<test_split>/<class>/``: the folders are the split;
- ``root/<train_split>/<class>/`` alone, or ``root/<class>/``: sskt splits the images;
- a CSV file ``path,label[,split]`` (paths relative to the CSV's folder, or absolute): its ``split``
  column is the split; without one, sskt splits the rows.

A split sskt makes is seeded (``data.subset_seed``) and stratified (``data.test_fraction`` of every class
to test; ``data.val_fraction`` of what remains to validation, when set); exact copies of a file (same
bytes) land on one side. With ``data.split_file`` set it is written there (``path,label,split``) and, on
later loads, read back, so a rerun trains and tests on the same images.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import torch
from torch import Tensor

from sskt.config import DataConfig
from sskt.data.images import IMAGE_SUFFIXES, auto_image_size, image_sizes
from sskt.errors import SSKTError
from sskt.io import atomic_text_write

PARTS = ("train", "val", "test")
_SPLIT_SEED = 2_147_483  # offset from data.subset_seed, so the split and the labelled subset draw apart
_SIZE_SAMPLE = 1000  # files whose headers decide the decoding size
_LARGE_SIDE = 512  # same-size images larger than this are still decoded smaller (memory)


def notice(line: str) -> None:
    """One line to stderr: something the user should know that is not an error."""
    print(f"sskt: {line}", file=sys.stderr, flush=True)


@dataclass
class LabelledFiles:
    """Image files, each with its class (an index into ``classes``) and its part: train, val or test.
    ``base`` is the folder that paths in a split file are relative to."""

    base: Path
    files: list[Path]
    labels: list[int]
    classes: list[str]
    parts: list[str] | None = None  # None: the data has no split of its own

    def part(self, name: str) -> tuple[list[Path], Tensor]:
        """The files of part ``name`` and their labels."""
        keep = [i for i, p in enumerate(self.parts or []) if p == name]
        return [self.files[i] for i in keep], torch.tensor([self.labels[i] for i in keep], dtype=torch.long)


def list_images(folder: Path) -> list[Path]:
    """The image files under ``folder`` at any depth, sorted; hidden files and folders are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        # is_image_file's test without its stat per file: os.walk already tells files from folders
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    return sorted(found)


def class_folders(d: Path, require_images: bool = True) -> LabelledFiles:
    """``d/<class>/<image>``: classes sorted by folder name (as torchvision's ImageFolder)."""
    classes = sorted(c.name for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    if not classes:
        raise SSKTError(f"{d} has no class folders; put each class's images in a folder of its own, {d}/<class>/")
    files: list[Path] = []
    labels: list[int] = []
    empty = []
    for k, name in enumerate(classes):
        found = list_images(d / name)
        if not found:
            empty.append(name)
        files += found
        labels += [k] * len(found)
    if empty and require_images:  # a class folder without images would train as a class that never occurs
        raise SSKTError(f"class folder(s) {empty[:5]} under {d} hold no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                        f"add images or remove the folders")
    return LabelledFiles(d, files, labels, classes)


def _class_order(names: set[str]) -> list[str]:
    """Class names sorted; numerically when every name is a whole number (so 2 comes before 10)."""
    if all(n.isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def read_csv_listing(path: Path, base: Path, need_split: bool = False, gone: str = "") -> LabelledFiles:
    """A CSV ``path,label[,split]`` (header row first; other columns are ignored) as labelled files.
    Relative paths are taken from ``base``. ``gone`` is the fix named when listed files are missing."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))  # -sig: Excel's BOM
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SSKTError(f"can't read {path} as CSV ({err.__class__.__name__}); save it as UTF-8 CSV") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "path" not in header or "label" not in header or (need_split and "split" not in header):
        want = "path,label,split" if need_split else "path,label[,split]"
        raise SSKTError(f"{path}: the first row must name the columns {want}, got {','.join(header) or 'nothing'}")
    ip, il, isp = header.index("path"), header.index("label"), header.index("split") if "split" in header else None
    files, names, parts, seen = [], [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = [c.strip() for c in row] + [""] * (len(header) - len(row))
        if not cells[ip] or not cells[il]:
            raise SSKTError(f"{path} line {line}: a row needs a path and a label; fill them in or delete the row")
        f = Path(os.path.normpath(base / Path(cells[ip]).expanduser()))
        if f in seen:  # one file twice could sit in train and test at once
            raise SSKTError(f"{path} lists {cells[ip]} twice (lines {seen[f]} and {line}); list each file once")
        seen[f] = line
        if isp is not None:
            part = cells[isp].lower()
            if part not in PARTS:
                raise SSKTError(f"{path} line {line}: split {cells[isp]!r} must be train, val or test")
            parts.append(part)
        files.append(f)
        names.append(cells[il])
    if not files:
        raise SSKTError(f"{path} lists no images; add rows path,label")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise SSKTError(f"{path} lists {len(missing)} file(s) that do not exist (e.g. {missing[0]}); "
                        + (gone or f"fix the paths (relative to {base}, or absolute) or delete those rows"))
    classes = _class_order(set(names))
    index = {c: k for k, c in enumerate(classes)}
    return LabelledFiles(base, files, [index[n] for n in names], classes, parts if isp is not None else None)


def _given_listing(cfg: DataConfig, root: Path) -> LabelledFiles:
    """Every file of ``root`` with its class, and its part where the data says."""
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise SSKTError(f"data.root {root} is a file; give a folder of class folders or a CSV file "
                            f"path,label[,split]")
        return read_csv_listing(root, root.parent)
    train_dir, test_dir = root / cfg.train_split, root / cfg.test_split
    if train_dir.is_dir() and test_dir.is_dir():
        train, test = class_folders(train_dir), class_folders(test_dir, require_images=False)
        if test.classes != train.classes:
            raise SSKTError(f"{test_dir} has different class folders from {train_dir}; give both the same classes")
        return LabelledFiles(root, train.files + test.files, train.labels + test.labels, train.classes,
                             ["train"] * len(train.files) + ["test"] * len(test.files))
    if test_dir.is_dir():
        raise SSKTError(f"{root} has {cfg.test_split}/ but no {cfg.train_split}/; add {cfg.train_split}/<class>/ "
                        f"folders, or put the class folders directly in {root}")
    listing = class_folders(train_dir if train_dir.is_dir() else root)
    listing.base = root
    return listing


def labelled_files(cfg: DataConfig, root: Path) -> LabelledFiles:
    """The data at ``root`` with every file's part: the data's own split, the split file's, or one made now."""
    if cfg.val_fraction is not None and cfg.val_per_class is not None:
        raise SSKTError("data.val_fraction and data.val_per_class both ask for a validation split; set one of them")
    data = _given_listing(cfg, root)
    has_val = data.parts is not None and "val" in data.parts
    if has_val and cfg.val_fraction is not None:
        raise SSKTError(f"{root} has a val split of its own and data.val_fraction is set; drop data.val_fraction")
    make_test = data.parts is None
    make_val = cfg.val_fraction is not None
    if not make_test and not make_val:
        return data
    split_file = Path(cfg.split_file).expanduser() if cfg.split_file else None
    if split_file is not None and split_file.is_file():
        return _reuse_split(split_file, data, cfg)
    pool = list(range(len(data.files))) if make_test else [i for i, p in enumerate(data.parts) if p == "train"]
    made = make_split([data.files[i] for i in pool], [data.labels[i] for i in pool], data.classes,
                      cfg.test_fraction if make_test else None, cfg.val_fraction, cfg.subset_seed,
                      "rows" if root.is_file() else "folder")
    parts = list(data.parts) if data.parts is not None else ["train"] * len(data.files)
    for i, p in zip(pool, made):
        parts[i] = p
    data.parts = parts
    if split_file is not None:
        write_split_file(split_file, data)
    return data


def _digests(files: list[Path]) -> list[tuple[int, str, str]]:
    """A key per file that is equal exactly for files of equal bytes: the size, and the SHA-1 where
    another file has that size (only those can be copies, so most files are never read)."""
    sizes = [f.stat().st_size for f in files]
    count: dict[int, int] = defaultdict(int)
    for s in sizes:
        count[s] += 1
    keys = []
    for f, s in zip(files, sizes):
        if count[s] == 1:
            keys.append((s, "file", str(f)))
            continue
        h = hashlib.sha1()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        keys.append((s, "sha1", h.hexdigest()))
    return keys


def make_split(files: list[Path], labels: list[int], classes: list[str], test_fraction: float | None,
               val_fraction: float | None, seed: int, remove: str = "folder") -> list[str]:
    """Each file's part: a seeded, stratified split in which exact copies of a file share a part.

    Every class gives ``round(test_fraction * n)`` of its ``n`` images to test (at least one; none when
    ``test_fraction`` is None), ``round(val_fraction * rest)`` of the rest to val (at least one, when set)
    and keeps the others, at least one, for training. Copies count with the class of their first file.
    """
    groups: dict[tuple[int, str, str], list[int]] = {}
    for i, key in enumerate(_digests(files)):
        groups.setdefault(key, []).append(i)
    by_class: dict[int, list[list[int]]] = defaultdict(list)
    for members in groups.values():  # in file order: the split depends only on the files and the seed
        by_class[labels[members[0]]].append(members)
    needed = 1 + (test_fraction is not None) + (val_fraction is not None)
    parts = ["train"] * len(files)
    g = torch.Generator().manual_seed(seed + _SPLIT_SEED)
    for c, name in enumerate(classes):
        gs = by_class.get(c, [])
        n = sum(len(m) for m in gs)
        if len(gs) < needed:
            what = "train, val and test" if needed == 3 else "train and " + ("test" if test_fraction else "val")
            distinct = f" ({len(gs)} distinct: exact copies stay together)" if len(gs) < n else ""
            raise SSKTError(f"class {name!r} has {n} image(s){distinct}, too few to split into {what} (it needs "
                            f"{needed} distinct images); add images to it or remove its {remove}")
        n_test = max(1, int(test_fraction * n + 0.5)) if test_fraction is not None else 0
        n_val = max(1, int(val_fraction * (n - n_test) + 0.5)) if val_fraction is not None else 0
        taken = {"test": 0, "val": 0}
        order = torch.randperm(len(gs), generator=g).tolist()
        for k, gi in enumerate(order):
            left = len(gs) - k  # groups not yet placed, this one included
            reserve = 1 + (n_val > 0 and taken["val"] == 0)  # groups still owed to train (and val)
            if taken["test"] < n_test and left > reserve:
                part = "test"
            elif taken["val"] < n_val and left > 1:
                part = "val"
            else:
                part = "train"
            if part != "train":
                taken[part] += len(gs[gi])
            for i in gs[gi]:
                parts[i] = part
    return parts


def _relative(f: Path, base: Path) -> str:
    """``f`` relative to ``base`` (POSIX separators), or absolute where it lies outside."""
    rel = os.path.relpath(os.path.abspath(f), os.path.abspath(base))
    return Path(rel).as_posix() if not rel.startswith("..") else os.path.abspath(f)


def write_split_file(path: Path, data: LabelledFiles) -> None:
    """The split as CSV ``path,label,split`` (paths relative to ``data.base``), written atomically."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["path", "label", "split"])
    for f, y, p in zip(data.files, data.labels, data.parts or []):
        out.writerow([_relative(f, data.base), data.classes[y], p])
    atomic_text_write(buf.getvalue(), path)


def _reuse_split(path: Path, data: LabelledFiles, cfg: DataConfig) -> LabelledFiles:
    """``data`` restricted to the files of the split file ``path``, with its parts."""
    again = f"delete {path} to split the data again"
    saved = read_csv_listing(path, data.base, need_split=True, gone=again)
    key = os.path.abspath  # the same file however its path was spelled
    now = {key(f): data.classes[y] for f, y in zip(data.files, data.labels)}
    part_of = {key(f): p for f, p in zip(saved.files, saved.parts or [])}
    changed = [f for f, y in zip(saved.files, saved.labels) if now.get(key(f)) != saved.classes[y]]
    if changed:
        raise SSKTError(f"split file {path} lists {len(changed)} file(s) that are no longer in the data or changed "
                        f"class (e.g. {_relative(changed[0], data.base)}); {again}")
    if data.parts is not None:  # the data's own test split stays the test split
        own = {key(f): p for f, p in zip(data.files, data.parts)}
        if any((own[f] == "test") != (p == "test") for f, p in part_of.items()):
            raise SSKTError(f"split file {path} disagrees with the test split of {data.base}; {again}")
    if cfg.val_fraction is not None and "val" not in part_of.values():
        raise SSKTError(f"data.val_fraction is set but split file {path} has no val part; {again}")
    new = [f for f in data.files if key(f) not in part_of]
    if new:
        notice(f"{len(new)} image(s) are not in the split file {path} (e.g. {_relative(new[0], data.base)}) and are "
               f"left out; {again} with them")
    keep = [i for i, f in enumerate(data.files) if key(f) in part_of]
    return LabelledFiles(data.base, [data.files[i] for i in keep], [data.labels[i] for i in keep], data.classes,
                         [part_of[key(data.files[i])] for i in keep])


def decode_size(files: list[Path], requested: int | None) -> int | None:
    """The square size to decode ``files`` at: ``requested`` if given; when a sample of them shares one
    size, that size (None, their own, if not square; so a stray file of another size is fitted to the
    square rather than refused); else, or when they are large, one chosen from the sample by
    :func:`auto_image_size` (one notice line)."""
    if requested is not None or not files:
        return requested
    step = max(1, len(files) // _SIZE_SAMPLE)
    sizes = image_sizes(files[::step], limit=_SIZE_SAMPLE)
    side = median(min(w, h) for w, h in sizes)
    if len(set(sizes)) == 1 and side <= _LARGE_SIDE:
        w, h = sizes[0]
        return w if w == h else None
    size = auto_image_size(sizes)
    what = "of mixed sizes" if len(set(sizes)) > 1 else "are large"
    notice(f"images {what} (median shorter side {side:g} px); decoding at {size} px (set data.image_size to choose)")
    return size


def imbalance_notice(labels: Tensor, classes: list[str], ratio: float = 3.0) -> None:
    """One notice line when the largest class has more than ``ratio`` times the images of the smallest."""
    if len(classes) < 2 or len(labels) == 0:
        return
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    big, small = max(range(len(counts)), key=counts.__getitem__), min(range(len(counts)), key=counts.__getitem__)
    if counts[big] > ratio * counts[small]:
        notice(f"classes are imbalanced: {classes[big]!r} has {counts[big]} training images, {classes[small]!r} "
               f"{counts[small]} (more than {ratio:g}x fewer); the model may favour the large classes")
