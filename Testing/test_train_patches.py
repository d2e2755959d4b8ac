"""crossmodalmas.train.patches: boundary queries, candidate offsets, patch Dice, triplets."""

import numpy as np
import torch

from crossmodalmas.train.patches import (
    PATCH,
    boundary_mask,
    embeddings_at,
    patch_dice,
    random_offsets,
    sample_queries,
    triplets,
)

SHAPE = (24, 24, 24)


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _cube(start=10, size=4, value=1, shape=SHAPE, labels=None):
    labels = torch.zeros(shape, dtype=torch.int64) if labels is None else labels
    k, j, i = (start,) * 3 if isinstance(start, int) else start
    labels[k:k + size, j:j + size, i:i + size] = value
    return labels


def _box(shape, start, stop):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[start:stop, start:stop, start:stop] = True
    return mask


def _random_labels(shape=SHAPE, classes=3, seed=0):
    """Blocky random labels: 3³ blocks of random classes (boundaries everywhere, but not noise)."""
    coarse = torch.randint(0, classes, tuple(s // 3 for s in shape), generator=_generator(seed))
    return coarse.repeat_interleave(3, 0).repeat_interleave(3, 1).repeat_interleave(3, 2)


def test_boundary_of_a_cube_is_one_voxel_either_side_of_its_surface():
    labels = _cube(start=8, size=6)  # voxels 8..13
    expected = _box(SHAPE, 7, 15) & ~_box(SHAPE, 9, 13)
    mask = boundary_mask(labels)
    assert mask.dtype == torch.bool and mask.shape == SHAPE
    assert torch.equal(mask, expected)
    assert int(mask.sum()) == 8 ** 3 - 4 ** 3


def test_the_grid_border_is_not_a_boundary():
    labels = _cube(start=0, size=5)  # touches the grid's corner
    assert torch.equal(boundary_mask(labels), _box(SHAPE, 0, 6) & ~_box(SHAPE, 0, 4))
    assert not boundary_mask(torch.full(SHAPE, 3)).any()


def test_queries_are_boundary_voxels_inside_the_margin():
    labels = _random_labels()
    mask = boundary_mask(labels)
    queries = sample_queries(labels, 50, 8, _generator())
    assert queries.shape == (50, 3) and queries.dtype == torch.int64
    assert (queries >= 8).all() and (queries < 24 - 8).all()
    assert mask[queries[:, 0], queries[:, 1], queries[:, 2]].all()
    assert len({tuple(q) for q in queries.tolist()}) == 50  # no voxel twice


def test_a_short_boundary_gives_every_voxel_once():
    labels = _cube(start=4, size=6)  # voxels 4..9: boundary 3..10, of which 8..10 lie inside margin 8
    expected = boundary_mask(labels) & _box(SHAPE, 8, 16)
    queries = sample_queries(labels, 10_000, 8, _generator())
    assert queries.shape[0] == int(expected.sum()) == 3 ** 3 - 1
    chosen = torch.zeros(SHAPE, dtype=torch.bool)
    chosen[queries[:, 0], queries[:, 1], queries[:, 2]] = True
    assert torch.equal(chosen, expected)
    assert sample_queries(labels, 10_000, 0, _generator()).shape[0] == 8 ** 3 - 4 ** 3  # margin 0: the whole grid
    assert sample_queries(torch.zeros(SHAPE, dtype=torch.int64), 5, 2, _generator()).shape == (0, 3)


def test_queries_are_deterministic_given_the_generator():
    labels = _random_labels()
    a = sample_queries(labels, 30, 7, _generator(3))
    b = sample_queries(labels, 30, 7, _generator(3))
    c = sample_queries(labels, 30, 7, _generator(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_offsets_zero_first_then_near_then_far():
    offsets = random_offsets(200, 9, 4, _generator())
    assert offsets.shape == (200, 9, 3) and offsets.dtype == torch.int64
    assert (offsets[:, 0] == 0).all()
    assert offsets[:, 1:5].abs().max() <= 1  # the first half of the other 8
    assert offsets.abs().max() <= 4
    assert offsets[:, 5:].abs().max() == 4  # the rest do reach max_offset
    assert set(offsets[:, 1:5].unique().tolist()) == {-1, 0, 1}
    assert torch.equal(offsets, random_offsets(200, 9, 4, _generator()))
    assert not torch.equal(offsets, random_offsets(200, 9, 4, _generator(1)))


def test_two_candidates_are_the_query_and_one_far_offset():
    offsets = random_offsets(500, 2, 3, _generator())
    assert (offsets[:, 0] == 0).all() and offsets[:, 1].abs().max() == 3
    assert random_offsets(0, 4, 2, _generator()).shape == (0, 4, 3)


def test_dice_of_identical_maps_at_the_query_is_one():
    labels = _random_labels()
    queries = sample_queries(labels, 40, PATCH // 2, _generator())
    dice = patch_dice(labels, labels, queries, torch.zeros((40, 1, 3), dtype=torch.int64))
    assert dice.shape == (40, 1)
    assert torch.equal(dice, torch.ones(40, 1))


def test_dice_of_a_shifted_cube_is_the_overlap():
    """A 4³ cube (voxels 10..13) fully inside both 15³ patches: shifting the atlas patch by
    one voxel along k keeps 3 x 4 x 4 of 64 voxels: Dice 2 * 48 / 128; along k and j, 36."""
    labels = _cube(start=10, size=4)
    corner = torch.tensor([[10, 10, 10]])  # a cube voxel: its structure is the cube
    offsets = torch.tensor([[[0, 0, 0], [1, 0, 0], [0, -1, 0], [1, 1, 0], [0, 0, 4]]])
    dice = patch_dice(labels, labels, corner, offsets)
    torch.testing.assert_close(dice, torch.tensor([[1.0, 0.75, 0.75, 72 / 128, 0.0]]))
    # The same overlap by moving the atlas's cube instead of its patch.
    moved = _cube(start=(11, 10, 10), size=4)
    torch.testing.assert_close(patch_dice(labels, moved, corner, offsets[:, :1]), torch.tensor([[0.75]]))


def test_dice_is_of_the_query_voxels_own_structure():
    target = _cube(start=12, size=3, value=2, labels=_cube(start=8, size=4, value=1))
    atlas = _cube(start=(13, 12, 12), size=3, value=2, labels=_cube(start=8, size=4, value=1))
    queries = torch.tensor([[8, 8, 8], [12, 12, 12], [8, 8, 12]])  # structure 1, 2 and background
    dice = patch_dice(target, atlas, queries, torch.zeros((3, 1, 3), dtype=torch.int64))
    background_t = PATCH ** 3 - 64 - 27  # every structure fully inside all three patches
    expected_background = 2 * (background_t - 9) / (2 * background_t)  # 9 voxels swap cube 2 <-> background
    torch.testing.assert_close(dice[:, 0], torch.tensor([1.0, 2 * 18 / 54, expected_background]))


def test_a_structure_absent_from_the_atlas_patch_scores_zero():
    target = _cube(start=10, size=4)
    atlas = torch.zeros(SHAPE, dtype=torch.int64)
    dice = patch_dice(target, atlas, torch.tensor([[11, 11, 11]]), torch.zeros((1, 3, 3), dtype=torch.int64))
    assert torch.equal(dice, torch.zeros(1, 3))
    far = _cube(start=0, size=3)  # the same label, outside the 15³ patch around (16, 16, 16)
    inside = _cube(start=15, size=3)
    assert patch_dice(inside, far, torch.tensor([[16, 16, 16]]), torch.zeros((1, 1, 3), dtype=torch.int64)) == 0


def _patch_dice_by_hand(target, atlas, queries, offsets):
    r = PATCH // 2
    t, a = target.numpy(), atlas.numpy()
    out = np.zeros(offsets.shape[:2])
    for q, (k, j, i) in enumerate(queries.tolist()):
        centre = t[k, j, i]
        in_t = t[k - r:k + r + 1, j - r:j + r + 1, i - r:i + r + 1] == centre
        for c, (dk, dj, di) in enumerate(offsets[q].tolist()):
            in_a = a[k + dk - r:k + dk + r + 1, j + dj - r:j + dj + r + 1, i + di - r:i + di + r + 1] == centre
            out[q, c] = 2 * (in_t & in_a).sum() / (in_t.sum() + in_a.sum())
    return torch.from_numpy(out).float()


def test_dice_matches_cut_out_patches_across_chunks():
    """More than one chunk of 128 queries, random labels and offsets, against explicit slicing."""
    target, atlas = _random_labels(seed=1), _random_labels(seed=2)
    generator = _generator(5)
    queries = sample_queries(target, 300, PATCH // 2 + 1, generator)
    assert queries.shape[0] == 300
    offsets = random_offsets(300, 3, 1, generator)
    dice = patch_dice(target, atlas, queries, offsets)
    assert dice.shape == (300, 3) and dice.dtype == torch.float32
    torch.testing.assert_close(dice, _patch_dice_by_hand(target, atlas, queries, offsets), atol=1e-6, rtol=0)
    assert patch_dice(target, atlas, queries[:0], offsets[:0]).shape == (0, 3)


def test_embeddings_are_read_at_the_positions():
    e, shape = 3, (4, 5, 6)
    k, j, i = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")
    embedding = torch.stack([c * 1000 + k * 100 + j * 10 + i for c in range(e)]).float()  # (E, D, H, W)
    positions = torch.tensor([[[0, 0, 0], [3, 4, 5], [1, 2, 3]], [[2, 0, 4], [0, 4, 0], [3, 1, 1]]])  # (2, 3, 3)
    values = embeddings_at(embedding, positions)
    assert values.shape == (2, 3, e)
    for index in np.ndindex(2, 3):
        kk, jj, ii = positions[index].tolist()
        assert values[index].tolist() == [c * 1000 + kk * 100 + jj * 10 + ii for c in range(e)]
    assert embeddings_at(embedding, positions[0, 1]).tolist() == [345.0, 1345.0, 2345.0]


def test_triplets_pair_a_positive_with_a_negative_per_query():
    dice = torch.tensor([
        [1.00, 0.20, 0.95, 0.70],  # positives 0, 2; negative 1
        [0.95, 0.92, 0.60, 0.70],  # no negative
        [0.10, 0.30, 0.40, 0.45],  # no positive
        [0.90, 0.50, 0.91, 0.49],  # thresholds are strict: positive 2, negative 3
    ])
    rows, positives, negatives = triplets(dice, 0.9, 0.5, _generator())
    assert rows.dtype == positives.dtype == negatives.dtype == torch.int64
    assert rows.tolist() == [0, 3]
    assert positives[0] in (0, 2) and negatives[0] == 1
    assert positives[1] == 2 and negatives[1] == 3
    assert (dice[rows, positives] > 0.9).all() and (dice[rows, negatives] < 0.5).all()


def test_triplets_draw_at_random_and_reproducibly():
    dice = torch.tensor([[0.95, 0.1, 0.99, 0.2, 0.97]])
    draws = {tuple(int(t[0]) for t in triplets(dice, 0.9, 0.5, _generator(seed))[1:]) for seed in range(40)}
    assert {p for p, _ in draws} == {0, 2, 4} and {n for _, n in draws} == {1, 3}
    first = triplets(dice.expand(6, -1), 0.9, 0.5, _generator(7))
    again = triplets(dice.expand(6, -1), 0.9, 0.5, _generator(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_no_triplet_when_no_query_has_both():
    rows, positives, negatives = triplets(torch.full((5, 4), 0.7), 0.9, 0.5, _generator())
    assert rows.numel() == positives.numel() == negatives.numel() == 0
    rows, _, _ = triplets(torch.zeros((0, 4)), 0.9, 0.5, _generator())
    assert rows.numel() == 0
