"""Jigsaw / Jigsaw++ puzzles, permutation sets and rotation batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sskt.pretext import (
    JigsawNet,
    JigsawPuzzles,
    assemble,
    generate_permutations,
    mean_hamming_distance,
    min_hamming_distance,
    rotation_batch,
    scaled_geometry,
    unshuffle,
)


@pytest.fixture(scope="module")
def perms701() -> np.ndarray:
    return generate_permutations(701, "max_min", seed=0)


def test_jigsaw_pp_set_has_promised_min_distance(perms701):
    # The authors' 701 permutations guarantee min distance 3; the greedy max-min set must too.
    assert perms701.shape == (701, 9) and perms701.dtype == np.int64
    assert len({tuple(p) for p in perms701}) == 701
    assert (np.sort(perms701, axis=1) == np.arange(9)).all()
    assert min_hamming_distance(perms701) >= 3


def test_permutations_are_seeded_and_max_avg_spreads_them():
    a = generate_permutations(50, "max_avg", seed=3)
    assert np.array_equal(a, generate_permutations(50, "max_avg", seed=3))
    assert not np.array_equal(a, generate_permutations(50, "max_avg", seed=4))
    # Random permutations of 9 are on average 8 apart; a max-avg set must not be closer than that.
    assert mean_hamming_distance(a) >= 8.0
    no_id = generate_permutations(20, seed=0, include_identity=False, pool_size=5000)
    assert not (no_id == np.arange(9)).all(axis=1).any()


def test_scaled_geometry_matches_authors_at_full_scale():
    assert scaled_geometry(255) == (85, 64, 2)
    assert scaled_geometry(32) == (10, 8, 0)


def test_tiles_reassemble_to_original_crop_without_guards(perms701):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 30, 30, generator=g)
    maker = JigsawPuzzles.without_guards(perms701, cell=10, tile=10)
    batch = maker(images, generator=g)
    assert batch.tiles.shape == (6, 9, 3, 10, 10)
    assert not batch.replaced.any()
    # Shuffled: at least one puzzle differs from the identity arrangement.
    assert not torch.equal(assemble(batch.tiles), images)
    restored = assemble(unshuffle(batch.tiles, batch.label, perms701))
    assert torch.equal(restored, images)


def test_tiles_are_crops_at_reported_positions_with_tile_jitter(perms701):
    # Guards off except the random offsets: each tile must be the crop its reported position names.
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 32, 32, generator=g)
    maker = JigsawPuzzles.without_guards(perms701, tile_jitter=True)
    batch = maker(images, generator=g)
    cells = unshuffle(batch.tiles, batch.label, perms701)
    for b in range(4):
        for k in range(9):
            y = int(batch.origin[b, 0] + (k // 3) * 10 + batch.offsets[b, k, 0])
            x = int(batch.origin[b, 1] + (k % 3) * 10 + batch.offsets[b, k, 1])
            assert torch.equal(cells[b, k], images[b, :, y:y + 8, x:x + 8])


def test_guards_normalise_tiles_and_decide_colour_per_puzzle(perms701):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(64, 3, 96, 96, generator=g)
    batch = JigsawPuzzles(perms701)(images, generator=g)
    t = batch.tiles
    assert t.shape == (64, 9, 3, 24, 24)
    flat = t.flatten(2)
    assert torch.allclose(flat.mean(2), torch.zeros(64, 9), atol=1e-4)
    assert torch.allclose(flat.std(2, unbiased=False), torch.ones(64, 9), atol=1e-3)
    grey = batch.colour == 1
    assert 10 < int(grey.sum()) < 54  # p = 0.5
    # Grey puzzles have identical channels in all 9 tiles; colour ones do not.
    same = (t[:, :, 0] == t[:, :, 1]).flatten(1).all(1)
    assert torch.equal(same, grey)


@pytest.mark.parametrize("batch_size", [2, 16])
def test_jigsaw_pp_replaces_promised_number_of_tiles(perms701, batch_size):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(batch_size, 3, 30, 30, generator=g)
    maker = JigsawPuzzles.without_guards(perms701, cell=10, tile=10, max_replaced=2)
    counts = []
    for _ in range(20):
        batch = maker(images, generator=g)
        assert torch.equal(batch.num_replaced, batch.replaced.sum(1))
        assert int(batch.num_replaced.max()) <= 2
        assert not (batch.donor == torch.arange(batch_size)).any()
        cells = unshuffle(batch.tiles, batch.label, perms701)
        own = images.unfold(2, 10, 10).unfold(3, 10, 10).permute(0, 2, 3, 1, 4, 5).reshape(batch_size, 9, 3, 10, 10)
        replaced_cells = unshuffle(batch.replaced, batch.label, perms701)
        for b in range(batch_size):
            for k in range(9):
                is_own = torch.equal(cells[b, k], own[b, k])
                assert is_own != bool(replaced_cells[b, k])  # exactly the reported tiles are foreign
                if replaced_cells[b, k]:  # ... and they come from the donor
                    assert any(torch.equal(cells[b, k], own[batch.donor[b], j]) for j in range(9))
            foreign = [cells[b, k] for k in range(9) if replaced_cells[b, k]]
            if len(foreign) == 2:
                assert not torch.equal(foreign[0], foreign[1])  # distinct donor tiles
        counts += batch.num_replaced.tolist()
    assert set(counts) == {0, 1, 2}  # n ~ Uniform{0, 1, 2}


def test_jigsaw_net_shapes_and_stores_permutations():
    perms = generate_permutations(10, pool_size=2000)
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())  # spatial output: pooled by the net
    net = JigsawNet(trunk, feature_dim=8, num_permutations=10, tile_dim=16, hidden=32, permutations=perms)
    tiles = JigsawPuzzles(perms)(torch.rand(4, 3, 32, 32)).tiles
    assert net(tiles).shape == (4, 10)
    assert net.tile_features(tiles).shape == (4, 9, 8)
    assert torch.equal(net.state_dict()["permutations"], torch.as_tensor(perms))


def test_rotation_batch_labels_match_rotations():
    x = torch.rand(3, 3, 8, 8)
    rotated, labels = rotation_batch(x)
    assert rotated.shape == (12, 3, 8, 8)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for k in range(4):
        # Rotating back by -k quarter turns recovers the input.
        assert torch.equal(torch.rot90(rotated[k * 3:(k + 1) * 3], -k, dims=(-2, -1)), x)
