"""crossmodalmas.preprocess.robust_normalise: analytic values, and slab by slab without full-size temporaries."""

import tracemalloc

import numpy as np
import pytest

from crossmodalmas import preprocess
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
