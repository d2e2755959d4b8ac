"""The parametric heart phantom: determinism, labels, anatomy, grid independence, contrasts."""

import numpy as np
import pytest
from scipy import ndimage

from crossmodalmas.phantoms import (
    TISSUE_TO_MMWHS,
    DemoCase,
    HeartAnatomy,
    Tissue,
    demo_case,
    heart_tissue_map,
    make_grid,
    random_heart_anatomy,
    render,
    tissue_at,
    tissue_to_labels,
)
from crossmodalmas.volume import Grid, LabelMap, Volume

MMWHS_CODES = {205, 420, 500, 550, 600, 820, 850}


def heart_grid(anatomy: HeartAnatomy, shape=(48, 48, 48), spacing=1.4, **kwargs) -> Grid:
    """A small grid centred on the heart (48^3 at 1.4 mm covers it with its surroundings)."""
    return make_grid(shape, (spacing,) * 3, centre_ras=anatomy.heart_centre_ras, **kwargs)


@pytest.fixture(scope="module")
def anatomy() -> HeartAnatomy:
    return random_heart_anatomy(np.random.default_rng(7))


@pytest.fixture(scope="module")
def case() -> DemoCase:
    return demo_case(seed=0, n_atlases=2)


def test_same_seed_same_phantom_and_render():
    first, second = (random_heart_anatomy(np.random.default_rng(3)) for _ in range(2))
    assert first == second
    assert first != random_heart_anatomy(np.random.default_rng(4))
    grid = heart_grid(first, shape=(24, 24, 24), spacing=2.5)
    tissue = heart_tissue_map(first, grid)
    np.testing.assert_array_equal(tissue, heart_tissue_map(second, grid))
    for modality in ("ct", "mr"):
        a = render(tissue, grid, modality, np.random.default_rng(11)).array
        b = render(tissue, grid, modality, np.random.default_rng(11)).array
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, render(tissue, grid, modality, np.random.default_rng(12)).array)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_all_seven_mmwhs_labels_present(seed):
    anatomy = random_heart_anatomy(np.random.default_rng(seed))
    grid = heart_grid(anatomy, spacing=1.6)
    labels = tissue_to_labels(heart_tissue_map(anatomy, grid), grid)
    assert isinstance(labels, LabelMap) and labels.array.dtype == np.int32
    assert set(labels.labels.tolist()) == MMWHS_CODES
    assert labels.grid.same_as(grid)
    tissue = heart_tissue_map(anatomy, grid)
    for unlabelled in (Tissue.FAT, Tissue.LUNG, Tissue.BONE, Tissue.SOFT, Tissue.BLOOD):
        assert np.any(tissue == unlabelled), unlabelled.name
        assert np.all(labels.array[tissue == unlabelled] == 0)


def test_tissue_to_labels_maps_each_class():
    grid = make_grid((1, 1, len(Tissue)), (1.0, 1.0, 1.0))
    tissue = np.arange(len(Tissue), dtype=np.int32).reshape(grid.shape)
    labels = tissue_to_labels(tissue, grid).array.ravel()
    for cls in Tissue:
        assert labels[cls] == TISSUE_TO_MMWHS.get(cls, 0)


@pytest.mark.parametrize("seed", [0, 5])
def test_myocardium_surrounds_lv_blood_pool(seed):
    anatomy = random_heart_anatomy(np.random.default_rng(seed))
    grid = heart_grid(anatomy, spacing=1.4)
    tissue = heart_tissue_map(anatomy, grid)
    pool = tissue == Tissue.LV_BLOOD_POOL
    radius = max(1, int(round(anatomy.myocardium_mm / 1.4)) - 1)
    ring = ndimage.binary_dilation(pool, ndimage.generate_binary_structure(3, 1), iterations=radius) & ~pool
    hit = np.bincount(tissue[ring], minlength=len(Tissue)) / ring.sum()
    assert hit[Tissue.LV_MYOCARDIUM] > 0.75  # the rest: the open base (left atrium, aorta)
    assert hit[Tissue.LUNG] + hit[Tissue.AIR] + hit[Tissue.RIGHT_VENTRICLE] < 0.02


def _deepest_point(grid: Grid, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """RAS of the voxel of ``mask`` farthest from its boundary, and that depth in mm."""
    depth = ndimage.distance_transform_edt(mask, sampling=grid.spacing_kji)
    k, j, i = np.unravel_index(np.argmax(depth), mask.shape)
    return grid.ijk_to_points(np.array([[i, j, k]], float))[0], float(depth.max())


def test_same_physical_point_same_label_on_differently_oriented_grids(anatomy):
    grid_a = heart_grid(anatomy, shape=(40, 40, 40), spacing=1.5)
    grid_b = make_grid((36, 44, 40), (1.3, 1.7, 1.5), rotation_deg=(20.0, -15.0, 30.0),
                       centre_ras=anatomy.heart_centre_ras + [3.0, -2.0, 1.0], axes="RAS")
    assert not np.allclose(grid_a.ijk_to_ras[:3, :3] / 1.5, grid_b.ijk_to_ras[:3, :3] / grid_b.spacing)
    labels_a = tissue_to_labels(heart_tissue_map(anatomy, grid_a), grid_a).array
    labels_b = tissue_to_labels(heart_tissue_map(anatomy, grid_b), grid_b).array
    half_diagonal_b = 0.5 * float(np.linalg.norm(grid_b.spacing))
    for code in sorted(MMWHS_CODES):
        point, depth = _deepest_point(grid_a, labels_a == code)
        assert depth > half_diagonal_b, code
        i, j, k = np.round(grid_b.points_to_ijk(point[None])[0]).astype(int)
        assert labels_b[k, j, i] == code
        assert TISSUE_TO_MMWHS[Tissue(tissue_at(anatomy, point[None])[0])] == code


def test_ct_and_mr_order_fat_and_myocardium_oppositely(anatomy):
    grid = heart_grid(anatomy, spacing=1.6)
    tissue = heart_tissue_map(anatomy, grid)
    fat, myocardium, blood = (tissue == t for t in (Tissue.FAT, Tissue.LV_MYOCARDIUM, Tissue.LV_BLOOD_POOL))
    for seed in range(3):
        ct = render(tissue, grid, "ct", np.random.default_rng(seed))
        mr = render(tissue, grid, "MR", np.random.default_rng(seed))
        assert isinstance(ct, Volume) and ct.array.dtype == np.float32 and ct.grid.same_as(grid)
        assert ct.array[fat].mean() < ct.array[myocardium].mean() < ct.array[blood].mean()
        assert mr.array[fat].mean() > mr.array[myocardium].mean() < mr.array[blood].mean()
        assert ct.array.min() >= -1200 and mr.array.min() >= 0.0


def test_demo_case_sizes_and_geometry(case):
    target, truth = case.target, case.target_truth
    assert target.array.shape == (64, 96, 108)
    np.testing.assert_allclose(target.grid.spacing, [1.0, 1.0, 1.6])
    assert truth.grid.same_as(target.grid)
    assert set(truth.labels.tolist()) == MMWHS_CODES
    direction = target.ijk_to_ras[:3, :3] / target.grid.spacing
    angles = np.degrees(np.arccos(np.abs(np.diag(direction))))
    assert np.all(angles < 11.0) and np.any(angles > 0.1)  # slightly rotated, LPS-like
    assert direction[0, 0] < 0 and direction[1, 1] < 0 and direction[2, 2] > 0
    assert len(case.atlases) == 2 and len({name for name, _, _ in case.atlases}) == 2
    for name, volume, labels in case.atlases:
        assert volume.array.shape == (68, 68, 72) and volume.array.size <= 110 ** 3
        np.testing.assert_allclose(volume.grid.spacing, [1.4, 1.4, 1.4])
        assert labels.grid.same_as(volume.grid) and not volume.grid.same_as(target.grid)
        assert set(labels.labels.tolist()) == MMWHS_CODES
    assert not np.array_equal(case.atlases[0][2].array, case.atlases[1][2].array)
    np.testing.assert_array_equal(demo_case(0, 1).target.array, target.array)  # independent of n_atlases


def test_make_grid_centre_spacing_and_axes():
    grid = make_grid((5, 7, 9), (0.5, 1.0, 2.0), rotation_deg=(0, 0, 90), centre_ras=(10, 20, 30))
    np.testing.assert_allclose(grid.ijk_to_points(np.array([[4.0, 3.0, 2.0]]))[0], [10, 20, 30])
    np.testing.assert_allclose(grid.spacing, [0.5, 1.0, 2.0])
    np.testing.assert_allclose(grid.ijk_to_ras[:3, 0], [0.0, -0.5, 0.0], atol=1e-12)  # L turned 90 deg about S
    ras = make_grid((5, 7, 9), (1, 1, 1), axes="ras")
    np.testing.assert_allclose(ras.ijk_to_ras[:3, :3], np.eye(3))


def test_bad_modality_is_refused_naming_the_argument(anatomy):
    grid = heart_grid(anatomy, shape=(8, 8, 8), spacing=4.0)
    tissue = heart_tissue_map(anatomy, grid)
    with pytest.raises(ValueError, match=r"render\(\): 'modality' must be 'ct' or 'mr', got 'pet'"):
        render(tissue, grid, "pet", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"render\(\): 'modality' must be 'ct' or 'mr', got None"):
        render(tissue, grid, None, np.random.default_rng(0))


def test_other_bad_inputs_are_refused(anatomy):
    grid = heart_grid(anatomy, shape=(8, 8, 8), spacing=4.0)
    tissue = heart_tissue_map(anatomy, grid)
    with pytest.raises(ValueError, match=r"render\(\): 'tissue' must be an integer array of the grid's shape"):
        render(tissue[:4], grid, "ct", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"tissue_to_labels\(\): 'tissue' values must be Tissue classes"):
        tissue_to_labels(tissue + 100, grid)
    with pytest.raises(TypeError, match=r"render\(\): 'rng' must be a numpy.random.Generator, got int"):
        render(tissue, grid, "ct", 0)
    with pytest.raises(TypeError, match=r"random_heart_anatomy\(\): 'rng' must be a numpy.random.Generator"):
        random_heart_anatomy(np.random.RandomState(0))
    with pytest.raises(TypeError, match=r"heart_tissue_map\(\): 'grid' must be a crossmodalmas.volume.Grid"):
        heart_tissue_map(anatomy, (8, 8, 8))
    with pytest.raises(ValueError, match=r"tissue_at\(\): 'points_ras' must be \(N, 3\), got \(3,\)"):
        tissue_at(anatomy, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"make_grid\(\): 'spacing_mm' must be 3 positive values"):
        make_grid((4, 4, 4), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"make_grid\(\): 'axes' must be 'LPS' or 'RAS', got 'XYZ'"):
        make_grid((4, 4, 4), (1.0, 1.0, 1.0), axes="XYZ")
    with pytest.raises(ValueError, match=r"demo_case\(\): 'n_atlases' must be an integer >= 1, got 0"):
        demo_case(0, n_atlases=0)
