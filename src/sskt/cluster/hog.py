"""HOG descriptors (scikit-image) as a hand-crafted "teacher" to cluster (Noroozi et al. 2018, section 4.1)."""
from __future__ import annotations

import numpy as np
from skimage.feature import hog
from torch import Tensor

# Defaults: 8x8 px cells, 2x2-cell blocks, 9 orientations, L2-Hys (Dalal & Triggs). For a 32x32
# image that is 3x3 blocks x 2x2 cells x 9 bins = 324 numbers (see hog_dim).
DEFAULT_ORIENTATIONS = 9
DEFAULT_CELL = 8
DEFAULT_BLOCK = 2


def hog_dim(
    height: int,
    width: int | None = None,
    orientations: int = DEFAULT_ORIENTATIONS,
    pixels_per_cell: int = DEFAULT_CELL,
    cells_per_block: int = DEFAULT_BLOCK,
) -> int:
    """Length of the HOG vector of one image (what :func:`hog_features` returns per row).

    Example:
        >>> hog_dim(32), hog_dim(96)
        (324, 4356)
    """
    width = height if width is None else width
    cy, cx = height // pixels_per_cell, width // pixels_per_cell
    by, bx = cy - cells_per_block + 1, cx - cells_per_block + 1
    if by < 1 or bx < 1:
        raise ValueError(f"a {height}x{width} image has fewer cells than one {cells_per_block}x{cells_per_block} block")
    return by * bx * cells_per_block * cells_per_block * orientations


def hog_features(
    images: Tensor | np.ndarray,
    orientations: int = DEFAULT_ORIENTATIONS,
    pixels_per_cell: int = DEFAULT_CELL,
    cells_per_block: int = DEFAULT_BLOCK,
    block_norm: str = "L2-Hys",
) -> np.ndarray:
    """HOG descriptor of every image of a uint8 batch (B, C, H, W) (or (B, H, W) grey): float32 (B, D).

    Colour images use scikit-image's rule: at each pixel the channel with the largest gradient.
    D = :func:`hog_dim` (324 for 32x32 with the defaults). Runs image by image on the CPU
    (about 2,000 images/s for 32 px), so extract once and cache for large sets.

    Example:
        >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> hog_features(x).shape
        (2, 324)
    """
    a = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W) or (B, H, W), got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {a.dtype} (scale float [0, 1] images by 255 first)")
    a = a.transpose(0, 2, 3, 1)  # channels last for scikit-image
    colour = a.shape[-1] > 1
    out = np.empty((len(a), hog_dim(a.shape[1], a.shape[2], orientations, pixels_per_cell, cells_per_block)),
                   dtype=np.float32)
    for i, img in enumerate(a):
        out[i] = hog(
            img if colour else img[..., 0],
            orientations=orientations,
            pixels_per_cell=(pixels_per_cell, pixels_per_cell),
            cells_per_block=(cells_per_block, cells_per_block),
            block_norm=block_norm,
            feature_vector=True,
            channel_axis=-1 if colour else None,
        )
    return out
