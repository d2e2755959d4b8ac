"""scripts/benchmark_registration.py: its helpers on tiny arrays (no registration, no ANTs run)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from crossmodalmas.volume import LabelMap

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_registration.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_registration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_invert_contrast_inside_head_only(bench):
    image = np.array([[[0.0, 0.01, 0.5, 1.0, 0.25]]], dtype=np.float32)
    inverted = bench.invert_contrast(image, fraction=0.02)
    np.testing.assert_allclose(inverted, [[[0.0, 0.0, 0.5, 0.0, 0.75]]])
    assert inverted.dtype == np.float32


def test_group_labels_merges_and_drops_the_rest(bench):
    labels = np.array([[[0, 2, 41, 3, 42, 24, 16]]])
    grouped = bench.group_labels(labels, {1: (2, 41), 2: (3, 42), 3: (16,)})
    np.testing.assert_array_equal(grouped, [[[0, 1, 1, 2, 2, 0, 3]]])


def test_synthseg_groups_are_disjoint(bench):
    ids = [i for members in bench.SYNTHSEG_GROUPS.values() for i in members]
    assert len(ids) == len(set(ids))


def test_render_contrast_seeded_background_dark(bench):
    labels = np.zeros((12, 12, 12), dtype=np.int32)
    labels[3:9, 3:9, 3:9] = 5
    a = bench.render_contrast(labels, np.random.default_rng(1), blur_vox=0.0, noise=0.0)
    b = bench.render_contrast(labels, np.random.default_rng(1), blur_vox=0.0, noise=0.0)
    np.testing.assert_array_equal(a, b)
    assert a[0, 0, 0] == 0.0 and 0.0 <= a[5, 5, 5] <= 1.0


def test_cropped_keeps_physical_positions(bench):
    array = np.zeros((20, 20, 20), dtype=np.int32)
    array[8:11, 5:7, 12:15] = 3
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    crop = bench._cropped(LabelMap(array, ijk_to_ras), margin=2)
    assert crop.array.shape == (7, 6, 7)
    first = np.argwhere(crop.array == 3)[0][::-1]  # (i, j, k)
    np.testing.assert_allclose(crop.grid.ijk_to_points(first[None]),
                               LabelMap(array, ijk_to_ras).grid.ijk_to_points(np.array([[12, 5, 8]])))


def test_verdict_and_unknown_case(bench):
    ours = {"mean_dice": 0.8, "seconds": 10.0, "folding_percent": 0.0}
    syn = {"mean_dice": 0.7, "seconds": 10.0 * bench.TIME_FACTOR, "folding_percent": 0.0}
    assert bench._verdict(ours, syn) == {"dice": True, "time": True, "folding": True}
    assert bench._verdict(ours, None)["dice"] is None
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "liver"])
