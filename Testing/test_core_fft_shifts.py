"""crossmodalmas.fft_shifts: a trimmed circular correlation holds every translation that is scored."""

import itertools

import numpy as np
import pytest
import torch

from crossmodalmas.fft_shifts import (admissible, correlation_size, fast_size, fullest_slices, index_shifts,
                                      least_shared_slices)


def _overlaps(target: np.ndarray, atlas: np.ndarray) -> dict[tuple[int, ...], int]:
    """Voxels in both masks at every translation d (atlas voxel u on target voxel u + d), by brute force."""
    counts = {}
    ranges = [range(-(a - 1), t) for t, a in zip(target.shape, atlas.shape)]
    for d in itertools.product(*ranges):
        t_slices = tuple(slice(max(0, s), min(t, a + s)) for s, t, a in zip(d, target.shape, atlas.shape))
        a_slices = tuple(slice(max(0, -s), min(a, t - s)) for s, t, a in zip(d, target.shape, atlas.shape))
        counts[d] = int((target[t_slices] & atlas[a_slices]).sum())
    return counts


def _masks(seed: int):
    """A thin target slab and an atlas: random fields of view, or (seed 0) two full boxes whose
    overlap meets the bound of :func:`least_shared_slices` exactly, so a size one too small aliases."""
    if seed == 0:
        return np.ones((4, 6, 6), bool), np.ones((8, 6, 6), bool)
    rng = np.random.default_rng(seed)
    return rng.random((3, 9, 8)) < 0.8, rng.random((7, 6, 5)) < 0.8


def test_fast_size_has_no_prime_factor_above_five():
    assert [fast_size(n) for n in (1, 7, 11, 102, 128)] == [1, 8, 12, 108, 128]


def test_index_shifts_count_up_then_wrap_to_negative_shifts():
    assert [s.tolist() for s in index_shifts((3, 1, 2), (5, 2, 2))] == [[0, 1, 2, -2, -1], [0, -1], [0, 1]]


def test_fullest_slices_sum_the_slice_counts_largest_first():
    inside = np.zeros((2, 3, 4), bool)
    inside[0, :2, :] = True
    inside[1, 0, 0] = True  # slices across k hold 8 and 1; across j 5, 4, 0; across i 3, 2, 2, 2
    assert [sums.tolist() for sums in fullest_slices(inside)] == [[0, 8, 9], [0, 5, 9, 9], [0, 3, 5, 7, 9]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_translation_that_overlaps_enough_shares_the_least_slices(seed):
    target, atlas = _masks(seed)
    orientations = [atlas, np.ascontiguousarray(np.swapaxes(atlas, 0, 2)[:, ::-1])]  # one bound for both
    min_count = 0.5 * min(target.sum(), atlas.sum())
    least = least_shared_slices(target, orientations, min_count)
    for turned in orientations:
        for d, count in _overlaps(target, turned).items():
            if count >= min_count:
                shared = [min(a - 1, t - 1 - s) - max(0, -s) + 1 for s, t, a in zip(d, target.shape, turned.shape)]
                assert all(o >= h for o, h in zip(shared, least)), (d, shared, least)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_trimmed_correlation_gives_the_exact_count_of_every_translation_that_is_scored(seed):
    target, atlas = _masks(seed)
    min_count = 0.5 * min(target.sum(), atlas.sum())
    least = least_shared_slices(target, [atlas], min_count)
    size = correlation_size(target.shape, atlas.shape, least)
    assert np.prod(size) < np.prod([fast_size(t + a - 1) for t, a in zip(target.shape, atlas.shape)])
    spectra = [torch.fft.rfftn(torch.from_numpy(m).float(), s=size) for m in (target, atlas)]
    counts = torch.fft.irfftn(spectra[0] * spectra[1].conj(), s=size).round()
    unaliased = admissible(target.shape, atlas.shape, size, least)
    shifts = index_shifts(target.shape, size)
    truth = _overlaps(target, atlas)
    scored = 0
    for index in zip(*np.nonzero(unaliased.numpy())):
        d = tuple(int(axis[i]) for axis, i in zip(shifts, index))
        assert counts[index] == truth[d], d
        scored += truth[d] >= min_count
    assert scored == sum(count >= min_count for count in truth.values())  # none left out


def test_no_translation_overlaps_enough_when_a_slice_cannot_hold_it():
    target, atlas = np.ones((2, 4, 4), bool), np.ones((2, 4, 4), bool)
    least = least_shared_slices(target, [atlas], 100.0)  # 32 voxels each: no translation reaches 100
    size = correlation_size(target.shape, atlas.shape, least)
    assert size == (2, 4, 4)  # both images still fit
    assert not admissible(target.shape, atlas.shape, size, least).any()
