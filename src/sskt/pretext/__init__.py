"""Pretext tasks: Jigsaw / Jigsaw++ puzzles (Noroozi et al. 2016, 2018) and rotation prediction."""
from sskt.pretext.jigsaw import (
    COLOUR_PROJECTION,
    JigsawBatch,
    JigsawNet,
    JigsawPuzzles,
    assemble,
    scaled_geometry,
    unshuffle,
)
from sskt.pretext.permutations import (
    generate_permutations,
    hamming_distances,
    load_permutations,
    mean_hamming_distance,
    min_hamming_distance,
    save_permutations,
)
from sskt.pretext.rotation import random_rotation_batch, rotation_batch

__all__ = [
    "COLOUR_PROJECTION", "JigsawBatch", "JigsawNet", "JigsawPuzzles", "assemble", "scaled_geometry", "unshuffle",
    "generate_permutations", "hamming_distances", "load_permutations", "mean_hamming_distance",
    "min_hamming_distance", "save_permutations", "random_rotation_batch", "rotation_batch",
]
