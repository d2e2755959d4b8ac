"""Input checks of the pipeline: each failure is one :class:`InputError` naming the input.

Checks never modify their inputs; where a label map needs fixing (its header differs from
its image's only by rounding) a corrected copy is returned.
"""

from __future__ import annotations

import numpy as np

from crossmodalmas.errors import InputError
from crossmodalmas.volume import Grid, LabelMap, Volume

MIN_VOXELS_PER_AXIS = 4
MAX_SPACING_MM = 1000.0
# The fusion holds one float32 map per class (each label and the background) on the working
# grid, so classes x working voxels is kept within MAX_CLASS_VOXELS (1 GiB per set of maps):
# up to 128 labels the working grid is unaffected; with a thousand (a cortical parcellation)
# the pipeline coarsens it to about 64^3 voxels. Beyond MAX_LABELS it would fall below ~40^3,
# too coarse to register on, and the atlases are refused.
MAX_CLASS_VOXELS = 2 ** 28
MAX_LABELS = 4000
_ORTHOGONALITY_TOLERANCE = 1e-3


def check_grid(grid: Grid, name: str) -> None:
    """A 3-D grid with at least 4 voxels per axis and a sane, orthogonal geometry.

    Raises:
        InputError: naming ``name`` and what is wrong.
    """
    if len(grid.shape) != 3:
        raise InputError(f"{name}: image is {len(grid.shape)}-D with shape {grid.shape}; a 3-D volume is needed")
    if min(grid.shape) < MIN_VOXELS_PER_AXIS:
        raise InputError(
            f"{name}: image shape {grid.shape} (k, j, i) is thinner than {MIN_VOXELS_PER_AXIS} voxels "
            "along an axis; a 3-D volume is needed"
        )
    matrix = grid.ijk_to_ras
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(f"{name}: geometry (IJK to RAS matrix) is not a finite 4x4 matrix")
    spacing = grid.spacing
    if np.any(spacing <= 1e-6) or np.any(spacing > MAX_SPACING_MM):
        raise InputError(f"{name}: voxel spacing {np.round(spacing, 6).tolist()} mm is not within (0, {MAX_SPACING_MM:g}] mm")
    direction = matrix[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHOGONALITY_TOLERANCE):
        raise InputError(f"{name}: direction cosines are not orthogonal (sheared or skewed geometry)")


def check_label_count(count: int, name: str) -> None:
    """At most :data:`MAX_LABELS` distinct foreground labels (see :data:`MAX_CLASS_VOXELS`).

    Raises:
        InputError: naming ``name``, the count and the limit.
    """
    if count > MAX_LABELS:
        raise InputError(f"{name}: {count} distinct labels; at most {MAX_LABELS} are supported (the fusion holds "
                         "one map per label on the working grid); merge labels or segment groups of them")


def check_volume(volume: Volume, name: str) -> None:
    """A finite, non-constant 3-D intensity volume on a sane grid.

    Raises:
        InputError: naming ``name`` and what is wrong.
    """
    if volume.array.ndim != 3:
        raise InputError(f"{name}: image is {volume.array.ndim}-D with shape {volume.array.shape}; a 3-D volume is needed")
    check_grid(volume.grid, name)
    finite = np.isfinite(volume.array)
    if not finite.all():
        raise InputError(f"{name}: image holds {int((~finite).sum())} NaN or infinite voxels")
    if float(volume.array.max()) == float(volume.array.min()):
        raise InputError(f"{name}: image is constant ({float(volume.array.min()):g} everywhere)")


def _half_voxel_match(labels: Grid, image: Grid) -> bool:
    """Same shape and every corner within half a voxel of the image's, along each image axis."""
    if labels.shape != image.shape:
        return False
    offset = image.points_to_ijk(labels.corners_ras()) - image.points_to_ijk(image.corners_ras())
    return bool(np.all(np.abs(offset) < 0.5))


def check_labels(labels: LabelMap, image: Volume, name: str) -> LabelMap:
    """A non-empty label map on its image's grid; returns it, or a copy on the image's grid.

    A label map whose header differs from its image's only by rounding (same shape, every
    corner within half a voxel) is put on the image's exact grid; any other grid is refused.

    Raises:
        InputError: naming ``name`` and what is wrong.
    """
    if labels.array.ndim != 3:
        raise InputError(f"{name}: label map is {labels.array.ndim}-D; a 3-D label map is needed")
    if not np.any(labels.array):
        raise InputError(f"{name}: label map is empty (no voxel has a non-zero label)")
    if labels.array.min() < 0:
        raise InputError(f"{name}: label map holds negative values (min {int(labels.array.min())}); labels must be >= 0")
    if labels.grid.same_as(image.grid):
        return labels
    if _half_voxel_match(labels.grid, image.grid):
        return LabelMap(labels.array.copy(), image.ijk_to_ras.copy())
    raise InputError(
        f"{name}: label map grid (shape {labels.grid.shape}, spacing "
        f"{np.round(labels.grid.spacing, 4).tolist()} mm) differs from its image's (shape "
        f"{image.grid.shape}, spacing {np.round(image.grid.spacing, 4).tolist()} mm); "
        "resample it onto the image first"
    )
