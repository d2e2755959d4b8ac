"""Which target voxels the atlases cover: where no atlas has data, the answer is "unknown".

An atlas that shows a slab of the target (an MR of the upper abdomen for a CT from neck to
pelvis) says nothing about the rest: labelling that rest "background" would be a claim no
atlas made. So each atlas's field of view is mapped into the target through its affine
alignment, and the target voxels that no atlas covers are marked unknown: the label map holds
0 there (no atlas's label is ever put where no atlas looked), the result and report say how
much, and ``--save-warped`` writes the mask.

The mask is computed on a sub-lattice of the target grid (every n-th voxel along each axis,
about ``COVERAGE_SPACING_MM`` apart) and each target voxel takes the value of the lattice point
at or before it: a field of view's edge is located to a few millimetres, at a cost independent
of the target's resolution, and never outside the target.
"""

from __future__ import annotations

import numpy as np

from crossmodalmas.preprocess import resample
from crossmodalmas.volume import Grid, LabelMap

COVERAGE_SPACING_MM = 4.0


class CoverageCounter:
    """Counts, per voxel of a coarse copy of the target grid, the atlases whose field of view
    covers it (after their affine alignment).

    Args:
        target: the target's grid.
    """

    def __init__(self, target: Grid):
        self.target = target
        self.stride_kji = np.maximum(np.floor(COVERAGE_SPACING_MM / target.spacing_kji), 1).astype(int)
        shape = -(-np.array(target.shape) // self.stride_kji)  # ceil: the lattice's last point is inside
        self.coarse = Grid(tuple(int(s) for s in shape), target.ijk_to_ras @ np.diag([*self.stride_kji[::-1], 1.0]))
        self.count = np.zeros(self.coarse.shape, dtype=np.uint16)

    def footprint(self, labels: LabelMap, transform) -> np.ndarray:
        """Which voxels of the coarse grid one atlas covers (its label map's grid is its field
        of view; ``transform``: target LPS -> atlas LPS, as
        :func:`crossmodalmas.affine.affine_align` gives). Made apart from :meth:`add` so that
        atlases aligned side by side each make theirs, and the count is added in one thread."""
        mapped = resample(labels.array, labels.ijk_to_ras, self.coarse, transform, labels=True, default=-1)
        return mapped >= 0

    def add(self, footprint: np.ndarray) -> None:
        """Count one atlas by its :meth:`footprint`."""
        self.count += footprint

    def unknown(self) -> np.ndarray:
        """``(K, J, I)`` bool on the target's grid: covered by no atlas."""
        none = self.count == 0
        if not none.any():
            return np.zeros(self.target.shape, dtype=bool)
        for axis, stride in enumerate(self.stride_kji):
            none = np.repeat(none, stride, axis=axis)
        return np.ascontiguousarray(none[tuple(slice(0, n) for n in self.target.shape)])


def mask_unknown(labels: LabelMap, unknown) -> LabelMap:
    """``labels`` with 0 where ``unknown`` (None: unchanged); the input is not modified."""
    if unknown is None or not np.any(unknown):
        return labels
    masked = labels.array.copy()
    masked[unknown] = 0
    return LabelMap(masked, labels.ijk_to_ras.copy())


def unknown_warning(unknown: np.ndarray) -> str:
    """The run's warning about uncovered target voxels (empty when there are none)."""
    share = float(np.mean(unknown))
    if share == 0.0:
        return ""
    return (f"{share:.1%} of the target lies outside every atlas's field of view: labelled 0 there "
            "(unknown, not background; --save-warped writes the mask as unknown.nii.gz)")
