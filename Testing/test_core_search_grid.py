"""crossmodalmas.search_grid: images on the global search's grids, field-of-view shares, and
the affine-linear transform helpers."""

import numpy as np
import pytest
import SimpleITK as sitk

from crossmodalmas.search_grid import (affine_of, field_of_view_weights, occupied_box, reach_box, sub_grid,
                                       translated)
from crossmodalmas.volume import Grid, to_sitk


def _slab_image(slices: int = 7) -> sitk.Image:
    """A 2.5 mm slab, ``slices`` thick along S, spanning S = 0 .. slices x 2.5 mm."""
    ijk_to_ras = np.diag([2.5, 2.5, 2.5, 1.0])
    ijk_to_ras[:3, 3] = (-20.0, -20.0, 1.25)
    return to_sitk(np.ones((slices, 16, 16), np.float32), ijk_to_ras)


def test_field_of_view_weights_sum_alike_wherever_a_slab_lies_between_grid_layers():
    slab = _slab_image()
    grid = Grid((12, 12, 12), np.diag([7.0, 7.0, 7.0, 1.0]) @ np.array(
        [[1, 0, 0, -5.0], [0, 1, 0, -5.0], [0, 0, 1, -3.0], [0, 0, 0, 1]]))
    totals, layers = [], set()
    for dz in np.arange(0.0, 7.0, 0.5):  # the slab moves across one grid spacing along S
        weights = field_of_view_weights(slab, grid, sitk.TranslationTransform(3, (0.0, 0.0, -dz)), 7.0)
        totals.append(weights.sum())
        layers.add(int((weights > 0).any(axis=(1, 2)).sum()))
    assert len(layers) == 2  # how many layers of the grid the slab touches depends on the offset ...
    assert np.ptp(totals) == pytest.approx(0.0, abs=1e-6 * totals[0])  # ... the weights one total
    # the slab's volume in grid voxels: 17.5 mm along S, 40 mm across
    assert totals[0] == pytest.approx(17.5 / 7.0 * (40.0 / 7.0) ** 2, rel=1e-6)


def test_field_of_view_weights_are_the_share_of_each_voxel_inside():
    slab = _slab_image(slices=20)
    grid = Grid((10, 1, 1), np.diag([1.0, 1.0, 7.0, 1.0]))  # one column along S, at S = 0, 7, .., 63 mm
    weights = field_of_view_weights(slab, grid, sitk.Transform(), 7.0).ravel()
    assert weights[0] == pytest.approx(0.5)  # S = 0: centred on the face
    assert weights[1] == pytest.approx(1.0) and weights[3] == pytest.approx(1.0)  # 7 and 21 mm: wholly inside
    assert weights[7] == pytest.approx(0.5 + 1.0 / 7.0)  # 49 mm: its centre 1 mm inside the far face
    assert weights[8] == 0.0 and weights[9] == 0.0  # 56 and 63 mm: outside the 50 mm slab


def _turned_grid_affine(angles, spacing, origin) -> np.ndarray:
    """An ijk -> RAS 4x4 turned by Euler ``angles`` (radians), with ``spacing`` and ``origin``."""
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.reshape(sitk.Euler3DTransform((0, 0, 0), *angles).GetMatrix(), (3, 3)) * np.asarray(spacing)
    ijk_to_ras[:3, 3] = origin
    return ijk_to_ras


def test_field_of_view_weights_follow_each_voxel_into_a_turned_image_through_the_transform():
    """Against each voxel's centre taken through ITK one at a time: an oblique image, a
    non-axis-aligned grid and a sheared transform (each voxel 0.5 on a face, 1 deep inside)."""
    image = sitk.Image((9, 7, 5), sitk.sitkFloat32)
    image.SetSpacing((2.0, 3.0, 4.0))
    image.SetOrigin((-10.0, 5.0, -8.0))
    image.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.3, -0.4, 0.5).GetMatrix())
    grid = Grid((8, 9, 10), _turned_grid_affine((0.1, 0.2, -0.3), (3.0, 2.5, 3.5), (-20.0, -25.0, -20.0)))
    matrix = (1.1, 0.1, 0.0, -0.05, 0.9, 0.2, 0.0, 0.1, 1.05)
    transform = sitk.AffineTransform(matrix, (3.0, -2.0, 1.0), (1.0, 2.0, 3.0))
    weights = field_of_view_weights(image, grid, transform, 3.0)
    size, spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
    for k, j, i in np.ndindex(grid.shape):
        r, a, s = grid.ijk_to_points(np.array([[i, j, k]]))[0]
        index = np.array(image.TransformPhysicalPointToContinuousIndex(transform.TransformPoint((-r, -a, s))))
        depth = np.minimum(index + 0.5, size - 0.5 - index) * spacing
        assert weights[k, j, i] == pytest.approx(np.prod(np.clip(0.5 + depth / 3.0, 0.0, 1.0)), abs=1e-9)
    assert 0.0 < weights.mean() < 1.0  # the image covers part of the grid


def _turned_image_on_a_grid(shift) -> tuple[sitk.Image, Grid, sitk.Transform]:
    """An oblique image, a turned grid, and a sheared transform shifted by ``shift`` mm."""
    image = sitk.Image((9, 7, 5), sitk.sitkFloat32)
    image.SetSpacing((2.0, 3.0, 4.0))
    image.SetOrigin((-10.0, 5.0, -8.0))
    image.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.3, -0.4, 0.5).GetMatrix())
    grid = Grid((20, 22, 24), _turned_grid_affine((0.1, 0.2, -0.3), (3.0, 2.5, 3.5), (-40.0, -45.0, -40.0)))
    return image, grid, sitk.AffineTransform((1.1, 0.1, 0.0, -0.05, 0.9, 0.2, 0.0, 0.1, 1.05), shift, (1.0, 2.0, 3.0))


# inside the grid; and three across its edges
@pytest.mark.parametrize("shift", [(0.0, 0.0, 0.0), (12.0, -30.0, 25.0), (40.0, 0.0, 0.0), (0.0, 0.0, 40.0)])
def test_the_reach_box_holds_every_weighted_voxel_and_its_weights_are_the_whole_grids_to_the_bit(shift):
    image, grid, transform = _turned_image_on_a_grid(shift)
    whole = field_of_view_weights(image, grid, transform, 3.0)
    box = reach_box(image, grid, transform, 3.0)
    outside = whole.copy()
    outside[box] = 0.0
    assert whole.any() and not outside.any()  # every weighted voxel lies in the box ...
    assert np.prod([b.stop - b.start for b in box]) < 0.5 * whole.size  # ... which is a part of the grid
    assert np.array_equal(field_of_view_weights(image, grid, transform, 3.0, box), whole[box])


@pytest.mark.parametrize("offset_mm", np.arange(0.0, 3.0, 0.25))  # across a grid voxel
def test_the_reach_box_of_an_axis_aligned_image_is_the_box_of_its_weighted_voxels_to_a_voxel(offset_mm):
    image = sitk.Image((10, 6, 4), sitk.sitkFloat32)  # 2 mm voxels: 20 x 12 x 8 mm
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-30.0 - offset_mm, -20.0, 10.0 + offset_mm))
    grid = Grid((20, 20, 20), np.diag([3.0, 3.0, 3.0, 1.0]) @ np.array(
        [[1, 0, 0, -10.0], [0, 1, 0, -10.0], [0, 0, 1, 0.0], [0, 0, 0, 1]]))
    weights = field_of_view_weights(image, grid, sitk.Transform(), 3.0)
    reach, weighted = reach_box(image, grid, sitk.Transform(), 3.0), occupied_box(weights > 0)
    for outer, inner in zip(reach, weighted):  # wider by a voxel at most (one of weight 0 on the edge)
        assert outer.start <= inner.start <= outer.start + 1 and outer.stop - 1 <= inner.stop <= outer.stop


def test_an_image_off_the_grid_has_no_reach_box():
    image, grid, transform = _turned_image_on_a_grid((-60.0, 5.0, -45.0))
    assert not field_of_view_weights(image, grid, transform, 3.0).any()
    assert reach_box(image, grid, transform, 3.0) is None


def test_occupied_box_is_the_tightest_box_and_its_sub_grid_keeps_the_voxel_positions():
    mask = np.zeros((6, 7, 8), bool)
    mask[1, 2, 3] = mask[4, 5, 3] = mask[2, 2, 6] = True
    box = occupied_box(mask)
    assert box == (slice(1, 5), slice(2, 6), slice(3, 7))
    assert occupied_box(np.zeros((3, 3, 3), bool)) is None
    grid = Grid(mask.shape, _turned_grid_affine((0.2, 0.0, 0.4), (2.0, 3.0, 4.0), (5.0, -6.0, 7.0)))
    sub = sub_grid(grid, box)
    assert sub.shape == (4, 4, 4)
    inside = np.array([[0, 0, 0], [3, 2, 1]])  # (i, j, k) of the sub-grid ...
    assert np.allclose(sub.ijk_to_points(inside), grid.ijk_to_points(inside + [3, 2, 1]))  # ... of the grid


def _composed(transform):
    """``transform`` after a rotation of 20 degrees about L and a shift (target LPS side)."""
    error = sitk.Euler3DTransform()
    error.SetRotation(np.radians(20.0), 0.0, 0.0)
    error.SetTranslation((1.0, 2.0, 3.0))
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(transform)
    composite.AddTransform(error)
    return composite


def test_affine_of_maps_points_as_the_transform_it_flattens():
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.1, 0.1, 0.0, -0.05, 0.9, 0.2, 0.0, 0.1, 1.2))
    affine.SetTranslation((3.0, -7.0, 12.0))
    affine.SetCenter((10.0, 20.0, -5.0))
    for transform in (affine, affine.GetInverse(), _composed(affine)):
        flat = affine_of(transform)
        for point in ((0.0, 0.0, 0.0), (100.0, -40.0, 250.0), (-3.5, 8.0, 1.0)):
            assert np.allclose(flat.TransformPoint(point), transform.TransformPoint(point), atol=1e-6)


def test_translated_moves_the_placed_atlas_by_the_shift():
    rotation = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.3, -0.2, 0.1, (5.0, -4.0, 2.0))
    moved = translated(rotation, np.array([0.0, 0.0, 10.0]))
    point = np.array([12.0, -3.0, 40.0])  # an atlas point, placed in the target by the inverse
    before = np.array(rotation.GetInverse().TransformPoint(point.tolist()))
    after = np.array(moved.GetInverse().TransformPoint(point.tolist()))
    assert np.allclose(after - before, (0.0, 0.0, 10.0), atol=1e-9)
