"""Image files as users have them, decoded by one policy: the same in training, evaluation and ``sskt predict``.

The policy (``docs/data.md``):

1. EXIF orientation is applied (a phone photo taken upright is upright).
2. Any mode becomes RGB: grey and palette images are expanded, transparency is composited on white,
   CMYK and 16-bit images are converted.
3. When a size is given, the shorter side is resized to it (antialiased bilinear) and the centre square is
   cropped, so the aspect ratio is kept; a square image of exactly that size is left untouched. Training adds
   its random crop (with padding) and flip on top of this square; evaluation and prediction use the square.

Example:
    >>> from PIL import Image
    >>> im = Image.new("RGBA", (40, 20), (255, 0, 0, 0))       # a transparent, wide image
    >>> decode_image(im, 16).shape                             # centre square, RGB, alpha on white
    (16, 16, 3)
    >>> decode_image(im, 16)[0, 0].tolist()
    [255, 255, 255]
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from statistics import median
from typing import Iterable

import numpy as np
import torch

from sskt.errors import SSKTError
from sskt.io import DiskFullError, atomic_write
from sskt.progress import progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp"}
# What a file decodes to under this policy; part of the decoded-tensor cache key, so bump it whenever the
# policy changes any output (1 was the square-only decoder: stretched, no EXIF, alpha dropped).
POLICY_VERSION = 2


def is_image_file(path: Path) -> bool:
    """A file with an image suffix that is not hidden (``.DS_Store``, ``._x.jpg`` of macOS are skipped)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def to_rgb(im):  # PIL.Image -> PIL.Image
    """``im`` upright (EXIF orientation) and in RGB; transparency composited on white."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im) or im
    if im.mode == "RGB":
        return im
    if im.mode in ("P", "PA") or (im.mode == "L" and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):  # 16-bit / float grey: scale to 8 bits
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() if arr.size else 1.0
        scale = 255.0 / (65535.0 if top > 255 else 255.0)
        im = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def fit_square(im, size: int):  # PIL.Image -> PIL.Image
    """The shorter side resized to ``size`` (aspect kept), then the centre ``size`` x ``size`` square."""
    from PIL import Image

    w, h = im.size
    if (w, h) == (size, size):
        return im
    if w == h:  # same aspect: one resize, as the earlier square-only decoder did (bit-identical results)
        return im.resize((size, size), Image.BILINEAR)
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def decode_image(im, size: int | None) -> np.ndarray:
    """A PIL image as an (H, W, 3) uint8 array by the policy above (``size`` None: its own size)."""
    im = to_rgb(im)
    if size is not None:
        im = fit_square(im, size)
    return np.asarray(im, dtype=np.uint8)


def read_image(path: str | os.PathLike, size: int | None) -> np.ndarray:
    """The file at ``path`` decoded by the policy; a file that is no image is one clear error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return decode_image(im, size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise SSKTError(f"corrupt image file {path} ({err.__class__.__name__}); delete or replace it") from None


def image_sizes(paths: Iterable[Path], limit: int = 200) -> list[tuple[int, int]]:
    """(width, height) of up to ``limit`` files, read from their headers (upright, by EXIF orientation)."""
    from PIL import Image, UnidentifiedImageError

    sizes = []
    for i, p in enumerate(paths):
        if i >= limit:
            break
        try:
            with Image.open(p) as im:
                w, h = im.size
                if (im.getexif() or {}).get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees
                    w, h = h, w
                sizes.append((w, h))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise SSKTError(f"corrupt image file {p} ({err.__class__.__name__}); delete or replace it") from None
    return sizes


def auto_image_size(sizes: list[tuple[int, int]]) -> int:
    """The square input size for images of these (width, height): the median shorter side, snapped down to
    32 (small images such as CIFAR's), 64, 96 or 128 (photos; larger costs more CPU than it gives a small
    target trained on few labels).

    Example:
        >>> auto_image_size([(32, 32)] * 5), auto_image_size([(640, 480), (300, 200)]), auto_image_size([(70, 90)])
        (32, 128, 64)
    """
    if not sizes:
        raise SSKTError("no images to size; check the data folder")
    side = median(min(w, h) for w, h in sizes)
    for snap in (128, 96, 64):
        if side >= snap:
            return snap
    return 32 if side >= 24 else max(8, int(side))


def cache_dir() -> Path:
    """Where decoded tensors are kept: ``SSKT_CACHE_DIR``, else ``~/.cache/sskt``."""
    return Path(os.environ.get("SSKT_CACHE_DIR", Path.home() / ".cache" / "sskt"))


def decode_images(paths: list[Path], size: int | None) -> torch.Tensor:
    """Image files as a uint8 (N,3,H,W) tensor, each decoded by :func:`sskt.data.images.read_image`
    (``size`` None: every file at its own size, which must then be the same). Cached on disk by file
    list, size, mtime and the decoding policy's version."""
    h = hashlib.sha256(f"{size}|policy{POLICY_VERSION}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = cache_dir() / "decoded" / f"{h.hexdigest()[:24]}.npy"
    if cache.is_file():
        try:
            return torch.from_numpy(np.load(cache))
        except (ValueError, OSError, EOFError):
            cache.unlink(missing_ok=True)  # a damaged cache is rebuilt, never used
    arrays = [read_image(p, size) for p in progress(paths, len(paths), "decoding images", "files")]
    shapes = sorted({a.shape[:2] for a in arrays})
    if len(shapes) > 1:
        (h1, w1), (h2, w2) = shapes[:2]
        more = ", and more" if len(shapes) > 2 else ""
        raise SSKTError(f"images have different sizes ({w1}x{h1} and {w2}x{h2} px{more}); set data.image_size to "
                        f"decode them all at one size")
    out = np.stack(arrays).transpose(0, 3, 1, 2).copy() if arrays else np.zeros((0, 3, size or 1, size or 1), np.uint8)
    _write_decoded_cache(cache, out)
    return torch.from_numpy(out)


# Cache folders already warned about in this process: one warning, not one per split (writes are still tried).
_WARNED_CACHES: set[Path] = set()


def _write_decoded_cache(cache: Path, out: np.ndarray) -> None:
    """Keep ``out`` in the decoded-image cache, atomically. The cache only saves time: decoding worked, so a
    cache that cannot be written (full disk, quota, read-only or unwritable folder) is one warning per
    process and the run goes on without it."""
    elsewhere = "set SSKT_CACHE_DIR to a folder with room; going on without the decoded-image cache (each run decodes again)"
    try:
        # size: the array plus an upper bound of the .npy header, reserved before writing
        atomic_write(cache, lambda fh: np.save(fh, out), size=out.nbytes + 4096, elsewhere=elsewhere)
        return
    except DiskFullError as err:
        line = str(err)
    except OSError as err:
        line = (f"cannot write the decoded-image cache {cache} ({err.strerror or err}); going on without it (each run "
                f"decodes again): set SSKT_CACHE_DIR to a writable folder")
    if cache.parent not in _WARNED_CACHES:
        _WARNED_CACHES.add(cache.parent)
        print(f"sskt: warning: {line}", file=sys.stderr, flush=True)
