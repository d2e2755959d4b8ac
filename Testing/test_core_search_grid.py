"""crossmodalmas.search_grid: images on the global search's grids, field-of-view shares, and
the affine-linear transform helpers."""

import numpy as np
import pytest
import SimpleITK as sitk

from crossmodalmas.search_grid import affine_of, field_of_view_weights, translated
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
