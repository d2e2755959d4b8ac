"""The parametric abdomen phantom: determinism, label codes, organs inside the body, layout."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from crossmodalmas.abdomen_phantom import (
    AbdomenAnatomy,
    AbdomenLabel,
    OrganPose,
    abdomen_label_map,
    random_abdomen_anatomy,
)
from crossmodalmas.phantoms import make_grid
from crossmodalmas.volume import Grid, LabelMap

ORGANS = {1, 2, 3, 4, 6, 7, 11}
CODES = ORGANS | {100, 101}


def abdomen_grid(axes: str = "LPS") -> Grid:
    """40 x 36 x 48 voxels covering 360 (R-L) x 270 (A-P) x 220 (S-I) mm about the origin."""
    return make_grid((40, 36, 48), (7.5, 7.5, 5.5), axes=axes)


def labels_of(seed) -> LabelMap:
    anatomy = AbdomenAnatomy() if seed is None else random_abdomen_anatomy(np.random.default_rng(seed))
    return abdomen_label_map(anatomy, abdomen_grid())


def centroid_ras(labels: LabelMap, code: int) -> np.ndarray:
    kji = np.argwhere(labels.array == code).mean(axis=0)
    return labels.grid.ijk_to_points(kji[None, ::-1])[0]


@pytest.fixture(scope="module")
def maps() -> dict:
    return {seed: labels_of(seed) for seed in (None, 0, 1, 2, 3)}


def test_same_seed_same_anatomy_and_map():
    first, second = (random_abdomen_anatomy(np.random.default_rng(5)) for _ in range(2))
    assert first == second and first != random_abdomen_anatomy(np.random.default_rng(6))
    np.testing.assert_array_equal(labels_of(5).array, labels_of(5).array)
    assert not np.array_equal(labels_of(5).array, labels_of(6).array)


def test_nominal_anatomy_has_a_pose_per_organ_and_a_cavity():
    anatomy = AbdomenAnatomy()
    assert {int(code) for code in anatomy.organs} == ORGANS
    assert all(pose == OrganPose() for pose in anatomy.organs.values())
    assert anatomy.cavity_semi_axes_mm == (130.0, 85.0)


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3])
def test_every_code_present_on_the_grid_as_int32(maps, seed):
    labels = maps[seed]
    assert isinstance(labels, LabelMap) and labels.array.dtype == np.int32
    assert labels.grid.same_as(abdomen_grid())
    assert set(labels.labels.tolist()) == CODES
    for code in ORGANS:
        assert np.count_nonzero(labels.array == code) >= 3, AbdomenLabel(code).name


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3])
def test_organs_are_inside_the_body_cavity(maps, seed):
    labels = maps[seed]
    anatomy = AbdomenAnatomy() if seed is None else random_abdomen_anatomy(np.random.default_rng(seed))
    organs = np.isin(labels.array, list(ORGANS))
    points = labels.grid.ijk_to_points(np.argwhere(organs)[:, ::-1])
    ca, cb = anatomy.cavity_semi_axes_mm
    assert np.all((points[:, 0] / ca) ** 2 + (points[:, 1] / cb) ** 2 <= 1.0 + 1e-9)
    touching_air = ndimage.binary_dilation(organs) & (labels.array == 0)
    assert not touching_air.any()
    assert labels.array[0, 0, 0] == 0 and labels.array[-1, -1, -1] == 0  # grid corners are outside the body


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3])
def test_layout_sides_and_depths(maps, seed):
    labels = maps[seed]
    at = {code: centroid_ras(labels, code) for code in ORGANS}
    assert at[AbdomenLabel.RIGHT_KIDNEY][0] > 30 and at[AbdomenLabel.LEFT_KIDNEY][0] < -30  # +R is the right
    assert at[AbdomenLabel.RIGHT_KIDNEY][1] < -20 and at[AbdomenLabel.LEFT_KIDNEY][1] < -20  # posterior
    assert at[AbdomenLabel.LIVER][0] > 0 and at[AbdomenLabel.GALLBLADDER][0] > 0
    assert at[AbdomenLabel.SPLEEN][0] < -50 and at[AbdomenLabel.SPLEEN][1] < 0  # left, posterior
    assert at[AbdomenLabel.STOMACH][0] < 0 and at[AbdomenLabel.STOMACH][1] > 0  # left, anterior
    assert at[AbdomenLabel.PANCREAS][1] < at[AbdomenLabel.STOMACH][1]  # behind the stomach
    assert at[AbdomenLabel.GALLBLADDER][2] < at[AbdomenLabel.LIVER][2]  # under the liver


def test_nominal_right_kidney_is_lower_than_the_left(maps):
    at = {code: centroid_ras(maps[None], code) for code in (AbdomenLabel.RIGHT_KIDNEY, AbdomenLabel.LEFT_KIDNEY)}
    assert at[AbdomenLabel.RIGHT_KIDNEY][2] < at[AbdomenLabel.LEFT_KIDNEY][2] - 5


def test_same_points_same_labels_on_a_flipped_grid():
    anatomy = random_abdomen_anatomy(np.random.default_rng(9))
    lps = abdomen_label_map(anatomy, abdomen_grid("LPS")).array
    ras = abdomen_label_map(anatomy, abdomen_grid("RAS")).array
    np.testing.assert_array_equal(lps, ras[:, ::-1, ::-1])


def test_body_wall_is_the_outer_ring():
    anatomy = AbdomenAnatomy()
    grid = make_grid((1, 1, 48), (4.0, 4.0, 4.0), axes="RAS")  # a line along R through the origin
    line = abdomen_label_map(anatomy, grid).array.ravel()
    x = grid.ijk_to_points(np.stack([np.arange(48), np.zeros(48), np.zeros(48)], axis=1))[:, 0]
    assert np.all(line[np.abs(x) > 160.0] == 0)
    assert np.all(line[(np.abs(x) < 160.0) & (np.abs(x) > 130.0)] == AbdomenLabel.BODY_WALL)


def test_refuses_bad_arguments():
    grid = abdomen_grid()
    with pytest.raises(TypeError,
                       match=r"random_abdomen_anatomy\(\): 'rng' must be a numpy.random.Generator, got int"):
        random_abdomen_anatomy(3)
    with pytest.raises(TypeError, match=r"abdomen_label_map\(\): 'anatomy' must be a AbdomenAnatomy, got str"):
        abdomen_label_map("abdomen", grid)
    with pytest.raises(TypeError,
                       match=r"abdomen_label_map\(\): 'grid' must be a crossmodalmas.volume.Grid, got tuple"):
        abdomen_label_map(AbdomenAnatomy(), (4, 4, 4))
    partial = dataclasses.replace(AbdomenAnatomy(), organs={AbdomenLabel.LIVER: OrganPose()})
    with pytest.raises(ValueError, match=r"abdomen_label_map\(\): 'anatomy' has no pose for GALLBLADDER, LEFT_KIDNEY"):
        abdomen_label_map(partial, grid)
    thin = dataclasses.replace(AbdomenAnatomy(), body_semi_axes_mm=(160.0, 25.0))
    with pytest.raises(ValueError, match=r"abdomen_label_map\(\): 'anatomy' body \(160.0, 25.0\) mm must be wider "
                                         r"than its wall \(fat \+ muscle = 30.0 mm\)"):
        abdomen_label_map(thin, grid)
