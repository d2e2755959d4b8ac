"""Evaluation metrics (crossmodalmas.metrics): Dice, HD95, aRVD, folding, inverse consistency."""

import math

import numpy as np
import pytest
import torch

from crossmodalmas.metrics import (
    abs_relative_volume_difference,
    dice,
    folding_percent,
    hausdorff95,
    inverse_consistency_mm,
    segmentation_report,
)


def _box(shape, start, stop, value):
    labels = np.zeros(shape, dtype=np.int16)
    labels[tuple(slice(a, b) for a, b in zip(start, stop))] = value
    return labels


def _ellipsoid(shape, radius_mm, spacing, value=1):
    """A ball of ``radius_mm`` in physical space, centred in the grid."""
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    inside = sum(g ** 2 for g in grids) <= radius_mm ** 2
    return np.where(inside, value, 0).astype(np.int16)


def test_dice_of_identical_and_disjoint_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(10, 10, 10))
    assert dice(labels, labels) == {1: 1.0, 2: 1.0, 3: 1.0}
    a = _box((8, 8, 8), (0, 0, 0), (4, 8, 8), 500)
    b = _box((8, 8, 8), (4, 0, 0), (8, 8, 8), 500)
    assert dice(a, b) == {500: 0.0}


def test_dice_partial_overlap_and_absent_labels():
    a = _box((8, 8, 8), (0, 0, 0), (4, 4, 4), 205)  # 64 voxels
    b = _box((8, 8, 8), (1, 0, 0), (4, 4, 4), 205)  # 48 voxels, all inside a
    a[7, 7, 7] = 600  # only in pred
    assert dice(a, b) == pytest.approx({205: 2 * 48 / (64 + 48), 600: 0.0})
    assert dice(a, b, labels=[205, 820]) == pytest.approx({205: 2 * 48 / 112})


def test_hausdorff95_of_single_voxels_respects_anisotropic_spacing():
    a = _box((6, 6, 12), (2, 2, 2), (3, 3, 3), 1)
    b = _box((6, 6, 12), (2, 2, 7), (3, 3, 8), 1)
    assert hausdorff95(a, b, 1, (1.0, 1.0, 0.5)) == pytest.approx(2.5)
    assert hausdorff95(a, b, 1, (3.0, 3.0, 2.0)) == pytest.approx(10.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
def test_hausdorff95_of_concentric_balls_is_the_radius_difference(spacing):
    shape = tuple(int(28 / s) for s in spacing)
    inner = _ellipsoid(shape, 8.0, spacing)
    outer = _ellipsoid(shape, 12.0, spacing)
    assert hausdorff95(inner, outer, 1, spacing) == pytest.approx(4.0, abs=max(spacing))
    assert hausdorff95(outer, inner, 1, spacing) == hausdorff95(inner, outer, 1, spacing)


def test_hausdorff95_scales_with_isotropic_spacing():
    inner = _ellipsoid((20, 20, 20), 5.0, (1, 1, 1))
    outer = _ellipsoid((20, 20, 20), 8.0, (1, 1, 1))
    one = hausdorff95(inner, outer, 1, (1, 1, 1))
    assert hausdorff95(inner, outer, 1, (1.5, 1.5, 1.5)) == pytest.approx(1.5 * one)


def test_hausdorff95_empty_labels():
    a = _box((6, 6, 6), (1, 1, 1), (3, 3, 3), 1)
    empty = np.zeros_like(a)
    assert hausdorff95(empty, empty, 1, (1, 1, 1)) == 0.0
    assert hausdorff95(a, empty, 1, (1, 1, 1)) == math.inf
    assert hausdorff95(empty, a, 1, (1, 1, 1)) == math.inf
    assert hausdorff95(a, a, 1, (1, 1, 1)) == 0.0


def test_abs_relative_volume_difference():
    truth = _box((8, 8, 8), (0, 0, 0), (4, 4, 4), 3)  # 64
    pred = _box((8, 8, 8), (0, 0, 0), (5, 4, 4), 3)  # 80
    assert abs_relative_volume_difference(pred, truth, 3) == pytest.approx(0.25)
    assert abs_relative_volume_difference(truth, pred, 3) == pytest.approx(16 / 80)
    assert math.isnan(abs_relative_volume_difference(pred, np.zeros_like(truth), 3))


def test_segmentation_report():
    truth = _box((10, 10, 10), (2, 2, 2), (6, 6, 6), 500)
    pred = truth.copy()
    pred[0, 0, 0] = 205
    report = segmentation_report(pred, truth, (1, 1, 1))
    assert set(report) == {205, 500}
    assert report[500] == {"dice": 1.0, "hd95_mm": 0.0, "arvd": 0.0}
    assert report[205]["dice"] == 0.0 and report[205]["hd95_mm"] == math.inf
    assert math.isnan(report[205]["arvd"])


def test_folding_percent():
    assert folding_percent(torch.zeros(2, 3, 6, 6, 6)) == 0.0
    k = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1, 1).expand(1, 1, 6, 6, 6)
    folding = torch.cat([-2 * k, torch.zeros(1, 2, 6, 6, 6)], dim=1)  # d(k + u_k)/dk = -1
    assert folding_percent(folding) == pytest.approx(100.0)
    mixed = torch.cat([folding, torch.zeros(1, 3, 6, 6, 6)])
    assert folding_percent(mixed) == pytest.approx(50.0)


def test_inverse_consistency_of_translations():
    shape = (1, 3, 8, 8, 8)
    spacing = (2.0, 1.0, 1.0)
    assert inverse_consistency_mm(torch.zeros(shape), torch.zeros(shape), spacing) == 0.0
    t = torch.tensor([1.5, 0.0, 0.5]).view(1, 3, 1, 1, 1).expand(shape)
    assert inverse_consistency_mm(t, -t, spacing) == pytest.approx(0.0, abs=1e-5)
    expected = math.hypot(2 * 1.5 * 2.0, 2 * 0.5 * 1.0)
    assert inverse_consistency_mm(t, t, spacing) == pytest.approx(expected, rel=1e-5)


def test_metric_errors():
    a, b = np.zeros((4, 4, 4), dtype=int), np.zeros((4, 4, 5), dtype=int)
    with pytest.raises(ValueError, match=r"dice\(\): 'pred' \(4, 4, 4\) and 'truth' \(4, 4, 5\) must have the same shape"):
        dice(a, b)
    with pytest.raises(ValueError, match=r"hausdorff95\(\): 'pred' \(4, 4, 4\) and 'truth' \(4, 4, 5\)"):
        hausdorff95(a, b, 1, (1, 1, 1))
    with pytest.raises(ValueError, match=r"hausdorff95\(\): 'pred' and 'truth' must be 3-D \(K, J, I\) arrays, got \(4, 4\)"):
        hausdorff95(a[0], a[0], 1, (1, 1, 1))
    with pytest.raises(ValueError, match=r"hausdorff95\(\): 'spacing_kji' must be 3 positive finite numbers .*, got \(1, 0, 1\)"):
        hausdorff95(a, a, 1, (1, 0, 1))
    with pytest.raises(ValueError, match=r"abs_relative_volume_difference\(\): 'pred' \(4, 4, 4\) and 'truth' \(4, 4, 5\)"):
        abs_relative_volume_difference(a, b, 1)
    with pytest.raises(ValueError, match=r"segmentation_report\(\): 'pred' \(4, 4, 4\) and 'truth' \(4, 4, 5\)"):
        segmentation_report(a, b, (1, 1, 1))


def test_field_metric_errors():
    with pytest.raises(ValueError, match=r"folding_percent\(\): 'flow' must be \(N, 3, D, H, W\) in voxels with D, H, W >= 2, got \(1, 2, 4, 4, 4\)"):
        folding_percent(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(TypeError, match=r"folding_percent\(\): 'flow' must be a torch.Tensor, got ndarray"):
        folding_percent(np.zeros((1, 3, 4, 4, 4)))
    with pytest.raises(ValueError, match=r"inverse_consistency_mm\(\): 'forward' \(1, 3, 4, 4, 4\) and 'backward' \(2, 3, 4, 4, 4\) must have the same shape"):
        inverse_consistency_mm(torch.zeros(1, 3, 4, 4, 4), torch.zeros(2, 3, 4, 4, 4), (1, 1, 1))
    with pytest.raises(ValueError, match=r"inverse_consistency_mm\(\): 'backward' must be \(N, 3, D, H, W\)"):
        inverse_consistency_mm(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4), (1, 1, 1))
    with pytest.raises(ValueError, match=r"inverse_consistency_mm\(\): 'spacing_kji' must be 3 positive finite numbers"):
        inverse_consistency_mm(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4), (1, 1))


def test_sd_log_jacobian_is_zero_for_translations_and_grows_with_roughness():
    from crossmodalmas.metrics import sd_log_jacobian

    shift = torch.ones(1, 3, 8, 8, 8) * 2.5
    assert sd_log_jacobian(shift) == pytest.approx(0.0, abs=1e-6)
    rough = torch.randn(1, 3, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    assert sd_log_jacobian(rough) > sd_log_jacobian(0.1 * rough) > 0.0


def test_sd_log_jacobian_refuses_a_bad_field():
    from crossmodalmas.metrics import sd_log_jacobian

    with pytest.raises(ValueError, match=r"sd_log_jacobian\(\): 'flow' must be \(N, 3, D, H, W\)"):
        sd_log_jacobian(torch.zeros(1, 2, 8, 8, 8))


def test_determinant_figures_of_a_determinant_map():
    from crossmodalmas.metrics import determinant_figures

    assert determinant_figures(torch.ones(4, 4, 4)) == {"folding_percent": 0.0, "sd_log_jacobian": 0.0}
    determinant = torch.ones(10, 10, 10)
    determinant[0, 0, :5] = -0.5
    out = determinant_figures(determinant)
    assert out["folding_percent"] == pytest.approx(0.5) and out["sd_log_jacobian"] > 0
