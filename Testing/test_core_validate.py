"""Input checks (crossmodalmas.validate): every message pinned, inputs never modified."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodalmas.errors import InputError
from crossmodalmas.phantoms import make_grid
from crossmodalmas.validate import check_grid, check_labels, check_volume
from crossmodalmas.volume import Grid, LabelMap, Volume

SHAPE = (8, 9, 10)


def _grid(shape=SHAPE, spacing=(1.0, 1.5, 2.0), rotation=(10.0, -20.0, 30.0)) -> Grid:
    return make_grid(shape, spacing, rotation, centre_ras=(5.0, -3.0, 12.0))


def _volume(grid: Grid = None, seed=0) -> Volume:
    grid = grid or _grid()
    return Volume(np.random.default_rng(seed).normal(size=grid.shape).astype(np.float32), grid.ijk_to_ras)


def _labels(grid: Grid = None) -> LabelMap:
    grid = grid or _grid()
    array = np.zeros(grid.shape, np.int32)
    array[2:5, 3:6, 4:8] = 500
    array[5:7, 3:6, 4:8] = 205
    return LabelMap(array, grid.ijk_to_ras)


def _with_columns(grid: Grid, columns) -> Grid:
    matrix = grid.ijk_to_ras.copy()
    matrix[:3, :3] = columns
    return Grid(grid.shape, matrix)


# --- check_grid --------------------------------------------------------------------------------

def test_good_grids_pass():
    check_grid(_grid(), "target")
    check_grid(make_grid((4, 4, 4), (0.3, 0.3, 5.0), axes="RAS"), "target")  # thin slices, RAS axes
    mirrored = _grid().ijk_to_ras.copy()
    mirrored[:3, 0] *= -1  # a flipped axis is a direction, not a negative spacing
    check_grid(Grid(SHAPE, mirrored), "target")


@pytest.mark.parametrize("shape", [(3, 9, 10), (8, 2, 10), (8, 9, 1)])
def test_thin_axis(shape):
    with pytest.raises(InputError, match=rf"^atlas a image: image shape \({shape[0]}, {shape[1]}, {shape[2]}\) "
                                         r"\(k, j, i\) is thinner than 4 voxels along an axis; a 3-D volume is needed$"):
        check_grid(_grid(shape), "atlas a image")


def test_two_dimensional_grid():
    with pytest.raises(InputError, match=r"^target: image is 2-D with shape \(8, 9\); a 3-D volume is needed$"):
        check_grid(Grid((8, 9), np.eye(4)), "target")


@pytest.mark.parametrize("spacing, shown", [
    ((1.0, 0.0, 2.0), r"\[1\.0, 0\.0, 2\.0\]"),
    ((1.0, 1e-9, 2.0), r"\[1\.0, 0\.0, 2\.0\]"),
    ((1.0, 1.5, 1e6), r"\[1\.0, 1\.5, 1000000\.0\]"),
])
def test_bad_spacing(spacing, shown):
    grid = _with_columns(_grid(), np.diag(spacing))
    with pytest.raises(InputError, match=rf"^target: voxel spacing {shown} mm is not within \(0, 1000\] mm$"):
        check_grid(grid, "target")


def test_negative_spacing_reads_as_a_flip():
    """A negative diagonal entry is a mirrored axis, not a bad spacing: the grid is accepted."""
    grid = _with_columns(_grid(), np.diag([1.0, -1.5, 2.0]))
    np.testing.assert_allclose(grid.spacing, (1.0, 1.5, 2.0))
    check_grid(grid, "target")


def test_non_finite_geometry():
    matrix = _grid().ijk_to_ras.copy()
    matrix[1, 3] = np.nan
    with pytest.raises(InputError, match=r"^target: geometry \(IJK to RAS matrix\) is not a finite 4x4 matrix$"):
        check_grid(Grid(SHAPE, matrix), "target")


def test_non_orthogonal_direction():
    sheared = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    with pytest.raises(InputError, match=r"^target: direction cosines are not orthogonal \(sheared or skewed geometry\)$"):
        check_grid(_with_columns(_grid(), sheared), "target")


def test_nearly_orthogonal_direction_passes():
    """File headers round direction cosines: a 1e-5 skew is not a shear."""
    columns = np.diag([1.0, 1.0, 2.0])
    columns[0, 1] = 1e-5
    check_grid(_with_columns(_grid(), columns), "target")


# --- check_volume ------------------------------------------------------------------------------

def test_good_volume_passes_and_is_not_modified():
    volume = _volume()
    before = volume.array.copy(), volume.ijk_to_ras.copy()
    check_volume(volume, "target")
    np.testing.assert_array_equal(volume.array, before[0])
    np.testing.assert_array_equal(volume.ijk_to_ras, before[1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(bad):
    volume = _volume()
    volume.array[1, 2, 3] = bad
    volume.array[4, 5, 6] = bad
    volume.array[7, 8, 9] = bad
    with pytest.raises(InputError, match=r"^target: image holds 3 NaN or infinite voxels$"):
        check_volume(volume, "target")


def test_constant_image():
    volume = Volume(np.full(SHAPE, -1000.0, np.float32), _grid().ijk_to_ras)
    with pytest.raises(InputError, match=r"^atlas b image: image is constant \(-1000 everywhere\)$"):
        check_volume(volume, "atlas b image")


def test_volume_of_wrong_dimension():
    volume = Volume(np.ones((8, 9), np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"^target: image is 2-D with shape \(8, 9\); a 3-D volume is needed$"):
        check_volume(volume, "target")


def test_volume_on_a_thin_grid():
    with pytest.raises(InputError, match=r"^target: image shape \(8, 9, 2\) \(k, j, i\) is thinner than 4 voxels"):
        check_volume(_volume(_grid((8, 9, 2))), "target")


# --- check_labels ------------------------------------------------------------------------------

def test_labels_on_the_image_grid_are_returned_as_they_are():
    image, labels = _volume(), _labels()
    checked = check_labels(labels, image, "atlas a labels")
    np.testing.assert_array_equal(checked.array, labels.array)
    np.testing.assert_array_equal(checked.ijk_to_ras, image.ijk_to_ras)


def test_empty_labels():
    labels = LabelMap(np.zeros(SHAPE, np.int32), _grid().ijk_to_ras)
    with pytest.raises(InputError, match=r"^atlas a labels: label map is empty \(no voxel has a non-zero label\)$"):
        check_labels(labels, _volume(), "atlas a labels")


def test_negative_labels():
    labels = _labels()
    labels.array[0, 0, 0] = -4
    with pytest.raises(InputError, match=r"^atlas a labels: label map holds negative values \(min -4\); labels must be >= 0$"):
        check_labels(labels, _volume(), "atlas a labels")


def test_labels_of_wrong_dimension():
    labels = LabelMap(np.ones((8, 9), np.int32), np.eye(4))
    with pytest.raises(InputError, match=r"^atlas a labels: label map is 2-D; a 3-D label map is needed$"):
        check_labels(labels, _volume(), "atlas a labels")


def test_labels_of_another_shape():
    image = _volume()
    labels = _labels(_grid((8, 9, 11)))
    with pytest.raises(InputError, match=r"^atlas a labels: label map grid \(shape \(8, 9, 11\), spacing \[1\.0, 1\.5, 2\.0\] mm\) "
                                         r"differs from its image's \(shape \(8, 9, 10\), spacing \[1\.0, 1\.5, 2\.0\] mm\); "
                                         r"resample it onto the image first$"):
        check_labels(labels, image, "atlas a labels")


def test_labels_of_another_spacing():
    with pytest.raises(InputError, match=r"^atlas a labels: label map grid \(shape \(8, 9, 10\), spacing \[1\.5, 1\.5, 2\.0\] mm\) "
                                         r"differs from its image's"):
        check_labels(_labels(_grid(spacing=(1.5, 1.5, 2.0))), _volume(), "atlas a labels")


def test_labels_shifted_by_a_voxel_are_refused():
    grid = _grid()
    matrix = grid.ijk_to_ras.copy()
    matrix[:3, 3] += matrix[:3, 0]  # one voxel along i
    with pytest.raises(InputError, match=r"differs from its image's"):
        check_labels(_labels(Grid(SHAPE, matrix)), _volume(grid), "atlas a labels")


@pytest.mark.parametrize("spacing, offset_voxels", [
    ((1.0, 1.5, 2.0), (0.1, -0.1, 0.1)),
    ((1.0, 1.5, 2.0), (0.3, -0.3, 0.3)),
    ((0.7, 0.7, 5.0), (0.0, 0.0, 0.1)),  # thick slices: 0.5 mm is a tenth of a slice
])
def test_labels_off_by_rounding_come_back_on_the_image_grid(spacing, offset_voxels):
    """A label header within half a voxel of its image's (along every axis) is put on the image's grid."""
    grid = _grid(spacing=spacing)
    matrix = grid.ijk_to_ras.copy()
    matrix[:3, 3] += matrix[:3, :3] @ np.asarray(offset_voxels)  # origin off by a fraction of a voxel
    matrix[:3, :3] *= 1.0 + 1e-5  # and a spacing rounded in the header
    labels = _labels(Grid(SHAPE, matrix))
    array_before, matrix_before = labels.array.copy(), labels.ijk_to_ras.copy()
    image = _volume(grid)

    checked = check_labels(labels, image, "atlas a labels")

    assert checked is not labels
    np.testing.assert_array_equal(checked.ijk_to_ras, image.ijk_to_ras)
    np.testing.assert_array_equal(checked.array, labels.array)
    assert checked.grid.same_as(image.grid, tol_mm=1e-9)
    # the input is untouched, and the copy does not share its memory
    np.testing.assert_array_equal(labels.array, array_before)
    np.testing.assert_array_equal(labels.ijk_to_ras, matrix_before)
    assert not np.shares_memory(checked.array, labels.array)
    assert not np.shares_memory(checked.ijk_to_ras, image.ijk_to_ras)
