"""Images sampled on the global search's axis-aligned RAS grids: values, labels and how much of
each grid voxel an image's field of view covers; and the affine-linear transform helpers the
search and the affine step share.

Transforms map grid (target) LPS points to image (atlas) LPS points, as SimpleITK's do.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

from crossmodalmas.volume import LPS_TO_RAS, Grid, ijk_to_ras_from_sitk, to_sitk

Box = tuple[slice, slice, slice]  # (k, j, i) slices of a grid


def ras_grid(lo: np.ndarray, hi: np.ndarray, spacing: float) -> Grid:
    """The axis-aligned RAS grid at ``spacing`` mm with voxel (0, 0, 0) at ``lo``, reaching ``hi``."""
    size = np.maximum(np.ceil((hi - lo) / spacing).astype(int) + 1, 1)
    ijk_to_ras = np.diag([spacing, spacing, spacing, 1.0])
    ijk_to_ras[:3, 3] = lo
    return Grid(tuple(int(s) for s in size[::-1]), ijk_to_ras)


def occupied_box(mask: np.ndarray) -> Optional[Box]:
    """The (k, j, i) slices of the smallest box holding every True voxel of ``mask``; None if none."""
    spans = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if not spans[0].size:
        return None
    return tuple(slice(int(span[0]), int(span[-1]) + 1) for span in spans)


def sub_grid(grid: Grid, box: Box) -> Grid:
    """The voxels of ``grid`` in ``box`` ((k, j, i) slices, as :func:`occupied_box` gives), as a grid."""
    ijk_to_ras = grid.ijk_to_ras.copy()
    ijk_to_ras[:3, 3] = grid.ijk_to_points(np.array([[box[2].start, box[1].start, box[0].start]]))[0]
    return Grid(tuple(b.stop - b.start for b in box), ijk_to_ras)


def ras_to_lps_affine(matrix: np.ndarray, offset: np.ndarray) -> sitk.AffineTransform:
    """``y -> matrix @ y + offset`` in RAS, as a SimpleITK transform in LPS."""
    flip = LPS_TO_RAS[:3, :3]
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((flip @ matrix @ flip).ravel().tolist())
    transform.SetTranslation((flip @ offset).tolist())
    return transform


def on_ras_grid(image: sitk.Image, grid: Grid, transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """Values and field-of-view mask of ``image`` on ``grid`` (``transform``: grid LPS -> image LPS)."""
    reference = to_sitk(np.zeros(grid.shape, np.uint8), grid.ijk_to_ras)
    values = sitk.Resample(image, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ones = sitk.Image(image.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(image)
    inside = sitk.Resample(ones, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(values), sitk.GetArrayFromImage(inside) > 0.5


def values_on_ras_grid(image: sitk.Image, grid: Grid, transform: sitk.Transform) -> np.ndarray:
    """Values of ``image`` on ``grid``, linearly interpolated, and extended outside its field of
    view by the nearest inside value (``transform``: grid LPS -> image LPS): a voxel centred
    just outside a face still lies partly inside (:func:`field_of_view_weights`)."""
    reference = to_sitk(np.zeros(grid.shape, np.uint8), grid.ijk_to_ras)
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32,
                                                True))


def field_of_view_weights(image: sitk.Image, grid: Grid, transform: sitk.Transform, voxel_mm: float,
                          box: Optional[Box] = None) -> np.ndarray:
    """How much of each voxel of ``grid`` (a cube ``voxel_mm`` wide) lies inside ``image``'s
    field of view, placed by ``transform`` (grid LPS -> image LPS, affine-linear): per axis of
    the image, 0.5 for a voxel centred on a face, rising or falling linearly over one voxel.

    Why not a 0/1 mask: as a slab moves by a millimetre, one whole layer of the grid drops in
    or out of a hard mask. Measured on a robustness-benchmark slab 11 layers thick on the
    3.5 mm grid, the overlap jumped between 11 and 12 layers (9 %) every few millimetres, and
    ``N * MI`` with it: it peaked wherever one more layer fitted in, up to 18 mm from the
    truth. These shares sum to the slab's thickness in voxels at every offset (exactly for a
    face along a grid axis, nearly so when turned), so the score varies as smoothly as the
    anatomy does.

    Args:
        image: the image whose field of view counts.
        grid: the grid weighted.
        transform: grid LPS -> image LPS, affine-linear.
        voxel_mm: the grid voxel's width.
        box: only these voxels of ``grid`` ((k, j, i) slices, e.g. :func:`reach_box`), each
            weighted to the bit as in the whole grid.

    Returns:
        Float weights in [0, 1], of ``grid.shape`` (of the box's shape if ``box``).
    """
    # One 4x4 from grid (i, j, k) to the image's continuous (i, j, k), applied row by row to
    # broadcast index axes: the search scores ~1000 placements per atlas, and building every
    # voxel's point and solving for its index each time took a third of the affine step.
    to_index = _grid_to_image_index(image, grid, transform)
    size, spacing = np.asarray(image.GetSize(), float), np.asarray(image.GetSpacing())
    k, j, i = np.ogrid[box or tuple(slice(0, n) for n in grid.shape)]
    weights = np.ones(np.broadcast_shapes(k.shape, j.shape, i.shape))
    for axis in range(3):
        a, b, c, d = to_index[axis]
        index = (a * i + d) + (b * j) + (c * k)
        depth_mm = np.minimum(index + 0.5, size[axis] - 0.5 - index) * spacing[axis]  # < 0 outside
        weights *= np.clip(0.5 + depth_mm / voxel_mm, 0.0, 1.0)
    return weights


_ROUNDING = 1e-6  # grid voxels: :func:`reach_box` keeps those this near its faces


def reach_box(image: sitk.Image, grid: Grid, transform: sitk.Transform, voxel_mm: float) -> Optional[Box]:
    """The (k, j, i) slices of a box of ``grid`` that holds every voxel :func:`field_of_view_weights`
    weights above 0 (and those of weight 0 on its faces); None if it holds none.

    The search scores a thousand placements per atlas, and weighing the whole target grid for
    each, most of it far from a slab atlas, took a quarter of a score."""
    to_index = _grid_to_image_index(image, grid, transform)
    size, spacing = np.asarray(image.GetSize(), float), np.asarray(image.GetSpacing())
    reach = 0.5 + 0.5 * voxel_mm / spacing  # image indices beyond a face at which the weight reaches 0
    lo, hi = -reach, size - 1 + reach
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = (corners @ np.linalg.inv(to_index).T)[:, :3]
    # the voxels strictly between, and those within rounding of the two faces
    first = np.maximum(np.ceil(ijk.min(0) - _ROUNDING).astype(int), 0)
    last = np.minimum(np.floor(ijk.max(0) + _ROUNDING).astype(int), np.array(grid.shape[::-1]) - 1)
    if np.any(first > last):
        return None
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(first[::-1], last[::-1]))


def _grid_to_image_index(image: sitk.Image, grid: Grid, transform: sitk.Transform) -> np.ndarray:
    """The 4x4 from ``grid``'s voxel indices to ``image``'s continuous ones, through ``transform``
    (grid LPS -> image LPS, affine-linear)."""
    placed = affine_of(transform)  # centred on the origin: y = matrix @ x + translation
    lps_to_image_lps = np.eye(4)
    lps_to_image_lps[:3, :3] = np.asarray(placed.GetMatrix()).reshape(3, 3)
    lps_to_image_lps[:3, 3] = placed.GetTranslation()
    index_to_lps = LPS_TO_RAS @ ijk_to_ras_from_sitk(image)  # the flip is its own inverse
    return np.linalg.solve(index_to_lps, lps_to_image_lps @ LPS_TO_RAS @ grid.ijk_to_ras)


def labels_on_ras_grid(labels: sitk.Image, grid: Grid, transform: sitk.Transform) -> np.ndarray:
    """``labels`` on ``grid`` by nearest neighbour, extended outside their field of view as
    :func:`values_on_ras_grid` extends values (``transform``: grid LPS -> label LPS)."""
    reference = to_sitk(np.zeros(grid.shape, np.uint8), grid.ijk_to_ras)
    return sitk.GetArrayFromImage(sitk.Resample(labels, reference, transform, sitk.sitkNearestNeighbor, 0,
                                                labels.GetPixelID(), True))


def affine_of(transform: sitk.Transform) -> sitk.AffineTransform:
    """Any affine-linear transform (affine, rigid, their inverses and composites) as one
    :class:`SimpleITK.AffineTransform`, read off the images of the origin and the unit points."""
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.array(transform.TransformPoint(tuple(axis))) - origin for axis in np.eye(3)]
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(np.stack(columns, axis=1).ravel().tolist())
    affine.SetTranslation(origin.tolist())
    return affine


def translated(transform: sitk.Transform, atlas_shift_lps: np.ndarray) -> sitk.AffineTransform:
    """``transform`` (target LPS -> atlas LPS) with the atlas it places moved by ``atlas_shift_lps``
    in target space: each target point is looked up that much the other way."""
    shift = sitk.TranslationTransform(3, tuple(-np.asarray(atlas_shift_lps, float)))
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(transform)
    composite.AddTransform(shift)  # applied first
    return affine_of(composite)
