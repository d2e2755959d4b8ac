"""The translations a circular FFT correlation holds, and how small it may be.

The global search correlates the target's and an atlas's fields of view on one grid by FFT.
An FFT correlation is circular: along an axis of size ``n``, translations ``d`` and ``d - n``
land on one index. Padding each axis to ``target + atlas - 1`` keeps every translation apart,
but only translations where the two fields of view overlap by a set count are ever scored, and
those need fewer indices. Two fields of view that share ``o`` slices across an axis overlap by
at most what the ``o`` fullest slices of either hold, so such a translation shares at least
``h`` slices on every axis; a size of ``target + atlas - h`` leaves all of them free of aliases.
On a thin target slab, whose search grid is finer, the correlations were the affine step's
time; there the sizes shrink by a third to a half (measured on the robustness benchmark's pairs).

Translations are in grid voxels: atlas voxel ``u`` lies on target voxel ``u + d``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def fast_size(n: int) -> int:
    """The smallest size >= ``n`` with no prime factor above 5: FFTs of such sizes run several
    times faster than of sizes with a large prime factor (measured: 102 = 2 x 3 x 17)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fullest_slices(inside: np.ndarray) -> list[np.ndarray]:
    """Per axis, the voxels of the 3D bool mask ``inside`` that its ``o`` fullest slices across
    the axis hold together, for ``o`` = 0, 1, ... (the running sum of the slice counts, largest first)."""
    out = []
    for axis in range(3):
        counts = np.sort(inside.sum(axis=tuple(a for a in range(3) if a != axis)))[::-1]
        out.append(np.concatenate([[0], np.cumsum(counts)]))
    return out


def least_shared_slices(target_inside: np.ndarray, atlas_insides: Sequence[np.ndarray], min_count: float) -> np.ndarray:
    """Per axis, the fewest slices across it that the target's field of view and any of the
    atlas's (one mask per orientation) must share to overlap by ``min_count`` voxels; at least 1.

    ``o`` shared slices overlap by at most what the ``o`` fullest slices of either field of view
    hold, so fewer than the first ``o`` at which both reach ``min_count`` cannot.

    Args:
        target_inside: bool mask of the target's field of view.
        atlas_insides: bool masks of the atlas's field of view, one per orientation tried.
        min_count: the overlap, in voxels, below which no translation is scored.

    Returns:
        ``(3,)`` int.
    """
    least = []
    every_atlas_sums = [fullest_slices(inside) for inside in atlas_insides]  # once per orientation, all axes
    for axis, target_sums in enumerate(fullest_slices(target_inside)):
        atlas_sums = [sums[axis] for sums in every_atlas_sums]
        length = max(len(target_sums), *(len(sums) for sums in atlas_sums))
        padded = [np.pad(sums, (0, length - len(sums)), mode="edge") for sums in [target_sums, *atlas_sums]]
        reachable = np.minimum(padded[0], np.max(padded[1:], axis=0))  # the most o shared slices can overlap
        enough = np.nonzero(reachable >= min_count)[0]
        least.append(max(1, int(enough[0]) if enough.size else length))
    return np.array(least)


def correlation_size(target_shape: Sequence[int], atlas_shape: Sequence[int], least: Sequence[int]) -> tuple[int, ...]:
    """Per axis, a fast FFT size that holds every translation sharing ``least`` slices or more
    free of aliases (and both images, so that neither is cropped)."""
    return tuple(fast_size(int(t + a - min(h, t, a))) for t, a, h in zip(target_shape, atlas_shape, least))


def index_shifts(target_shape: Sequence[int], size: Sequence[int]) -> list[np.ndarray]:
    """Per axis, the translation each index of a correlation of ``size`` stands for: the index
    itself below the target's size, the index minus ``size`` (a negative shift) above it."""
    return [np.where(np.arange(n) < t, np.arange(n), np.arange(n) - n) for t, n in zip(target_shape, size)]


def admissible(target_shape: Sequence[int], atlas_shape: Sequence[int], size: Sequence[int],
               least: Sequence[int]) -> torch.Tensor:
    """Where a correlation of ``size`` holds a translation sharing ``least`` slices or more on
    every axis: the only indices whose counts are free of aliases.

    Returns:
        Bool tensor of ``size``.
    """
    axes = []
    for t, a, shifts, h in zip(target_shape, atlas_shape, index_shifts(target_shape, size), least):
        shared = np.minimum(a - 1, t - 1 - shifts) - np.maximum(0, -shifts) + 1
        axes.append(torch.from_numpy(shared >= h))
    return axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]
