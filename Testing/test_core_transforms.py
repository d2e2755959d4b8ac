"""Analytic facts of crossmodalmas.transforms: identity warps, translations, exp(0) = 0, inverses."""

import math

import pytest
import torch

from crossmodalmas.transforms import (compose, identity_grid, integrate_velocity, inverse_consistency_error,
                                      jacobian_determinant, one_hot, resize_flow, sample_at, warp, warp_labels)


def _image(shape=(12, 14, 16), seed=0):
    return torch.rand((1, 1) + shape, generator=torch.Generator().manual_seed(seed))


def _translation(shift_kji, shape=(12, 14, 16), batch=1):
    return torch.tensor(shift_kji, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(batch, 3, *shape).clone()


def test_zero_flow_is_identity():
    image = _image()
    assert torch.allclose(warp(image, torch.zeros(1, 3, 12, 14, 16)), image, atol=1e-6)


def test_integer_translation_shifts_each_axis_in_kji_order():
    image = _image()
    for axis, shift in ((0, (2, 0, 0)), (1, (0, 2, 0)), (2, (0, 0, 2))):
        warped = warp(image, _translation(shift))
        # warped(x) = image(x + t): away from the far border it is the image shifted by t.
        expected = image.narrow(axis + 2, 2, image.shape[axis + 2] - 2)
        got = warped.narrow(axis + 2, 0, image.shape[axis + 2] - 2)
        assert torch.allclose(got, expected, atol=1e-5)


def test_half_voxel_translation_interpolates_linearly():
    image = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 1, 8).expand(1, 1, 4, 4, 8).contiguous()
    warped = warp(image, _translation((0, 0, 0.5), shape=(4, 4, 8)))
    assert torch.allclose(warped[0, 0, 0, 0, :7], torch.arange(7) + 0.5, atol=1e-5)


def test_sample_at_voxel_centres_returns_values():
    image = _image((5, 6, 7))
    assert torch.allclose(sample_at(image, identity_grid((5, 6, 7))), image, atol=1e-6)


def test_warp_labels_never_averages_values():
    labels = torch.zeros(1, 1, 10, 10, 10, dtype=torch.long)
    labels[..., :5] = 1
    labels[..., 5:] = 3
    for mode in ("onehot", "nearest"):
        warped = warp_labels(labels, _translation((0.3, 0.4, 0.5), shape=(10, 10, 10)), 4, mode=mode)
        assert set(warped.unique().tolist()) <= {1, 3}


def test_exp_of_zero_is_zero_and_constant_velocity_is_translation():
    assert torch.count_nonzero(integrate_velocity(torch.zeros(1, 3, 8, 8, 8))) == 0
    flow = integrate_velocity(_translation((1.5, -1.0, 0.5), shape=(8, 8, 8)), steps=6)
    assert torch.allclose(flow, _translation((1.5, -1.0, 0.5), shape=(8, 8, 8)), atol=1e-4)


def test_exp_of_minus_v_inverts_exp_of_v():
    generator = torch.Generator().manual_seed(1)
    velocity = torch.nn.functional.interpolate(torch.randn(1, 3, 4, 4, 4, generator=generator), size=(24, 24, 24),
                                               mode="trilinear", align_corners=True)
    forward, backward = integrate_velocity(velocity), integrate_velocity(-velocity)
    error = inverse_consistency_error(forward, backward, (1.0, 1.0, 1.0))[:, 4:-4, 4:-4, 4:-4]
    assert error.mean() < 0.05


def test_compose_of_translations_adds_them():
    a, b = _translation((1, 0, 0), (8, 8, 8)), _translation((0, 2, 0), (8, 8, 8))
    assert torch.allclose(compose(a, b), _translation((1, 2, 0), (8, 8, 8)), atol=1e-5)


def test_jacobian_of_scaling_is_its_determinant():
    coords = identity_grid((10, 10, 10))
    flow = 0.1 * coords  # x -> 1.1 x along every axis
    assert torch.allclose(jacobian_determinant(flow), torch.full((1, 10, 10, 10), 1.1 ** 3), atol=1e-4)


def test_resize_flow_rescales_voxel_units():
    flow = _translation((2.0, 2.0, 2.0), shape=(5, 5, 5))
    assert torch.allclose(resize_flow(flow, (9, 9, 9)), _translation((4.0, 4.0, 4.0), shape=(9, 9, 9)), atol=1e-5)


def test_inverse_consistency_is_in_mm():
    forward = _translation((1.0, 0.0, 0.0), (8, 8, 8))
    error = inverse_consistency_error(forward, forward, (2.5, 1.0, 1.0))[:, :-2]
    assert math.isclose(float(error.mean()), 5.0, rel_tol=1e-5)


def test_one_hot_shape():
    assert one_hot(torch.tensor([[[[[0, 2]]]]]), 3).shape == (1, 3, 1, 1, 2)


def test_error_messages_name_function_argument_and_shapes():
    with pytest.raises(ValueError, match=r"warp\(\): 'flow' must be \(N, 3, D, H, W\), got \(1, 2, 8, 8\)"):
        warp(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"warp\(\): 'image' \(1, 1, 4, 4, 4\) does not match 'flow'"):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match=r"integrate_velocity\(\): 'steps' must be >= 0, got -1"):
        integrate_velocity(torch.zeros(1, 3, 4, 4, 4), steps=-1)
    with pytest.raises(ValueError, match=r"warp_labels\(\): 'mode' must be 'onehot' or 'nearest', got 'linear'"):
        warp_labels(torch.zeros(1, 1, 4, 4, 4, dtype=torch.long), torch.zeros(1, 3, 4, 4, 4), 2, mode="linear")
    with pytest.raises(ValueError, match=r"one_hot\(\): 'labels' must be \(N, 1, D, H, W\)"):
        one_hot(torch.zeros(4, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"sample_at\(\): 'coords' must be \(N, 3, d, h, w\)"):
        sample_at(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
