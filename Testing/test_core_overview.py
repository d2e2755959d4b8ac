"""The PNG overview figure and the label-name table."""

import sys

import numpy as np
import pytest

from crossmodalmas.errors import InputError
from crossmodalmas.label_names import label_name
from crossmodalmas.overview import _view_slice, write_overview
from crossmodalmas.phantoms import heart_tissue_map, make_grid, random_heart_anatomy, render, tissue_to_labels
from crossmodalmas.volume import LabelMap, Volume

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_case():
    """A 40^3 CT-like target with its labels, and an MR-like 'warped atlas' on another grid."""
    rng = np.random.default_rng(0)
    anatomy = random_heart_anatomy(rng)
    target_grid = make_grid((32, 40, 40), (1.6, 1.6, 2.0), rotation_deg=(0, 0, 5), centre_ras=anatomy.heart_centre_ras)
    tissue = heart_tissue_map(anatomy, target_grid)
    target, truth = render(tissue, target_grid, "ct", rng), tissue_to_labels(tissue, target_grid)
    atlas_grid = make_grid((30, 30, 30), (2.2, 2.2, 2.2), rotation_deg=(8, -5, 0),
                           centre_ras=anatomy.heart_centre_ras + 3.0, axes="RAS")
    atlas = render(heart_tissue_map(anatomy, atlas_grid), atlas_grid, "mr", rng)
    return target, truth, atlas


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_overview_with_truth_and_warped_atlas(tmp_path, small_case):
    target, truth, atlas = small_case
    result = LabelMap(np.where(truth.array == 600, 0, truth.array), truth.ijk_to_ras)
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    write_overview(tmp_path / "overview.png", target, truth, result, warped_atlas=atlas, title="phantom")
    _assert_png(tmp_path / "overview.png")
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded  # no global pyplot state


def test_overview_without_truth_or_atlas_and_result_on_another_grid(tmp_path, small_case):
    target, truth, atlas = small_case
    grid = atlas.grid
    result = tissue_to_labels(heart_tissue_map(random_heart_anatomy(np.random.default_rng(0)), grid), grid)
    write_overview(str(tmp_path / "plain.png"), target, None, result)
    _assert_png(tmp_path / "plain.png")


def test_overview_of_empty_result(tmp_path, small_case):
    target, truth, _ = small_case
    write_overview(tmp_path / "empty.png", target, truth, LabelMap(np.zeros_like(truth.array), truth.ijk_to_ras))
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC


def test_overview_bad_inputs(tmp_path, small_case):
    target, truth, _ = small_case
    with pytest.raises(InputError, match=r"write_overview\(\): output folder .*missing.* does not exist"):
        write_overview(tmp_path / "missing" / "x.png", target, truth, truth)
    with pytest.raises(TypeError, match=r"write_overview\(\): 'result' must be a LabelMap, got ndarray"):
        write_overview(tmp_path / "x.png", target, truth, truth.array)
    with pytest.raises(TypeError, match=r"write_overview\(\): 'truth' must be a LabelMap or None, got Volume"):
        write_overview(tmp_path / "x.png", target, target, truth)
    flat = Volume(np.zeros((4, 4)), np.eye(4))
    with pytest.raises(ValueError, match=r"write_overview\(\): 'target' must be a non-empty 3-D array"):
        write_overview(tmp_path / "x.png", flat, None, truth)


def test_slices_look_the_same_from_lps_and_ras_grids():
    """The same physical image on an LPS and a RAS grid gives identical, radiological views."""
    lps = make_grid((7, 9, 11), (1.0, 1.0, 1.0), axes="LPS")  # odd sizes: the centre voxel
    ras = make_grid((7, 9, 11), (1.0, 1.0, 1.0), axes="RAS")  # is at the origin on both grids
    values = {}
    for name, grid in (("lps", lps), ("ras", ras)):
        k, j, i = np.meshgrid(*(np.arange(s) for s in grid.shape), indexing="ij")
        points = grid.ijk_to_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
        values[name] = (points @ [1.0, 10.0, 100.0]).reshape(grid.shape)  # R + 10 A + 100 S
    centre = np.array([3, 4, 5])
    for view in (("axial", 2, 1, 0), ("coronal", 1, 2, 0), ("sagittal", 0, 2, 1)):
        plane_lps, _, title = _view_slice(values["lps"], lps, view, centre)
        plane_ras, _, _ = _view_slice(values["ras"], ras, view, centre)
        np.testing.assert_allclose(plane_lps, plane_ras)
        assert np.all(np.diff(plane_lps, axis=1) < 0)  # R (or A) at the image's left
        assert np.all(np.diff(plane_lps, axis=0) < 0)  # A (or S) at the top
    plane, _, title = _view_slice(values["lps"], lps, ("axial", 2, 1, 0), centre)
    np.testing.assert_allclose(plane, values["lps"][3])  # LPS axial: the voxel array as is
    assert title.startswith("axial k=3")


def test_label_names():
    assert label_name(205) == "LV myocardium"
    assert label_name(np.int32(500)) == "LV blood pool"
    assert label_name(850.0) == "Pulmonary artery"
    assert label_name(7) == "Label 7"
    with pytest.raises(TypeError, match=r"label_name\(\): 'value' must be an integer label value, got 2.5"):
        label_name(2.5)
