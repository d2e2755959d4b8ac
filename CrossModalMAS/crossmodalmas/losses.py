"""Registration training losses, pure tensor functions then thin modules: seed 000 (consistent
registration network, eq. 1-5: symmetric label Dice of the forward field ``U`` (atlas -> target)
and backward field ``V`` (target -> atlas), smoothness, invertibility) and seed 004 (OASIS, eq. 1-4).

Fields follow :mod:`crossmodalmas.transforms`: ``(N, 3, D, H, W)`` in voxels of their grid, channels
(k, j, i), pull-back ``warp(m, u)(x) = m(x + u(x))``. Label maps are float one-hot ``(N, C, D, H, W)``,
channel 0 background, warped by trilinear interpolation of the channels (differentiable in the
fields). MONAI (training-time only, imported lazily: ~2 s) provides the soft Dice.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from crossmodalmas.transforms import warp


def _check_same(fn: str, names, a: torch.Tensor, b: torch.Tensor, grid_only: bool = False) -> None:
    differ = a.shape[:1] + a.shape[2:] != b.shape[:1] + b.shape[2:] if grid_only else a.shape != b.shape
    if differ:
        what = "N and (D, H, W)" if grid_only else "shape"
        raise ValueError(f"{fn}: '{names[0]}' and '{names[1]}' must have the same {what}, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_5d(fn: str, name: str, tensor: torch.Tensor, channels: int | None = None) -> None:
    if tensor.dim() != 5 or tensor.shape[1] != (channels or tensor.shape[1]):
        raise ValueError(f"{fn}: '{name}' must be (N, {channels or 'C'}, D, H, W), got {tuple(tensor.shape)}")


def _check_pair(fn: str, atlas: torch.Tensor, target: torch.Tensor, forward: torch.Tensor,
                backward: torch.Tensor) -> None:
    _check_5d(fn, "atlas_onehot", atlas)
    _check_same(fn, ("atlas_onehot", "target_onehot"), atlas, target)
    _check_5d(fn, "forward", forward, channels=3)
    _check_same(fn, ("forward", "atlas_onehot"), forward, atlas, grid_only=True)
    _check_same(fn, ("forward", "backward"), forward, backward)


def _check_weights(fn: str, **weights: float) -> None:
    for name, value in weights.items():
        if not value >= 0:
            raise ValueError(f"{fn}: '{name}' must be >= 0, got {value}")


@functools.lru_cache(maxsize=8)
def _monai_dice(include_background: bool, smooth: float) -> nn.Module:
    from monai.losses import DiceLoss  # lazy: ~2 s, and only training needs it
    return DiceLoss(include_background=include_background, smooth_nr=smooth, smooth_dr=smooth, reduction="mean")


def soft_dice_loss(prediction: torch.Tensor, target: torch.Tensor, include_background: bool = False,
                   smooth: float = 1e-5) -> torch.Tensor:
    """``1 -`` soft Dice, averaged over batch items and channels: the papers' ``Dice(., .)``.

    ``Dice_c = (2 sum p t + smooth) / (sum p + sum t + smooth)`` per item and channel: exactly
    ``monai.losses.DiceLoss(smooth_nr=smooth, smooth_dr=smooth)``, so we use it. A channel empty in
    both maps scores Dice 1 (loss 0).

    Args:
        prediction, target: ``(N, C, D, H, W)`` probabilities, e.g. warped and plain one-hot labels.
        include_background: keep channel 0; if False, ``C`` must be at least 2.
        smooth: added to numerator and denominator (avoids 0/0).

    Returns:
        Scalar loss in ``[0, 1]``: 0 when the maps agree, 1 when they are disjoint.

    Raises:
        ValueError: shapes differ or are not 5-D, or no foreground channel.
    """
    fn = "soft_dice_loss()"
    _check_5d(fn, "prediction", prediction)
    _check_same(fn, ("prediction", "target"), prediction, target)
    if not include_background and prediction.shape[1] < 2:
        raise ValueError(f"{fn}: 'prediction' needs at least 2 channels (background first) when "
                         f"include_background=False, got {tuple(prediction.shape)}")
    return _monai_dice(bool(include_background), float(smooth))(prediction, target)


def gradient_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """``Psi(u)`` of seed 000 eq. 3 (and OASIS ``Lsmooth``, eq. 4): mean squared field gradient.

    Seed 000 does not define ``Psi`` (OASIS: ``sum ||grad phi||^2``); we use VoxelMorph's diffusion
    regulariser (``vxm.losses.Grad('l2')``), forward differences averaged over batch, components,
    voxels, then the 3 axes: ``Psi(u) = 1/3 sum_d mean((u(x + e_d) - u(x))^2)``, which is
    ``sum(A^2) / 9`` for ``u_c(x) = sum_d A_cd x_d``. Unit: (voxel / voxel)^2 on the field's own
    grid, no spacing. Not ``monai.losses.DiffusionLoss``: its central differences
    ``(u[i+1] - u[i-1]) / 2`` do not see a checkerboard (Nyquist) field at all.

    Args:
        flow: ``(N, 3, D, H, W)`` displacement in voxels, every spatial size >= 2.

    Returns:
        Scalar, 0 for any constant translation.

    Raises:
        ValueError: ``flow`` is not ``(N, 3, D, H, W)`` or a spatial size is below 2.
    """
    fn = "gradient_smoothness()"
    _check_5d(fn, "flow", flow, channels=3)
    if min(flow.shape[2:]) < 2:
        raise ValueError(f"{fn}: 'flow' needs every spatial size >= 2, got {tuple(flow.shape)}")
    return sum(flow.diff(dim=dim).square().mean() for dim in (2, 3, 4)) / 3.0


def symmetric_dice_loss(atlas_onehot: torch.Tensor, target_onehot: torch.Tensor,
                        forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Data terms of seed 000 eq. 3: ``Dice(La, L~t) + Dice(Lt, L~a)``, background left out.

    ``L~a = warp(La, U)`` lies in target space (eq. 1), ``L~t = warp(Lt, V)`` in atlas space (eq. 2);
    both interpolate the one-hot channels trilinearly (border padding).

    Args:
        atlas_onehot, target_onehot: ``(N, C, D, H, W)`` one-hot ``La``, ``Lt`` (grids of equal size).
        forward: ``U``, ``(N, 3, D, H, W)`` in voxels: ``L~a(x) = La(x + U(x))``, x in target space.
        backward: ``V``, ``(N, 3, D, H, W)`` in voxels: ``L~t(x) = Lt(x + V(x))``, x in atlas space.

    Returns:
        Scalar in ``[0, 2]``.

    Raises:
        ValueError: shapes do not match.
    """
    _check_pair("symmetric_dice_loss()", atlas_onehot, target_onehot, forward, backward)
    return (soft_dice_loss(warp(target_onehot, backward), atlas_onehot)
            + soft_dice_loss(warp(atlas_onehot, forward), target_onehot))


def invertibility_loss(atlas_onehot: torch.Tensor, target_onehot: torch.Tensor, forward: torch.Tensor,
                       backward: torch.Tensor, *, warped_atlas: torch.Tensor | None = None,
                       warped_target: torch.Tensor | None = None) -> torch.Tensor:
    """Seed 000 eq. 4: ``Dice(L'a, La) + Dice(L't, Lt)``, background left out.

    ``L'a = warp(L~a, V)`` brings the warped atlas labels back to atlas space, ``L't = warp(L~t, U)``
    the warped target labels to target space: 0 where ``U`` and ``V`` invert each other.

    Args:
        atlas_onehot, target_onehot: ``(N, C, D, H, W)`` one-hot ``La`` and ``Lt``.
        forward, backward: ``U``, ``V``: ``(N, 3, D, H, W)`` in voxels, as in :func:`symmetric_dice_loss`.
        warped_atlas, warped_target: ``L~a``, ``L~t`` if already computed (saves two warps).

    Returns:
        Scalar in ``[0, 2]``.

    Raises:
        ValueError: shapes do not match.
    """
    fn = "invertibility_loss()"
    _check_pair(fn, atlas_onehot, target_onehot, forward, backward)
    if warped_atlas is None:
        warped_atlas = warp(atlas_onehot, forward)
    if warped_target is None:
        warped_target = warp(target_onehot, backward)
    _check_same(fn, ("warped_atlas", "atlas_onehot"), warped_atlas, atlas_onehot)
    _check_same(fn, ("warped_target", "target_onehot"), warped_target, target_onehot)
    return (soft_dice_loss(warp(warped_atlas, backward), atlas_onehot)  # L'a vs La
            + soft_dice_loss(warp(warped_target, forward), target_onehot))  # L't vs Lt


def consistent_registration_loss(atlas_onehot: torch.Tensor, target_onehot: torch.Tensor,
                                 forward: torch.Tensor, backward: torch.Tensor, lambda_smooth: float = 0.3,
                                 lambda_inverse: float = 0.2) -> dict[str, torch.Tensor]:
    """Seed 000 eq. 5: ``Loss_reg = Loss_Dice + lambda2 * Loss_inv`` with eq. 3's smoothness.

    ``total = symmetric Dice + lambda_smooth * (Psi(U) + Psi(V)) + lambda_inverse * Loss_inv``.
    Defaults are the paper's ``lambda1 = 0.3``, ``lambda2 = 0.2``; ``lambda_inverse = 0`` is the
    ablation without the invertibility loss (its term is then still reported, without gradient).

    Args:
        atlas_onehot, target_onehot: ``(N, C, D, H, W)`` one-hot labels, channel 0 background.
        forward, backward: ``U``, ``V``: ``(N, 3, D, H, W)`` displacements in voxels (seed 000 eq. 1-2).
        lambda_smooth, lambda_inverse: ``lambda1`` of ``Psi(U) + Psi(V)``, ``lambda2`` of ``Loss_inv``; >= 0.

    Returns:
        ``{"total", "dice", "smoothness", "invertibility"}``: scalars, terms unweighted.

    Raises:
        ValueError: shapes do not match or a weight is negative.
    """
    fn = "consistent_registration_loss()"
    _check_weights(fn, lambda_smooth=lambda_smooth, lambda_inverse=lambda_inverse)
    _check_pair(fn, atlas_onehot, target_onehot, forward, backward)
    warped_atlas, warped_target = warp(atlas_onehot, forward), warp(target_onehot, backward)
    dice = soft_dice_loss(warped_target, atlas_onehot) + soft_dice_loss(warped_atlas, target_onehot)
    smoothness = gradient_smoothness(forward) + gradient_smoothness(backward)
    with torch.set_grad_enabled(torch.is_grad_enabled() and lambda_inverse > 0):
        inverse = invertibility_loss(atlas_onehot, target_onehot, forward, backward,
                                     warped_atlas=warped_atlas, warped_target=warped_target)
    total = dice + lambda_smooth * smoothness + lambda_inverse * inverse
    return {"total": total, "dice": dice, "smoothness": smoothness, "invertibility": inverse}


def global_ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """OASIS eq. 2 as a loss: ``-NCC(a, b)`` over each whole image, averaged over the batch.

    ``NCC = sum a'b' / sqrt(sum a'^2 sum b'^2)`` with ``a' = a - mean a`` per batch item over all
    channels and voxels. Not ``monai.losses.LocalNormalizedCrossCorrelationLoss``: it is windowed
    and squares the correlation, so it cannot tell ``a`` from ``-a``.

    Args:
        a, b: ``(N, ...)`` images of the same shape, e.g. the warped atlas and the target.
        eps: floor of the variance product; a constant image gives NCC 0, never NaN.

    Returns:
        Scalar in ``[-1, 1]``: -1 when ``b`` is an increasing affine function of ``a``.

    Raises:
        ValueError: shapes differ or have no batch dimension.
    """
    fn = "global_ncc()"
    if a.dim() < 2:
        raise ValueError(f"{fn}: 'a' must be (N, ...) with at least 2 dims, got {tuple(a.shape)}")
    _check_same(fn, ("a", "b"), a, b)
    a, b = (t.flatten(1) - t.flatten(1).mean(dim=1, keepdim=True) for t in (a, b))
    cross = (a * b).mean(dim=1)
    variance = (a.square().mean(dim=1) * b.square().mean(dim=1)).clamp(min=eps)
    return -(cross / variance.sqrt()).mean()


def label_constrained_loss(warped_atlas_image: torch.Tensor, target_image: torch.Tensor,
                           warped_atlas_onehot: torch.Tensor, target_onehot: torch.Tensor, flow: torch.Tensor,
                           alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.01) -> dict[str, torch.Tensor]:
    """OASIS eq. 1: ``alpha * Lsim + beta * Ldice + gamma * Lsmooth`` (defaults: the paper's).

    ``Lsim``: :func:`global_ncc` (eq. 2). ``Ldice``: ``1 - Dice`` (:func:`soft_dice_loss`, no
    background) where eq. 3 writes ``-Dice``: same gradient, but non-negative. ``Lsmooth``:
    :func:`gradient_smoothness`, eq. 4's sum over voxels taken as a mean as VoxelMorph's code does.

    Args:
        warped_atlas_image, target_image: ``(N, C, D, H, W)``; the atlas image warped by ``flow``.
        warped_atlas_onehot, target_onehot: ``(N, K, D, H, W)``; atlas one-hot labels warped by ``flow``.
        flow: ``(N, 3, D, H, W)`` displacement in voxels of the target grid.
        alpha, beta, gamma: non-negative weights.

    Returns:
        ``{"total", "similarity", "dice", "smoothness"}``: unweighted scalar terms and total.

    Raises:
        ValueError: shapes do not match or a weight is negative.
    """
    fn = "label_constrained_loss()"
    _check_weights(fn, alpha=alpha, beta=beta, gamma=gamma)
    _check_5d(fn, "warped_atlas_image", warped_atlas_image)
    _check_same(fn, ("warped_atlas_image", "target_image"), warped_atlas_image, target_image)
    _check_5d(fn, "warped_atlas_onehot", warped_atlas_onehot)
    _check_same(fn, ("warped_atlas_onehot", "target_onehot"), warped_atlas_onehot, target_onehot)
    _check_same(fn, ("warped_atlas_image", "warped_atlas_onehot"), warped_atlas_image, warped_atlas_onehot, True)
    _check_5d(fn, "flow", flow, channels=3)
    _check_same(fn, ("flow", "warped_atlas_onehot"), flow, warped_atlas_onehot, True)
    similarity = global_ncc(warped_atlas_image, target_image)
    dice = soft_dice_loss(warped_atlas_onehot, target_onehot)
    smoothness = gradient_smoothness(flow)
    total = alpha * similarity + beta * dice + gamma * smoothness
    return {"total": total, "similarity": similarity, "dice": dice, "smoothness": smoothness}


class ConsistentRegistrationLoss(nn.Module):
    """Module form of :func:`consistent_registration_loss` (seed 000 eq. 5); holds the weights."""

    def __init__(self, lambda_smooth: float = 0.3, lambda_inverse: float = 0.2) -> None:
        super().__init__()
        _check_weights("ConsistentRegistrationLoss()", lambda_smooth=lambda_smooth, lambda_inverse=lambda_inverse)
        self.lambda_smooth, self.lambda_inverse = float(lambda_smooth), float(lambda_inverse)

    def forward(self, atlas_onehot, target_onehot, forward, backward) -> dict:
        return consistent_registration_loss(atlas_onehot, target_onehot, forward, backward,
                                            self.lambda_smooth, self.lambda_inverse)

    def extra_repr(self) -> str:
        return f"lambda_smooth={self.lambda_smooth}, lambda_inverse={self.lambda_inverse}"


class LabelConstrainedLoss(nn.Module):
    """Module form of :func:`label_constrained_loss` (OASIS eq. 1); holds the weights."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.01) -> None:
        super().__init__()
        _check_weights("LabelConstrainedLoss()", alpha=alpha, beta=beta, gamma=gamma)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    def forward(self, warped_atlas_image, target_image, warped_atlas_onehot, target_onehot, flow) -> dict:
        return label_constrained_loss(warped_atlas_image, target_image, warped_atlas_onehot, target_onehot,
                                      flow, self.alpha, self.beta, self.gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}"
