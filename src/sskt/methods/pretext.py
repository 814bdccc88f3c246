"""Pretext tasks as training methods: ``rotation`` (RotNet), ``jigsaw`` and ``jigsaw++`` (Noroozi et al.).

The trunk is the target network itself, so the run's ``target.pt`` / ``last.ckpt`` can be probed,
fine-tuned or clustered like any other. Dataset labels are never read in training (unlabelled use);
per-epoch evaluation scores the pretext task on the test split (``test_acc`` is pretext accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sskt.errors import SSKTError
from sskt.methods.base import METHODS, BuildContext, Method, StepOutput, parse_options
from sskt.models.target import TargetNetwork
from sskt.pretext.jigsaw import JigsawNet, JigsawPuzzles
from sskt.pretext.rotation import NUM_ROTATIONS, random_rotation_batch, rotation_batch


def _eval_generator(batch: dict[str, Tensor]) -> torch.Generator:
    # Same puzzles for the same test images at every evaluation: epochs are comparable.
    first = int(batch["index"][0]) if "index" in batch else 0
    return torch.Generator().manual_seed(1_000_003 + first)


@dataclass
class RotationOptions:
    """``all_rotations``: train on all four turns of every image (RotNet's best, 4x the compute)
    instead of one random turn per image."""

    all_rotations: bool = False


@METHODS.register("rotation")
class RotationPretext(Method):
    """RotNet (Gidaris et al. 2018): the target classifies 0/90/180/270-degree turns (4 classes)."""

    options_class = RotationOptions
    learns_from_unlabeled = True
    uses_labels = False  # the turns are the labels

    def __init__(self, target: TargetNetwork, options: RotationOptions) -> None:
        super().__init__(target)
        self.options = options

    @classmethod
    def from_config(cls, options: dict, ctx: BuildContext) -> "RotationPretext":
        if ctx.input_shape[-1] != ctx.input_shape[-2]:
            raise SSKTError(f"rotation needs square images, got {ctx.input_shape[-2]}x{ctx.input_shape[-1]}")
        return cls(ctx.build_target(num_classes=NUM_ROTATIONS), parse_options(RotationOptions, options))

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        make = rotation_batch if self.options.all_rotations else random_rotation_batch
        images, labels = make(batch["image"])
        logits = self.target(images)
        return StepOutput(logits, {"rotation": F.cross_entropy(logits, labels)}, targets=labels)

    def evaluation_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = rotation_batch(batch["image"])  # all four turns: a deterministic score
        return self.target(images), labels


@dataclass
class JigsawOptions:
    """Options of ``jigsaw`` / ``jigsaw++``.

    ``permutations``: P classes; ``selection``: ``max_min`` (Jigsaw++, minimum Hamming distance) or
    ``max_avg`` (original Jigsaw); ``permutation_file``: a saved set instead (``.npy`` or the authors'
    ``.bin``, see :func:`sskt.pretext.load_permutations`). ``max_replaced``: foreign tiles per puzzle
    n ~ U{0..max_replaced} (default 0 for jigsaw, 2 for jigsaw++). ``cell``/``tile``/``channel_jitter``:
    puzzle geometry in px (default: the authors' 85/64/2 scaled to the image, 10/8/0 at 32 px).
    ``tile_dim``/``hidden``/``dropout``: the solver's fc6 / fc7 (see :class:`~sskt.pretext.JigsawNet`).
    """

    permutations: int = 100
    selection: str = "max_min"
    permutation_file: str | None = None
    max_replaced: int | None = None
    cell: int | None = None
    tile: int | None = None
    channel_jitter: int | None = None
    grey_p: float = 0.5
    projection_p: float = 0.5
    tile_dim: int = 256
    hidden: int = 512
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.selection not in ("max_min", "max_avg"):
            raise SSKTError(f"selection must be 'max_min' or 'max_avg', got {self.selection!r}")
        if self.permutations < 2 and self.permutation_file is None:
            raise SSKTError(f"permutations must be >= 2, got {self.permutations}")


class JigsawPretext(Method):
    """Context-free network on the target's trunk: each of the 9 tiles goes through the target (its
    pooled features), the 9 feature vectors are concatenated and an MLP predicts the permutation."""

    default_replaced = 0
    options_class = JigsawOptions
    learns_from_unlabeled = True
    uses_labels = False  # the permutations are the labels

    def __init__(self, target: TargetNetwork, options: JigsawOptions, in_shape: tuple[int, ...]) -> None:
        super().__init__(target)
        from sskt.pretext.permutations import generate_permutations, load_permutations

        self.options = options
        if options.permutation_file:
            perms = load_permutations(options.permutation_file, one_indexed=options.permutation_file.endswith(".bin"))
        else:
            perms = generate_permutations(options.permutations, method=options.selection, seed=0,
                                          pool_size=50_000 if options.permutations > 1000 else None)
        replaced = self.default_replaced if options.max_replaced is None else options.max_replaced
        try:
            self.puzzles = JigsawPuzzles(perms, options.cell, options.tile, options.channel_jitter,
                                         grey_p=options.grey_p, projection_p=options.projection_p,
                                         max_replaced=replaced)
            self.puzzles.geometry(in_shape[-2], in_shape[-1])
        except ValueError as err:
            raise SSKTError(f"{self.name}: {err}") from None
        feature_dim, _ = target.feature_shapes(torch.rand(2, *in_shape))
        # The trunk is the target (called in tile_logits), so the solver's own trunk is the identity.
        self.solver = JigsawNet(torch.nn.Identity(), feature_dim, len(perms), options.tile_dim, options.hidden,
                                options.dropout, permutations=perms)

    @classmethod
    def from_config(cls, options: dict, ctx: BuildContext) -> "JigsawPretext":
        return cls(ctx.build_target(), parse_options(JigsawOptions, options), ctx.input_shape)

    def tile_logits(self, tiles: Tensor) -> Tensor:
        """Permutation logits (B, P) of puzzles (B, 9, C, t, t)."""
        b = tiles.shape[0]
        norm = self.target.normalize
        # Tiles are already mean/variance normalised; undo the target's own normalisation so it sees them as is.
        flat = tiles.flatten(0, 1) * norm.std.view(1, -1, 1, 1) + norm.mean.view(1, -1, 1, 1)
        feats = self.target.forward_features(flat).pooled.view(b, 9, -1)
        return self.solver.head(self.solver.tile_fc(feats).flatten(1))

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        puzzle = self.puzzles(batch["image"])
        logits = self.tile_logits(puzzle.tiles)
        return StepOutput(logits, {"jigsaw": F.cross_entropy(logits, puzzle.label)}, targets=puzzle.label)

    def evaluation_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        puzzle = self.puzzles(batch["image"], generator=_eval_generator(batch))
        return self.tile_logits(puzzle.tiles), puzzle.label


@METHODS.register("jigsaw")
class Jigsaw(JigsawPretext):
    """Jigsaw puzzles (Noroozi & Favaro 2016): predict which permutation shuffled the 9 tiles."""

    default_replaced = 0


@METHODS.register("jigsaw++")
class JigsawPlusPlus(JigsawPretext):
    """Jigsaw++ (Noroozi et al. 2018): up to 2 of the 9 tiles come from another image; same label."""

    default_replaced = 2
