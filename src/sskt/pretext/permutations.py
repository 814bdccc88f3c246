"""Permutation sets for jigsaw puzzles (Noroozi & Favaro 2016; Noroozi et al. 2018).

A jigsaw network classifies which of P fixed permutations shuffled the 9 tiles. The set matters:
permutations that differ in only one or two positions are nearly indistinguishable, so the sets
are chosen greedily to be far apart in Hamming distance (number of positions that differ).

* ``"max_min"`` (Jigsaw++, CVPR 2018): each new permutation maximises its *minimum* distance to
  the ones already chosen. The authors ship 701 permutations with minimum distance 3.
* ``"max_avg"`` (original Jigsaw, ECCV 2016): each new permutation maximises its *average*
  distance to the ones already chosen (1000 permutations in the paper).

Both are greedy, seeded and deterministic. By default the candidates are all 9! = 362,880
permutations (about a second for P = 1000); ``pool_size`` restricts them to a seeded random sample
of distinct permutations, which is faster but may give a smaller minimum distance.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

NUM_TILES = 9
METHODS = ("max_min", "max_avg")


def _all_permutations(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8)


def generate_permutations(
    num_permutations: int,
    method: str = "max_min",
    seed: int = 0,
    pool_size: int | None = None,
    num_tiles: int = NUM_TILES,
    include_identity: bool = True,
) -> np.ndarray:
    """Greedily choose ``num_permutations`` permutations of ``num_tiles`` tiles, far apart in Hamming distance.

    Args:
        num_permutations: P, the number of classes of the jigsaw task (701 for Jigsaw++, 1000 for Jigsaw).
        method: ``"max_min"`` (maximise the minimum distance to the chosen set; Jigsaw++) or
            ``"max_avg"`` (maximise the average distance; original Jigsaw).
        seed: seeds the candidate order (ties are broken by it) and the first permutation.
        pool_size: if given, candidates are this many distinct permutations sampled at random instead
            of all ``num_tiles!``; faster, slightly worse sets.
        num_tiles: 9 for a 3x3 puzzle.
        include_identity: if False the identity (an unshuffled puzzle) is never chosen, as in the
            authors' 701 set.

    Returns:
        int64 array (P, num_tiles); row p lists, for each output position, the input cell it takes.

    Example:
        >>> perms = generate_permutations(100, "max_min", seed=0)
        >>> perms.shape, min_hamming_distance(perms) >= 5
        ((100, 9), True)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    rng = np.random.default_rng(seed)
    pool = _all_permutations(num_tiles)
    if not include_identity:
        pool = pool[1:]  # itertools yields the identity first
    if pool_size is not None and pool_size < len(pool):
        pool = pool[rng.choice(len(pool), size=pool_size, replace=False)]
    else:
        pool = pool[rng.permutation(len(pool))]  # a random order makes argmax break ties at random
    if num_permutations > len(pool):
        raise ValueError(f"asked for {num_permutations} permutations but only {len(pool)} candidates exist")

    # score[c] = min (or sum) of distances from candidate c to the chosen set, updated incrementally.
    # onehot[i, c] marks candidates with cell c at position i, so the agreement of every candidate
    # with one permutation is 9 in-place row additions (about 0.1 ms for all 9! candidates).
    n = len(pool)
    pool_t = np.ascontiguousarray(pool.T)  # contiguous rows: the additions below stream memory
    onehot = np.stack([pool_t == c for c in range(num_tiles)], axis=1).astype(np.int8)  # (pos, cell, n)
    agree = np.empty(n, dtype=np.int8)
    chosen = np.empty(num_permutations, dtype=np.int64)
    score = np.full(n, num_tiles if method == "max_min" else 0, dtype=np.int32)
    j = 0  # the pool is shuffled, so its first entry is a seeded random start
    for step in range(num_permutations):
        chosen[step] = j
        cells = [int(c) for c in pool[j]]  # Python ints: numpy-scalar indices are ~50x slower here
        np.copyto(agree, onehot[0, cells[0]])
        for i in range(1, num_tiles):
            np.add(agree, onehot[i, cells[i]], out=agree)
        dist = num_tiles - agree.astype(np.int32)  # Hamming distance of every candidate to pool[j]
        if method == "max_min":
            np.minimum(score, dist, out=score)
        else:
            score += dist  # the sum is argmax-equivalent to the average
        score[chosen[: step + 1]] = -1  # never pick a permutation twice
        j = int(np.argmax(score))
    return pool[chosen].astype(np.int64)


def hamming_distances(perms: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (P, P) between the rows of ``perms``.

    Example:
        >>> hamming_distances(np.array([[0, 1, 2], [1, 0, 2]])).tolist()
        [[0, 2], [2, 0]]
    """
    perms = np.asarray(perms)
    out = np.zeros((len(perms), len(perms)), dtype=np.int64)
    for i in range(perms.shape[1]):  # loop over the 9 positions, vectorised over pairs
        col = perms[:, i]
        out += col[:, None] != col[None, :]
    return out


def min_hamming_distance(perms: np.ndarray) -> int:
    """Smallest Hamming distance between two different rows (the guarantee of a ``max_min`` set).

    Example:
        >>> min_hamming_distance(np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]]))
        2
    """
    d = hamming_distances(perms)
    np.fill_diagonal(d, np.iinfo(np.int64).max)
    return int(d.min())


def mean_hamming_distance(perms: np.ndarray) -> float:
    """Average Hamming distance over pairs of different rows (what ``max_avg`` maximises).

    Example:
        >>> mean_hamming_distance(np.array([[0, 1, 2], [1, 0, 2]]))
        2.0
    """
    d = hamming_distances(perms)
    p = len(d)
    return float(d.sum() / (p * (p - 1)))


def save_permutations(path: str | Path, perms: np.ndarray) -> None:
    """Save a permutation set as ``.npy`` so a trained jigsaw model can be paired with its exact classes.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "perms.npy")
        >>> save_permutations(p, generate_permutations(10)); load_permutations(p).shape
        (10, 9)
    """
    np.save(Path(path), np.asarray(perms, dtype=np.int64))


def load_permutations(path: str | Path, one_indexed: bool = False) -> np.ndarray:
    """Load a permutation set from ``.npy`` or a whitespace-separated text file (one permutation a line).

    ``one_indexed=True`` converts files that count cells from 1, like the authors' MATLAB/Caffe sets.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "perms.txt")
        >>> _ = open(p, "w").write("1 2 3\\n3 2 1\\n")
        >>> load_permutations(p, one_indexed=True).tolist()
        [[0, 1, 2], [2, 1, 0]]
    """
    path = Path(path)
    perms = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.int64, ndmin=2)
    perms = np.asarray(perms, dtype=np.int64) - (1 if one_indexed else 0)
    n = perms.shape[1]
    if not (np.sort(perms, axis=1) == np.arange(n)).all():
        raise ValueError(f"{path}: every row must be a permutation of 0..{n - 1} (set one_indexed for 1..{n})")
    return perms
