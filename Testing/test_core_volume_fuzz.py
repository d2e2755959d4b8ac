"""Fuzzing the volume I/O path (hypothesis, derandomized: the same examples on every run).

Random small images (1..7 voxels per axis, so thin and one-voxel grids too), spacings from
1 micrometre to 1e6 mm, directions (rotations, axis permutations with flips as LPS/RAS
orientations give, mirrored rotations, sheared non-orthogonal cosines), origins, pixel types
and formats are written with SimpleITK, then read with :func:`read_volume` /
:func:`read_labels` and checked with :mod:`crossmodalmas.validate`. Only our documented
:class:`InputError` may come out (never a SimpleITK RuntimeError or a numpy error), and an
accepted image keeps every voxel's position: against SimpleITK's own geometry of the file,
through ``points_to_ijk``, and through resampling onto a finer working grid and back (a label
map comes back identical wherever the working grid covers it; a linear intensity ramp is
reproduced at every working voxel inside the image).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, event, given, settings, strategies as st

from crossmodalmas.errors import InputError
from crossmodalmas.preprocess import isotropic_grid, resample
from crossmodalmas.validate import check_grid, check_labels, check_volume
from crossmodalmas.volume import Grid, Volume, read_labels, read_volume

FUZZ = settings(derandomize=True, max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
LPS_FLIP = np.array([-1.0, -1.0, 1.0])
# What our readers and checks may say about such files (anything else is a bug).
DOCUMENTED = re.compile("|".join([
    r"image shape \(\d+, \d+, \d+\) \(k, j, i\) is thinner than 4 voxels",
    r"voxel spacing \[.*\] mm is not within \(0, 1000\] mm",
    r"direction cosines are not orthogonal \(sheared or skewed geometry\)",
    r"image is constant",
    r"label values span \[.*\], outside the int32 range",
    r"label map holds non-integer values",
]))
FORMATS = (".nii.gz", ".nrrd", ".mha")
PIXEL_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64", "bool")


def _rotation(q) -> np.ndarray:
    """The rotation of a (not necessarily unit) quaternion; identity for a near-zero one."""
    q = np.asarray(q, float)
    if np.linalg.norm(q) < 0.1:
        return np.eye(3)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@st.composite
def directions(draw) -> np.ndarray:
    """LPS direction cosines (columns): a rotation, a signed axis permutation (RAS, LPS and
    the other orientations), a mirrored rotation, or a sheared (non-orthogonal) one."""
    kind = draw(st.sampled_from(["rotation", "permutation", "mirrored", "sheared"]))
    rotation = _rotation(draw(st.tuples(*[st.floats(-1, 1)] * 4)))
    if kind == "permutation":
        order = draw(st.permutations([0, 1, 2]))
        signs = draw(st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3))
        return np.eye(3)[:, order] * np.array(signs)
    if kind == "mirrored":
        return rotation @ np.diag([1.0, -1.0, 1.0])
    if kind == "sheared":
        shear = np.eye(3)
        shear[0, 1] = draw(st.floats(0.05, 0.5))
        sheared = rotation @ shear
        return sheared / np.linalg.norm(sheared, axis=0)
    return rotation


@st.composite
def image_files(draw, labels: bool) -> dict:
    """Everything needed to write one image: array (KJI), spacing, origin, direction, format.

    One image in four is thin (an axis of 1..3 voxels) and one spacing scale in four out of
    range (> 1000 mm); a label map holds small integers whatever its pixel type (a float file
    of whole numbers is a valid label map), an intensity image of a float type real numbers.
    """
    thin = draw(st.integers(0, 3)) == 0
    shape = draw(st.tuples(*[st.integers(1, 8) if thin else st.integers(4, 8)] * 3))
    base = draw(st.sampled_from([1e-3, 0.05, 0.7, 1.0, 3.3, 250.0, 2000.0, 1e6]))
    spacing = base * np.array(draw(st.tuples(*[st.floats(1.0, 3.0)] * 3)))
    pixel = draw(st.sampled_from(PIXEL_TYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    values = rng.integers(0, 5, shape) if labels or "float" not in pixel else rng.normal(0, 100, shape)
    return {"array": values.astype(pixel), "spacing": spacing, "direction": draw(directions()),
            "origin": np.array(draw(st.tuples(*[st.floats(-500, 500)] * 3))), "format": draw(st.sampled_from(FORMATS))}


def _write(case: dict, folder: Path) -> Path:
    """The image as SimpleITK writes it (a bool array as uint8: SimpleITK has no bool pixels)."""
    array = case["array"].astype(np.uint8) if case["array"].dtype == bool else case["array"]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in case["spacing"]))
    image.SetOrigin(tuple(float(o) for o in case["origin"]))
    image.SetDirection(tuple(float(d) for d in case["direction"].ravel()))
    path = folder / f"image{case['format']}"
    sitk.WriteImage(image, str(path))
    return path


def _all_ijk(shape) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)


def _positions_match_sitk(path: Path, grid: Grid) -> None:
    """Every voxel centre of ``grid`` is where SimpleITK itself puts it in the file (RAS, 1e-4 mm)."""
    image = sitk.ReadImage(str(path))
    ijk = _all_ijk(grid.shape)
    theirs = np.array([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in index)) for index in ijk]) * LPS_FLIP
    ours = grid.ijk_to_points(ijk)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-9)
    np.testing.assert_allclose(grid.points_to_ijk(ours), ijk, atol=1e-6)


def _read_or_documented_error(read, path: Path, check) -> object:
    """``read(path)`` then ``check(result)``; None where one of them refuses with our message."""
    try:
        result = read(path)
        check(result)
    except InputError as error:
        assert DOCUMENTED.search(str(error)), f"undocumented refusal: {error}"
        event(f"refused: {re.sub(r'[-0-9.(), ]+', ' ', DOCUMENTED.search(str(error)).group(0))[:40]}")
        return None
    event("accepted")
    return result


def _inside(fine: Grid, coarse: Grid) -> np.ndarray:
    """Which voxels of ``coarse`` (flat, KJI order) lie within ``fine``'s voxel-centre hull."""
    ijk = fine.points_to_ijk(coarse.ijk_to_points(_all_ijk(coarse.shape)))
    top = np.array(fine.shape[::-1]) - 1
    return np.all((ijk >= -1e-6) & (ijk <= top + 1e-6), axis=1)


@FUZZ
@given(case=image_files(labels=True), finer=st.floats(0.4, 1.0))
def test_labels_survive_reading_and_a_finer_working_grid(case, finer):
    with tempfile.TemporaryDirectory() as folder:
        path = _write(case, Path(folder))
        labels = _read_or_documented_error(read_labels, path, lambda labels: check_grid(labels.grid, "labels"))
        if labels is None:
            return
        _positions_match_sitk(path, labels.grid)
    np.testing.assert_array_equal(labels.array, case["array"].astype(np.int64))
    image = Volume(np.random.default_rng(0).normal(size=labels.array.shape), labels.ijk_to_ras)
    if np.any(labels.array):
        assert check_labels(labels, image, "labels") is labels
    working = isotropic_grid(labels.grid, float(labels.grid.spacing.min()) * finer)
    there = resample(labels.array, labels.ijk_to_ras, working, labels=True)
    back = resample(there, working.ijk_to_ras, labels.grid, labels=True)
    inside = _inside(working, labels.grid)
    np.testing.assert_array_equal(back.ravel()[inside], labels.array.ravel()[inside])


@FUZZ
@given(case=image_files(labels=False), finer=st.floats(0.4, 1.0), slope=st.tuples(*[st.floats(-2, 2)] * 3))
def test_volumes_keep_every_voxel_position(case, finer, slope):
    """A linear ramp over RAS space, written at each voxel centre, is reproduced on the working
    grid at that grid's own voxel centres: resampling put every voxel where it is."""
    with tempfile.TemporaryDirectory() as folder:
        path = _write(case, Path(folder))
        volume = _read_or_documented_error(read_volume, path, lambda v: check_volume(v, "target"))
        if volume is None:
            return
        _positions_match_sitk(path, volume.grid)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, case["array"].astype(np.float32))
    grid = volume.grid
    scale = 1.0 / float(np.abs(grid.corners_ras()).max() + 1.0)  # keeps the ramp's values near 1
    ramp = (grid.ijk_to_points(_all_ijk(grid.shape)) * scale) @ np.asarray(slope)
    working = isotropic_grid(grid, float(grid.spacing.min()) * finer)
    there = resample(ramp.reshape(grid.shape).astype(np.float32), grid.ijk_to_ras, working)
    inside = _inside(grid, working)
    expected = (working.ijk_to_points(_all_ijk(working.shape)) * scale) @ np.asarray(slope)
    np.testing.assert_allclose(there.ravel()[inside], expected[inside], atol=1e-4)


@st.composite
def label_values(draw) -> np.ndarray:
    """A 4x5x6 array of one pixel type holding values from anywhere in its range (floats: also
    fractions, NaN and infinities)."""
    pixel = draw(st.sampled_from(PIXEL_TYPES[:-1]))
    if "float" in pixel:
        values = st.one_of(st.integers(-2 ** 40, 2 ** 40).map(float), st.floats(allow_nan=True, allow_infinity=True,
                                                                              width=32 if pixel == "float32" else 64))
    else:
        info = np.iinfo(pixel)
        values = st.integers(int(info.min), int(info.max))
    chosen = draw(st.lists(values, min_size=1, max_size=4))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    return np.array(chosen, dtype=pixel)[rng.integers(0, len(chosen), (4, 5, 6))]


@FUZZ
@given(array=label_values(), suffix=st.sampled_from(FORMATS))
def test_label_values_of_any_type_are_read_or_refused(array, suffix):
    """Integer values within int32 come back exactly; anything else is refused with our message."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"labels{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        stored = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # what the file holds (NIfTI: no NaN)
        labels = _read_or_documented_error(read_labels, path, lambda labels: None)
    whole = np.all(np.isfinite(stored)) and np.array_equal(stored, np.round(stored))
    fits = whole and stored.min() >= np.iinfo(np.int32).min and stored.max() <= np.iinfo(np.int32).max
    assert (labels is not None) == bool(fits)
    if labels is not None:
        np.testing.assert_array_equal(labels.array, stored.astype(np.int64))
