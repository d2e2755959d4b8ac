"""Analytic facts of crossmodalmas.losses: Dice of equal/disjoint maps, zero and inverse fields,
smoothness of translations and linear ramps, NCC of affine copies, gradients, weights, errors."""

import re

import pytest
import torch

from crossmodalmas.losses import (ConsistentRegistrationLoss, LabelConstrainedLoss, consistent_registration_loss,
                                  global_ncc, gradient_smoothness, invertibility_loss, label_constrained_loss,
                                  soft_dice_loss, symmetric_dice_loss)
from crossmodalmas.transforms import identity_grid, one_hot, warp

SHAPE = (12, 12, 12)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_onehot(seed=0, classes=3, batch=1, shape=SHAPE):
    labels = torch.randint(0, classes, (batch, 1) + shape, generator=_gen(seed))
    return one_hot(labels, classes)


def _blobs(batch=1, shape=(16, 16, 16)):
    """Two boxes well inside the grid (margin >= 4 voxels), classes 1 and 2 on background 0."""
    labels = torch.zeros((batch, 1) + shape, dtype=torch.long)
    labels[:, :, 4:9, 5:11, 4:12] = 1
    labels[:, :, 8:12, 4:8, 6:10] = 2
    return one_hot(labels, 3)


def _translation(shift_kji, batch=1, shape=(16, 16, 16)):
    return torch.tensor(shift_kji, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(batch, 3, *shape).clone()


def _small_field(seed, batch=1, shape=SHAPE, scale=0.7):
    return scale * torch.randn((batch, 3) + shape, generator=_gen(seed))


# --- soft Dice -------------------------------------------------------------------------------------

def test_dice_of_identical_maps_is_zero():
    onehot = _random_onehot(batch=2)
    assert soft_dice_loss(onehot, onehot).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(onehot, onehot, include_background=True).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_of_disjoint_maps_is_one():
    labels = torch.randint(0, 3, (2, 1) + SHAPE, generator=_gen(1))
    prediction, target = one_hot(labels, 3), one_hot((labels + 1) % 3, 3)  # every channel disjoint
    assert soft_dice_loss(prediction, target).item() == pytest.approx(1.0, abs=1e-4)
    assert soft_dice_loss(prediction, target, include_background=True).item() == pytest.approx(1.0, abs=1e-4)


def test_dice_of_half_overlap_is_analytic():
    prediction, target = torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4)
    prediction[:, 1, :2] = 1  # 32 voxels
    target[:, 1, 1:3] = 1  # 32 voxels, 16 shared
    assert soft_dice_loss(prediction, target, smooth=0.0).item() == pytest.approx(1 - 2 * 16 / 64, abs=1e-6)


# --- smoothness ------------------------------------------------------------------------------------

def test_constant_translation_has_zero_smoothness():
    assert gradient_smoothness(_translation((1.5, -2.0, 0.25), batch=2)).item() == 0.0


def test_smoothness_of_linear_ramp_is_sum_of_squares_over_nine():
    matrix = torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.0, 0.05], [0.0, 0.4, -0.1]])
    flow = torch.einsum("cd,ndkji->nckji", matrix, identity_grid((6, 7, 8)))
    expected = matrix.square().sum().item() / 9.0
    assert gradient_smoothness(flow).item() == pytest.approx(expected, rel=1e-5)


def test_smoothness_sees_a_checkerboard():
    k, j, i = identity_grid((6, 6, 6))[0]
    sign = (-1.0) ** (k + j + i)
    flow = sign.expand(1, 3, 6, 6, 6)
    assert gradient_smoothness(flow).item() == pytest.approx(4.0)  # every difference is +-2


# --- seed 000: symmetric Dice, invertibility, total ------------------------------------------------

def test_zero_fields_give_plain_dice_twice_and_no_inverse_loss():
    atlas, target = _random_onehot(seed=2), _random_onehot(seed=3)
    zero = torch.zeros((1, 3) + SHAPE)
    plain = soft_dice_loss(atlas, target)
    assert symmetric_dice_loss(atlas, target, zero, zero).item() == pytest.approx(2 * plain.item(), rel=1e-6)
    assert invertibility_loss(atlas, target, zero, zero).item() == pytest.approx(0.0, abs=1e-6)


def test_inverse_integer_translations_have_zero_inverse_loss():
    atlas, target = _blobs(batch=2), _blobs(batch=2).roll(shifts=(1, -2), dims=(2, 4))
    forward, backward = _translation((2, -1, 3), batch=2), _translation((-2, 1, -3), batch=2)
    assert invertibility_loss(atlas, target, forward, backward).item() == pytest.approx(0.0, abs=1e-6)
    mismatched = invertibility_loss(atlas, target, forward, forward)
    assert mismatched.item() > 0.1


def test_precomputed_warps_give_the_same_inverse_loss():
    atlas, target = _random_onehot(seed=4), _random_onehot(seed=5)
    forward, backward = _small_field(6), _small_field(7)
    direct = invertibility_loss(atlas, target, forward, backward)
    reused = invertibility_loss(atlas, target, forward, backward, warped_atlas=warp(atlas, forward),
                                warped_target=warp(target, backward))
    assert torch.allclose(direct, reused)


def test_consistent_loss_terms_and_weighted_total():
    atlas, target = _random_onehot(seed=8, batch=2), _random_onehot(seed=9, batch=2)
    forward, backward = _small_field(10, batch=2), _small_field(11, batch=2)
    terms = consistent_registration_loss(atlas, target, forward, backward, lambda_smooth=0.5, lambda_inverse=0.25)
    assert set(terms) == {"total", "dice", "smoothness", "invertibility"}
    assert all(value.dim() == 0 for value in terms.values())
    assert torch.allclose(terms["dice"], symmetric_dice_loss(atlas, target, forward, backward))
    assert torch.allclose(terms["smoothness"], gradient_smoothness(forward) + gradient_smoothness(backward))
    assert torch.allclose(terms["invertibility"], invertibility_loss(atlas, target, forward, backward))
    expected = terms["dice"] + 0.5 * terms["smoothness"] + 0.25 * terms["invertibility"]
    assert torch.allclose(terms["total"], expected)


def test_gradients_reach_both_fields():
    atlas, target = _random_onehot(seed=12), _random_onehot(seed=13)
    forward = _small_field(14).requires_grad_()
    backward = _small_field(15).requires_grad_()
    consistent_registration_loss(atlas, target, forward, backward)["total"].backward()
    for field in (forward, backward):
        assert field.grad is not None and torch.isfinite(field.grad).all() and field.grad.abs().sum() > 0


def test_ablation_without_inverse_loss():
    atlas, target = _random_onehot(seed=16), _random_onehot(seed=17)
    forward = _small_field(18).requires_grad_()
    backward = _small_field(19).requires_grad_()
    terms = consistent_registration_loss(atlas, target, forward, backward, lambda_inverse=0.0)
    assert torch.allclose(terms["total"], terms["dice"] + 0.3 * terms["smoothness"])
    assert terms["invertibility"].item() > 0 and not terms["invertibility"].requires_grad
    terms["total"].backward()
    assert forward.grad.abs().sum() > 0


def test_consistent_module_holds_weights():
    module = ConsistentRegistrationLoss(lambda_smooth=0.1, lambda_inverse=0.0)
    assert "lambda_smooth=0.1, lambda_inverse=0.0" in repr(module)
    atlas, target = _random_onehot(seed=20), _random_onehot(seed=21)
    forward, backward = _small_field(22), _small_field(23)
    expected = consistent_registration_loss(atlas, target, forward, backward, 0.1, 0.0)
    assert torch.allclose(module(atlas, target, forward, backward)["total"], expected["total"])


# --- OASIS: global NCC, label-constrained total ---------------------------------------------------

def test_global_ncc_of_affine_copies():
    a = torch.rand((2, 1) + SHAPE, generator=_gen(24))
    assert global_ncc(a, a).item() == pytest.approx(-1.0, abs=1e-5)
    assert global_ncc(a, -a).item() == pytest.approx(1.0, abs=1e-5)
    assert global_ncc(a, 2 * a + 3).item() == pytest.approx(-1.0, abs=1e-5)


def test_global_ncc_is_per_batch_item():
    a = torch.rand((2, 1) + SHAPE, generator=_gen(25))
    b = torch.cat([a[:1], -a[1:]])  # item 0 correlates, item 1 anti-correlates
    assert global_ncc(a, b).item() == pytest.approx(0.0, abs=1e-5)


def test_global_ncc_of_constant_image_is_zero_with_finite_gradient():
    a = torch.full((1, 1) + SHAPE, 0.7, requires_grad=True)
    b = torch.rand((1, 1) + SHAPE, generator=_gen(26))
    loss = global_ncc(a, b)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(a.grad).all()


def test_label_constrained_terms_and_weighted_total():
    image = torch.rand((2, 1) + SHAPE, generator=_gen(27))
    target_image = torch.rand((2, 1) + SHAPE, generator=_gen(28))
    atlas, target = _random_onehot(seed=29, batch=2), _random_onehot(seed=30, batch=2)
    flow = _small_field(31, batch=2).requires_grad_()
    warped_image, warped_atlas = warp(image, flow), warp(atlas, flow)
    terms = label_constrained_loss(warped_image, target_image, warped_atlas, target, flow, 0.5, 2.0, 0.1)
    assert set(terms) == {"total", "similarity", "dice", "smoothness"}
    assert torch.allclose(terms["similarity"], global_ncc(warped_image, target_image))
    assert torch.allclose(terms["dice"], soft_dice_loss(warped_atlas, target))
    assert torch.allclose(terms["smoothness"], gradient_smoothness(flow))
    expected = 0.5 * terms["similarity"] + 2.0 * terms["dice"] + 0.1 * terms["smoothness"]
    assert torch.allclose(terms["total"], expected)
    terms["total"].backward()
    assert torch.isfinite(flow.grad).all() and flow.grad.abs().sum() > 0


def test_label_constrained_module_holds_weights():
    module = LabelConstrainedLoss()
    assert "alpha=1.0, beta=1.0, gamma=0.01" in repr(module)
    image = torch.rand((1, 1) + SHAPE, generator=_gen(32))
    onehot = _random_onehot(seed=33)
    terms = module(image, image, onehot, onehot, torch.zeros((1, 3) + SHAPE))
    assert terms["total"].item() == pytest.approx(-1.0, abs=1e-5)  # perfect match: -NCC = -1, Dice 0, smooth 0


# --- errors ----------------------------------------------------------------------------------------

def _match(text):
    return re.escape(text)


def test_soft_dice_errors():
    with pytest.raises(ValueError, match=_match("soft_dice_loss(): 'prediction' and 'target' must have the same "
                                                "shape, got (1, 3, 8, 8, 8) and (1, 2, 8, 8, 8)")):
        soft_dice_loss(torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match=_match("soft_dice_loss(): 'prediction' must be (N, C, D, H, W), "
                                                "got (3, 8, 8, 8)")):
        soft_dice_loss(torch.zeros(3, 8, 8, 8), torch.zeros(3, 8, 8, 8))
    with pytest.raises(ValueError, match=_match("soft_dice_loss(): 'prediction' needs at least 2 channels "
                                                "(background first) when include_background=False, "
                                                "got (1, 1, 8, 8, 8)")):
        soft_dice_loss(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8))


def test_smoothness_errors():
    with pytest.raises(ValueError, match=_match("gradient_smoothness(): 'flow' must be (N, 3, D, H, W), "
                                                "got (1, 2, 8, 8, 8)")):
        gradient_smoothness(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match=_match("gradient_smoothness(): 'flow' needs every spatial size >= 2, "
                                                "got (1, 3, 8, 1, 8)")):
        gradient_smoothness(torch.zeros(1, 3, 8, 1, 8))


def test_registration_shape_errors():
    labels, field = torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 3, 8, 8, 8)
    with pytest.raises(ValueError, match=_match("symmetric_dice_loss(): 'atlas_onehot' and 'target_onehot' must "
                                                "have the same shape, got (1, 3, 8, 8, 8) and (1, 3, 8, 8, 6)")):
        symmetric_dice_loss(labels, torch.zeros(1, 3, 8, 8, 6), field, field)
    with pytest.raises(ValueError, match=_match("invertibility_loss(): 'forward' must be (N, 3, D, H, W), "
                                                "got (1, 2, 8, 8, 8)")):
        invertibility_loss(labels, labels, torch.zeros(1, 2, 8, 8, 8), field)
    with pytest.raises(ValueError, match=_match("consistent_registration_loss(): 'forward' and 'atlas_onehot' "
                                                "must have the same N and (D, H, W), got (2, 3, 8, 8, 8) and "
                                                "(1, 3, 8, 8, 8)")):
        consistent_registration_loss(labels, labels, torch.zeros(2, 3, 8, 8, 8), torch.zeros(2, 3, 8, 8, 8))
    with pytest.raises(ValueError, match=_match("symmetric_dice_loss(): 'forward' and 'backward' must have the "
                                                "same shape, got (1, 3, 8, 8, 8) and (1, 3, 8, 8, 4)")):
        symmetric_dice_loss(labels, labels, field, torch.zeros(1, 3, 8, 8, 4))
    with pytest.raises(ValueError, match=_match("invertibility_loss(): 'warped_atlas' and 'atlas_onehot' must "
                                                "have the same shape, got (1, 2, 8, 8, 8) and (1, 3, 8, 8, 8)")):
        invertibility_loss(labels, labels, field, field, warped_atlas=torch.zeros(1, 2, 8, 8, 8))


def test_weight_errors():
    labels, field = torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 3, 8, 8, 8)
    with pytest.raises(ValueError, match=_match("consistent_registration_loss(): 'lambda_inverse' must be >= 0, "
                                                "got -0.2")):
        consistent_registration_loss(labels, labels, field, field, lambda_inverse=-0.2)
    with pytest.raises(ValueError, match=_match("ConsistentRegistrationLoss(): 'lambda_smooth' must be >= 0, "
                                                "got nan")):
        ConsistentRegistrationLoss(lambda_smooth=float("nan"))
    with pytest.raises(ValueError, match=_match("LabelConstrainedLoss(): 'gamma' must be >= 0, got -1")):
        LabelConstrainedLoss(gamma=-1)


def test_similarity_errors():
    with pytest.raises(ValueError, match=_match("global_ncc(): 'a' and 'b' must have the same shape, "
                                                "got (2, 1, 8, 8, 8) and (1, 1, 8, 8, 8)")):
        global_ncc(torch.zeros(2, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=_match("global_ncc(): 'a' must be (N, ...) with at least 2 dims, "
                                                "got (8,)")):
        global_ncc(torch.zeros(8), torch.zeros(8))
    image, labels = torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 3, 8, 8, 8)
    with pytest.raises(ValueError, match=_match("label_constrained_loss(): 'warped_atlas_image' and 'target_image' "
                                                "must have the same shape, got (1, 1, 8, 8, 8) and (1, 2, 8, 8, 8)")):
        label_constrained_loss(image, torch.zeros(1, 2, 8, 8, 8), labels, labels, labels)
    with pytest.raises(ValueError, match=_match("label_constrained_loss(): 'warped_atlas_image' and "
                                                "'warped_atlas_onehot' must have the same N and (D, H, W), "
                                                "got (1, 1, 6, 8, 8) and (1, 3, 8, 8, 8)")):
        label_constrained_loss(torch.zeros(1, 1, 6, 8, 8), torch.zeros(1, 1, 6, 8, 8), labels, labels, labels)
    with pytest.raises(ValueError, match=_match("label_constrained_loss(): 'flow' and 'warped_atlas_onehot' must "
                                                "have the same N and (D, H, W), got (1, 3, 8, 8, 6) and "
                                                "(1, 3, 8, 8, 8)")):
        label_constrained_loss(image, image, labels, labels, torch.zeros(1, 3, 8, 8, 6))
