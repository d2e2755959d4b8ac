"""The data contract (crossmodalmas.volume): KJI arrays, IJK -> RAS geometry, LPS files, I/O errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import no_partial_files
from crossmodalmas.errors import InputError
from crossmodalmas.phantoms import make_grid
from crossmodalmas.volume import (Grid, LabelMap, Volume, from_sitk, read_image, read_labels, read_volume, to_sitk,
                                  write_labels, write_volume)

LPS_FLIP = np.array([-1.0, -1.0, 1.0])


def _oblique_volume(shape=(6, 7, 9), seed=0) -> Volume:
    """A rotated (non axis-aligned), anisotropic volume with distinct sizes along k, j, i."""
    grid = make_grid(shape, (0.8, 1.3, 2.9), rotation_deg=(17.0, -23.0, 38.0), centre_ras=(12.5, -40.0, 7.25))
    array = np.random.default_rng(seed).normal(100.0, 30.0, shape).astype(np.float32)
    return Volume(array, grid.ijk_to_ras)


def _voxel_centres_by_sitk(image: sitk.Image, ijk) -> np.ndarray:
    """RAS mm of voxel indices (i, j, k) through SimpleITK's own LPS geometry, flipped to RAS."""
    return np.array([np.array(image.TransformIndexToPhysicalPoint(tuple(int(v) for v in index))) * LPS_FLIP
                     for index in ijk])


SAMPLE_IJK = np.array([[0, 0, 0], [8, 0, 0], [0, 6, 0], [0, 0, 5], [8, 6, 5], [3, 2, 4]])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_every_voxel_position(tmp_path, suffix):
    volume = _oblique_volume()
    path = tmp_path / f"oblique{suffix}"
    write_volume(volume, path)
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)
    # every voxel centre, through our matrix and through SimpleITK's own geometry
    k, j, i = np.meshgrid(*(np.arange(s) for s in volume.array.shape), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    np.testing.assert_allclose(back.grid.ijk_to_points(ijk), volume.grid.ijk_to_points(ijk), atol=1e-3)
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(_voxel_centres_by_sitk(image, SAMPLE_IJK), volume.grid.ijk_to_points(SAMPLE_IJK),
                               atol=1e-3)


def test_lps_geometry_written_to_the_file(tmp_path):
    """A RAS-axes grid (i to the right) is stored in LPS: direction column 0 is (-1, 0, 0)."""
    grid = make_grid((5, 6, 7), (1.5, 2.0, 3.0), centre_ras=(10.0, 20.0, 30.0), axes="RAS")
    write_volume(Volume(np.arange(210, dtype=np.float32).reshape(5, 6, 7), grid.ijk_to_ras), tmp_path / "v.nii.gz")
    image = sitk.ReadImage(str(tmp_path / "v.nii.gz"))
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), (1.5, 2.0, 3.0), atol=1e-6)
    origin_ras = grid.ijk_to_ras[:3, 3]
    np.testing.assert_allclose(image.GetOrigin(), origin_ras * LPS_FLIP, atol=1e-4)


def test_sitk_geometry_maps_to_our_matrix():
    """An image built in SimpleITK terms: our IJK -> RAS equals ITK's index -> LPS, flipped."""
    image = sitk.Image(9, 7, 6, sitk.sitkFloat32)
    image.SetSpacing((0.7, 1.1, 2.5))
    image.SetOrigin((-30.0, 12.0, 5.5))
    theta = np.deg2rad(25.0)
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    image.SetDirection(tuple(rotation.ravel()))
    array, ijk_to_ras = from_sitk(image)
    assert array.shape == (6, 7, 9)
    np.testing.assert_allclose(Grid(array.shape, ijk_to_ras).ijk_to_points(SAMPLE_IJK),
                               _voxel_centres_by_sitk(image, SAMPLE_IJK), atol=1e-9)
    again = to_sitk(array, ijk_to_ras)
    np.testing.assert_allclose(again.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(again.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(again.GetDirection(), image.GetDirection(), atol=1e-9)


def test_kji_order_matches_sitk_get_array(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (K, J, I)
    volume = Volume(array, make_grid(array.shape, (1.0, 2.0, 3.0)).ijk_to_ras)
    write_volume(volume, tmp_path / "v.nrrd")
    image = sitk.ReadImage(str(tmp_path / "v.nrrd"))
    assert image.GetSize() == (6, 5, 4)  # (i, j, k)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    assert image.GetPixel(5, 1, 2) == array[2, 1, 5]  # GetPixel takes (i, j, k)
    np.testing.assert_array_equal(read_volume(tmp_path / "v.nrrd").array, sitk.GetArrayFromImage(image))
    assert volume.grid.spacing_kji.tolist() == pytest.approx([3.0, 2.0, 1.0])


def test_grid_maps_points_both_ways():
    grid = _oblique_volume().grid
    ijk = np.array([[0.0, 0.0, 0.0], [1.5, 2.25, 3.0], [8.0, 6.0, 5.0]])
    np.testing.assert_allclose(grid.points_to_ijk(grid.ijk_to_points(ijk)), ijk, atol=1e-9)
    np.testing.assert_allclose(grid.spacing, (0.8, 1.3, 2.9))
    assert grid.same_as(Grid(grid.shape, grid.ijk_to_ras + 1e-5))
    assert not grid.same_as(Grid(grid.shape, grid.ijk_to_ras + np.pad(np.full((3, 1), 0.01), ((0, 1), (3, 0)))))


# --- read errors -------------------------------------------------------------------------------

def test_read_missing_file(tmp_path):
    with pytest.raises(InputError, match=rf"^{re.escape(str(tmp_path / 'nosuch.nii.gz'))}: file does not exist$"):
        read_volume(tmp_path / "nosuch.nii.gz")


def test_read_a_text_file(tmp_path):
    path = tmp_path / "text.nii.gz"
    path.write_text("not an image")
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: cannot be read as an image \(.+\)$") as info:
        read_volume(path)
    assert "\n" not in str(info.value)


def test_read_a_2d_image(tmp_path):
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 6), np.float32)), str(path))
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: image is 2-D with size \(6, 5\); a 3-D volume"):
        read_volume(path)


def test_read_a_4d_image(tmp_path):
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))] * 3), str(path))
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: image is 4-D with size \(6, 5, 4, 3\)"):
        read_labels(path)


def test_read_a_4d_image_of_one_frame_as_3d(tmp_path):
    path = tmp_path / "one_frame.nii.gz"
    array = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(array)]), str(path))
    volume = read_volume(path)
    assert volume.array.shape == (4, 5, 6)
    np.testing.assert_array_equal(volume.array, array)


def test_read_an_rgb_image(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: image has 3 components per voxel"):
        read_image(path)


def test_read_a_folder_without_dicom(tmp_path):
    with pytest.raises(InputError, match=rf"^{re.escape(str(tmp_path))}: folder holds no DICOM series"):
        read_volume(tmp_path)


@pytest.mark.parametrize("name, dtype, value, message", [
    ("soft.nrrd", np.float32, 0.25, r"label map holds non-integer values"),
    ("nan.nrrd", np.float32, np.nan, r"label map holds non-integer values"),
    ("huge.nrrd", np.int64, 2 ** 40, rf"label values span \[0, {2 ** 40}\], outside the int32"),
])
def test_read_labels_refuses_bad_values(tmp_path, name, dtype, value, message):
    path = tmp_path / name
    array = np.zeros((4, 5, 6), dtype)
    array[1, 2, 3] = value
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: " + message):
        read_labels(path)


def test_read_labels_accepts_float_integers(tmp_path):
    path = tmp_path / "float_labels.nii.gz"
    array = np.zeros((4, 5, 6), np.float32)
    array[1:3, 1:3, 1:3] = 500.0
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    labels = read_labels(path)
    assert labels.array.dtype == np.int32
    assert labels.labels.tolist() == [500]


# --- writing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("values, pixel", [
    ((0, 1, 255), sitk.sitkUInt8),
    ((0, 205, 850), sitk.sitkInt16),
    ((0, -3, 7), sitk.sitkInt16),
    ((0, 70000), sitk.sitkInt32),
])
def test_write_labels_picks_the_smallest_integer_type(tmp_path, values, pixel):
    array = np.zeros((4, 5, 6), np.int32)
    array.flat[:len(values)] = values
    path = tmp_path / "labels.nii.gz"
    write_labels(LabelMap(array, np.eye(4)), path)
    assert sitk.ReadImage(str(path)).GetPixelID() == pixel
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), array)


def test_write_volume_is_float32(tmp_path):
    write_volume(Volume(np.arange(120, dtype=np.float64).reshape(4, 5, 6), np.eye(4)), tmp_path / "v.nrrd")
    assert sitk.ReadImage(str(tmp_path / "v.nrrd")).GetPixelID() == sitk.sitkFloat32


def test_writes_leave_no_partial_file(tmp_path):
    volume = _oblique_volume()
    write_volume(volume, tmp_path / "image.nii.gz")
    write_labels(LabelMap((volume.array > 100).astype(np.int32), volume.ijk_to_ras), tmp_path / "labels.nrrd")
    write_volume(volume, tmp_path / "image.nii.gz")  # overwriting in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.nii.gz", "labels.nrrd"]
    assert no_partial_files(tmp_path)


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "image.unknownformat"
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: cannot write"):
        write_volume(_oblique_volume(), path)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "image.nii.gz"
    write_volume(_oblique_volume(seed=1), path)
    before = path.read_bytes()

    def broken(image, name, useCompression=False):
        with open(name, "wb") as stream:
            stream.write(b"half an image")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(InputError, match=r"cannot write \(disk full\)"):
        write_volume(_oblique_volume(seed=2), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.nii.gz"]


def test_write_into_a_missing_folder(tmp_path):
    path = tmp_path / "missing" / "image.nii.gz"
    with pytest.raises(InputError, match=rf"output folder {re.escape(str(path.parent))} does not exist"):
        write_volume(_oblique_volume(), path)


def test_label_map_and_volume_types():
    labels = LabelMap(np.array([[[0, 3], [3, 7]]], dtype=np.float64), np.eye(4))
    assert labels.array.dtype == np.int32
    assert labels.labels.tolist() == [3, 7]
    assert Volume(np.zeros((2, 2, 2), np.int16), np.eye(4)).array.dtype == np.float32
