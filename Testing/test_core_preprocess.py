"""crossmodalmas.preprocess: robust_normalise (analytic values, slab by slab without full-size
temporaries); resample_probabilities (the argmax of interpolating every voxel, interpolating only
near class boundaries)."""

import tracemalloc

import numpy as np
import pytest

import torch

from crossmodalmas import preprocess, transforms
from crossmodalmas.phantoms import make_grid
from crossmodalmas.preprocess import robust_normalise


def test_percentiles_map_to_zero_and_one_and_the_rest_is_clipped():
    array = np.arange(201, dtype=np.float32).reshape(1, 1, 201)  # percentile p of 0..200 is 2 p
    out = robust_normalise(array, low=10.0, high=60.0)  # 20 -> 0, 120 -> 1
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, [0, 20, 70, 120, 200]], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)


def test_a_constant_image_maps_to_zeros():
    out = robust_normalise(np.full((3, 4, 5), 7, dtype=np.int16))
    assert out.dtype == np.float32 and not out.any()


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 22])
def test_slabs_give_the_one_expression_result_to_the_bit(monkeypatch, chunk):
    monkeypatch.setattr(preprocess, "_NORMALISE_CHUNK_VOXELS", chunk)
    array = np.random.default_rng(0).normal(100.0, 30.0, (9, 6, 5)).astype(np.float32)
    view = array[::-1, :, ::2]  # a strided view, as a flipped or cropped image is
    for image in (array, view, array.astype(np.int16)):
        lo, hi = np.percentile(image, [0.5, 99.5])
        expected = np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        np.testing.assert_array_equal(robust_normalise(image), expected)


def test_memory_stays_near_one_copy_of_the_image(monkeypatch):
    array = np.random.default_rng(1).random((96, 96, 96), dtype=np.float32)
    monkeypatch.setattr(preprocess, "_NORMALISE_CHUNK_VOXELS", 96 * 96 * 4)  # slabs of 4 of 96, as of 4 MB in 300 MB
    tracemalloc.start()
    try:
        robust_normalise(array)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one float32 result (the percentiles' sorted copy is freed before it): the expression held
    # two float64 temporaries at once, four times the image
    assert peak < 1.5 * array.nbytes, f"peak {peak / array.nbytes:.2f} x the image"


def _blobs(shape, classes: int, seed: int) -> np.ndarray:
    """Smooth per-class probabilities: a few regions of one class each, their edges blended."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    centres = rng.uniform(0, shape, (classes, 3))
    scores = -np.linalg.norm(grid[None] - centres[:, None, None, None], axis=-1)
    weights = np.exp(scores - scores.max(0))
    return (weights / weights.sum(0)).astype(np.float32)


def _interpolated_everywhere(probabilities: np.ndarray, source, target) -> np.ndarray:
    """The argmax of the probabilities interpolated at every target voxel of the box that the
    source's extent spans (zeros outside the source), 0 outside the box."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in target.shape[::-1]], indexing="ij"), axis=-1)
    to_source = np.linalg.inv(source.ijk_to_ras) @ target.ijk_to_ras
    kji = (ijk @ to_source[:3, :3].T + to_source[:3, 3])[..., ::-1].transpose(2, 1, 0, 3)  # (K, J, I, 3)
    points = torch.from_numpy(np.ascontiguousarray(kji.reshape(-1, 3).T)).float()[None, :, :, None, None]
    sampled = transforms.sample_at(torch.from_numpy(probabilities)[None], points, padding_mode="zeros")
    labels = sampled[0, :, :, 0, 0].argmax(0).numpy().reshape(target.shape)
    lo, hi = preprocess._region_in(target, source)
    boxed = np.zeros_like(labels)
    boxed[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = labels[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    return boxed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probabilities_interpolated_near_boundaries_only_give_every_voxels_argmax(monkeypatch, seed):
    source = make_grid((10, 12, 14), (3.0, 3.0, 3.0), rotation_deg=(0.0, 10.0, 0.0))
    # finer, turned, and reaching beyond the source on every side (the zero padding's edge)
    target = make_grid((44, 40, 48), (1.1, 1.1, 1.1), rotation_deg=(5.0, 0.0, -5.0), centre_ras=(2.0, -3.0, 1.0))
    probabilities = _blobs(source.shape, 5, seed)
    expected = _interpolated_everywhere(probabilities, source, target)
    interpolated = []
    sample_at = transforms.sample_at
    monkeypatch.setattr(transforms, "sample_at",
                        lambda values, points, **kw: interpolated.append(points.shape[2]) or sample_at(values, points, **kw))
    labels = preprocess.resample_probabilities(probabilities, source, target)
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) == 5  # every class reached (0 also outside the source)
    assert 0 < sum(interpolated) < 0.5 * labels.size  # most voxels took their class as it was


def test_a_class_boundary_on_the_edge_of_the_source_is_interpolated_with_zero_padding():
    source = make_grid((4, 4, 4), (2.0, 2.0, 2.0))
    target = make_grid((13, 13, 13), (0.9, 0.9, 0.9))
    probabilities = np.zeros((3, 4, 4, 4), np.float32)
    probabilities[1] = 0.6
    probabilities[2, :, :, 0] = 0.7  # one face of another class: every voxel there is on a boundary
    labels = preprocess.resample_probabilities(probabilities, source, target)
    np.testing.assert_array_equal(labels, _interpolated_everywhere(probabilities, source, target))
    assert set(np.unique(labels)) == {0, 1, 2}
