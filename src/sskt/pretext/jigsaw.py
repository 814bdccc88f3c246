"""Jigsaw and Jigsaw++ puzzles on image batches, and a shared-trunk puzzle solver.

Follows the authors' Caffe pipeline for Jigsaw++ (Noroozi et al., CVPR 2018; spec section 4.2),
scaled to the image size: a 3x3 grid of cells (85 px at full scale, 255 px crop), one tile of
64/85 of a cell cut at a random offset inside each cell, plus the shortcut guards:

* random tile offset inside each cell (no edge continuity between neighbouring tiles);
* an extra independent offset of 0-2 px (at full scale) per colour channel (no chromatic aberration cue);
* per puzzle, grey with p = 0.5, else a fixed colour projection with p = 0.5 (no colour cue);
* per-tile mean/variance normalisation (no brightness/contrast cue between tiles).

Jigsaw++ then replaces n ~ Uniform{0, 1, 2} tiles of each puzzle by tiles of another image of the
batch; the label stays the permutation index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

NUM_TILES = 9
GRID = 3
# Authors' full-scale geometry: 255 px crop, 85 px cells, 64 px tiles, 0-2 px per-channel offset.
FULL_CELL, FULL_TILE, FULL_CHANNEL_JITTER = 85, 64, 2
# Fixed colour projection of the authors' data layer (applied to RGB column vectors).
COLOUR_PROJECTION = torch.tensor(
    [[0.8333, 0.3333, -0.1667], [0.3333, 0.3333, 0.3333], [-0.1667, 0.3333, 0.8333]]
)
# Codes of JigsawBatch.colour.
COLOUR_KEEP, COLOUR_GREY, COLOUR_PROJECT = 0, 1, 2


def scaled_geometry(image_size: int) -> tuple[int, int, int]:
    """(cell, tile, channel_jitter) in px for a square image side, scaled from the authors' 255/85/64/2.

    Example:
        >>> scaled_geometry(255), scaled_geometry(96), scaled_geometry(32)
        ((85, 64, 2), (32, 24, 1), (10, 8, 0))
    """
    cell = image_size // GRID
    tile = max(1, round(cell * FULL_TILE / FULL_CELL))
    jitter = round(cell * FULL_CHANNEL_JITTER / FULL_CELL)
    return cell, tile, jitter


@dataclass
class JigsawBatch:
    """Puzzles made from one image batch.

    Attributes:
        tiles: (B, 9, C, t, t) float, output position i holds input cell ``permutations[label][i]``
            (or a foreign tile where ``replaced``).
        label: (B,) long, permutation index (the class to predict).
        replaced: (B, 9) bool, output positions holding a tile of ``donor`` (Jigsaw++).
        num_replaced: (B,) long, ``replaced.sum(1)``.
        donor: (B,) long, batch index of the image the foreign tiles come from.
        origin: (B, 2) long, (y, x) of the grid's top-left corner in the image.
        offsets: (B, 9, 2) long, (y, x) of each tile inside its cell, in cell (unshuffled) order.
        colour: (B,) long, 0 unchanged, 1 grey, 2 colour projection.
    """

    tiles: Tensor
    label: Tensor
    replaced: Tensor
    num_replaced: Tensor
    donor: Tensor
    origin: Tensor
    offsets: Tensor
    colour: Tensor


class JigsawPuzzles:
    """Batched Jigsaw / Jigsaw++ puzzle maker for float images in [0, 1] of shape (B, C, H, W).

    Args:
        permutations: (P, 9) integer array or tensor (see :func:`generate_permutations`).
        cell, tile, channel_jitter: geometry in px; ``None`` scales the authors' 85/64/2 px to the
            input: ``cell = min(H, W) // 3`` (see :func:`scaled_geometry`).
        tile_jitter: random tile offset inside each cell and random grid position in the image;
            if False both are centred.
        grey_p: probability of a grey puzzle (channel mean copied to every channel).
        projection_p: probability of the colour projection for a puzzle that is not grey.
        normalize: per-tile mean/variance normalisation over all pixels and channels.
        norm_scale: factor applied after normalisation. The authors use 50 because their Caffe
            network takes 0-255 inputs; 1.0 suits networks built for unit-variance inputs.
        max_replaced: 0 gives Jigsaw; 2 gives Jigsaw++ (n ~ Uniform{0..max_replaced} foreign tiles).

    Example:
        >>> import torch
        >>> from sskt.pretext.permutations import generate_permutations
        >>> maker = JigsawPuzzles(generate_permutations(100), max_replaced=2)
        >>> batch = maker(torch.rand(4, 3, 32, 32), generator=torch.Generator().manual_seed(0))
        >>> tuple(batch.tiles.shape), tuple(batch.label.shape)
        ((4, 9, 3, 8, 8), (4,))
    """

    def __init__(
        self,
        permutations: np.ndarray | Tensor,
        cell: int | None = None,
        tile: int | None = None,
        channel_jitter: int | None = None,
        tile_jitter: bool = True,
        grey_p: float = 0.5,
        projection_p: float = 0.5,
        normalize: bool = True,
        norm_scale: float = 1.0,
        max_replaced: int = 0,
        eps: float = 1e-5,
    ) -> None:
        perms = torch.as_tensor(np.asarray(permutations), dtype=torch.long)
        if perms.ndim != 2 or perms.shape[1] != NUM_TILES:
            raise ValueError(f"permutations must have shape (P, {NUM_TILES}), got {tuple(perms.shape)}")
        if not (perms.sort(dim=1).values == torch.arange(NUM_TILES)).all():
            raise ValueError("every row of permutations must be a permutation of 0..8")
        if not 0 <= max_replaced <= NUM_TILES:
            raise ValueError(f"max_replaced must be in [0, {NUM_TILES}], got {max_replaced}")
        self.permutations = perms
        self.cell, self.tile, self.channel_jitter = cell, tile, channel_jitter
        self.tile_jitter = tile_jitter
        self.grey_p, self.projection_p = grey_p, projection_p
        self.normalize, self.norm_scale, self.eps = normalize, norm_scale, eps
        self.max_replaced = max_replaced

    @classmethod
    def without_guards(cls, permutations: np.ndarray | Tensor, **kwargs) -> "JigsawPuzzles":
        """A maker with every shortcut guard off: centred tiles, no channel offset, no colour change,
        no normalisation. Tiles are then exact crops of the input (used by tests and for visualising).

        Example:
            >>> maker = JigsawPuzzles.without_guards([list(range(9))], cell=10, tile=10)
            >>> maker.normalize, maker.grey_p
            (False, 0.0)
        """
        options = dict(channel_jitter=0, tile_jitter=False, grey_p=0.0, projection_p=0.0, normalize=False)
        options.update(kwargs)
        return cls(permutations, **options)

    @property
    def num_permutations(self) -> int:
        return int(self.permutations.shape[0])

    def geometry(self, height: int, width: int) -> tuple[int, int, int]:
        """(cell, tile, channel_jitter) used for an input of this size."""
        auto = scaled_geometry(min(height, width))
        cell = self.cell if self.cell is not None else auto[0]
        tile = self.tile if self.tile is not None else max(1, round(cell * FULL_TILE / FULL_CELL))
        jitter = self.channel_jitter if self.channel_jitter is not None else round(cell * FULL_CHANNEL_JITTER / FULL_CELL)
        if GRID * cell > min(height, width):
            raise ValueError(f"a 3x3 grid of {cell} px cells does not fit in a {height}x{width} image")
        if tile + jitter > cell:
            raise ValueError(f"tile ({tile} px) + channel_jitter ({jitter} px) must fit in a cell ({cell} px)")
        return cell, tile, jitter

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> JigsawBatch:
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError("images must be float in [0, 1] (convert uint8 batches with x.float() / 255)")
        b, c, h, w = images.shape
        dev = images.device
        cell, tile, jitter = self.geometry(h, w)
        g = generator

        def randint(high: int, size: tuple[int, ...]) -> Tensor:
            return torch.randint(0, high, size, generator=g).to(dev)

        def rand(size: tuple[int, ...]) -> Tensor:
            return torch.rand(size, generator=g).to(dev)

        # Where the grid sits in the image, and each tile inside its cell. Offsets leave room for
        # the per-channel shift so every pixel stays inside its own cell (tiles never overlap).
        slack_y, slack_x = h - GRID * cell, w - GRID * cell
        room = cell - tile - jitter
        if self.tile_jitter:
            origin = torch.stack([randint(slack_y + 1, (b,)), randint(slack_x + 1, (b,))], dim=1)
            offsets = randint(room + 1, (b, NUM_TILES, 2))
        else:
            origin = torch.tensor([slack_y // 2, slack_x // 2], device=dev).expand(b, 2).clone()
            offsets = torch.full((b, NUM_TILES, 2), room // 2, dtype=torch.long, device=dev)
        shift = randint(jitter + 1, (b, NUM_TILES, c, 2)) if jitter > 0 else torch.zeros(
            (b, NUM_TILES, c, 2), dtype=torch.long, device=dev)

        # One advanced-indexing gather for all B x 9 x C tile planes.
        k = torch.arange(NUM_TILES, device=dev)
        cell_yx = torch.stack([k // GRID, k % GRID], dim=1) * cell  # (9, 2), row-major cells
        top_left = origin[:, None, None, :] + cell_yx[None, :, None, :] + offsets[:, :, None, :] + shift  # (B,9,C,2)
        ar = torch.arange(tile, device=dev)
        rows = top_left[..., 0, None] + ar  # (B, 9, C, t)
        cols = top_left[..., 1, None] + ar
        bi = torch.arange(b, device=dev)[:, None, None, None, None]
        ci = torch.arange(c, device=dev)[None, None, :, None, None]
        tiles = images[bi, ci, rows[..., :, None], cols[..., None, :]]  # (B, 9, C, t, t), cell order

        # One colour decision per puzzle, shared by its 9 tiles.
        colour = torch.full((b,), COLOUR_KEEP, dtype=torch.long, device=dev)
        if c == 3 and (self.grey_p > 0 or self.projection_p > 0):
            u1, u2 = rand((b,)), rand((b,))
            colour = torch.where(u1 < self.grey_p, COLOUR_GREY,
                                 torch.where(u2 < self.projection_p, COLOUR_PROJECT, COLOUR_KEEP))
            grey = tiles.mean(dim=2, keepdim=True).expand_as(tiles)
            projected = torch.einsum("ij,bnjhw->bnihw", COLOUR_PROJECTION.to(tiles), tiles)
            sel = colour[:, None, None, None, None]
            tiles = torch.where(sel == COLOUR_GREY, grey, torch.where(sel == COLOUR_PROJECT, projected, tiles))

        if self.normalize:
            flat = tiles.flatten(2)  # all pixels and channels of a tile, like Caffe MVN across_channels
            mean = flat.mean(dim=2, keepdim=True)
            std = flat.std(dim=2, unbiased=False, keepdim=True)
            tiles = ((flat - mean) / (std + self.eps) * self.norm_scale).view_as(tiles)

        # Shuffle: output position i takes cell perm[label][i].
        label = randint(self.num_permutations, (b,))
        perm = self.permutations.to(dev)[label]  # (B, 9)
        idx = perm[:, :, None, None, None].expand_as(tiles)
        shuffled = tiles.gather(1, idx)

        # Jigsaw++: n distinct output positions take n distinct tiles of another (unshuffled) puzzle.
        replaced = torch.zeros((b, NUM_TILES), dtype=torch.bool, device=dev)
        donor = torch.arange(b, device=dev)
        if self.max_replaced > 0 and b > 1:
            n = randint(self.max_replaced + 1, (b,))
            donor = (donor + 1 + randint(b - 1, (b,))) % b  # never the image itself
            rank = rand((b, NUM_TILES)).argsort(dim=1).argsort(dim=1)  # random rank of each position
            replaced = rank < n[:, None]
            donor_cells = rand((b, NUM_TILES)).argsort(dim=1).gather(1, rank)  # distinct cells per puzzle
            foreign = tiles[donor[:, None], donor_cells]  # (B, 9, C, t, t)
            shuffled = torch.where(replaced[:, :, None, None, None], foreign, shuffled)
        return JigsawBatch(
            tiles=shuffled, label=label, replaced=replaced, num_replaced=replaced.sum(dim=1),
            donor=donor, origin=origin, offsets=offsets, colour=colour,
        )


def unshuffle(tiles: Tensor, label: Tensor, permutations: np.ndarray | Tensor) -> Tensor:
    """Undo the shuffle of a puzzle batch: returns tiles (B, 9, ...) back in cell order.

    Example:
        >>> import torch
        >>> perms = torch.tensor([[2, 0, 1, 3, 4, 5, 6, 7, 8]])
        >>> t = torch.arange(9.0).view(1, 9)[:, perms[0]]  # what a maker outputs for cells 0..8
        >>> unshuffle(t, torch.tensor([0]), perms).tolist()
        [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]]
    """
    perm = torch.as_tensor(np.asarray(permutations), dtype=torch.long, device=tiles.device)[label]
    inverse = perm.argsort(dim=1)  # cell k sits at output position inverse[k]
    idx = inverse.view(*inverse.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return tiles.gather(1, idx)


def assemble(tiles: Tensor) -> Tensor:
    """Stitch tiles in cell order (B, 9, C, t, t) into images (B, C, 3t, 3t), row-major 3x3.

    Example:
        >>> import torch
        >>> assemble(torch.zeros(2, 9, 3, 8, 8)).shape
        torch.Size([2, 3, 24, 24])
    """
    b, n, c, t, _ = tiles.shape
    grid = tiles.view(b, GRID, GRID, c, t, t).permute(0, 3, 1, 4, 2, 5)  # (B, C, row, y, col, x)
    return grid.reshape(b, c, GRID * t, GRID * t)


class JigsawNet(nn.Module):
    """Context-free network: one shared trunk per tile, tile features concatenated, MLP to P classes.

    ``trunk`` maps a tile batch (N, C, t, t) to features (N, D) or maps (N, D, h, w) (then averaged
    over space). The authors' CFN uses fc6 (1024 per tile) -> concat -> fc7 (4096) -> fc8 (P);
    ``tile_dim`` and ``hidden`` play the roles of fc6 and fc7.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> trunk = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> net = JigsawNet(trunk, feature_dim=16, num_permutations=100, tile_dim=32, hidden=64)
        >>> net(torch.zeros(2, 9, 3, 8, 8)).shape
        torch.Size([2, 100])
    """

    def __init__(
        self,
        trunk: nn.Module,
        feature_dim: int,
        num_permutations: int,
        tile_dim: int | None = 256,
        hidden: int = 1024,
        dropout: float = 0.5,
        permutations: np.ndarray | Tensor | None = None,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.tile_fc: nn.Module = nn.Identity()
        width = feature_dim
        if tile_dim:
            self.tile_fc = nn.Sequential(nn.Linear(feature_dim, tile_dim), nn.ReLU(inplace=True))
            width = tile_dim
        self.head = nn.Sequential(
            nn.Linear(NUM_TILES * width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_permutations),
        )
        if permutations is not None:
            # Stored in the state dict: a checkpoint is useless without its exact class definitions.
            perms = torch.as_tensor(np.asarray(permutations), dtype=torch.long)
            if perms.shape != (num_permutations, NUM_TILES):
                raise ValueError(f"permutations shape {tuple(perms.shape)} != ({num_permutations}, {NUM_TILES})")
            self.register_buffer("permutations", perms)

    def tile_features(self, tiles: Tensor) -> Tensor:
        """Trunk features of every tile: (B, 9, C, t, t) -> (B, 9, D)."""
        b = tiles.shape[0]
        f = self.trunk(tiles.flatten(0, 1))
        if f.ndim > 2:
            f = f.flatten(2).mean(dim=2)
        return f.view(b, NUM_TILES, -1)

    def forward(self, tiles: Tensor) -> Tensor:
        f = self.tile_fc(self.tile_features(tiles))
        return self.head(f.flatten(1))
