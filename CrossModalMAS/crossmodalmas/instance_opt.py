"""Deformable registration that needs no trained model: instance optimisation on MIND-SSC.

For every atlas-target pair a stationary velocity field is optimised with Adam so that the
atlas's MIND-SSC descriptors, warped by ``exp(v)``, match the target's (mean squared
difference), with a diffusion regulariser on ``v``. It follows the instance-optimisation
stage of ConvexAdam (Siebert, Hansen & Heinrich, MICCAI 2021) with two choices of our own:

* the velocity lives on a grid ``field_stride`` times coarser than the working grid and is
  integrated by scaling and squaring, so the forward map is smooth and invertible by
  construction (the backward field is ``exp(-v)``) and folding stays near zero;
* coarse to fine: the first level matches descriptors pooled by 2 (a wider capture range),
  the last level the full-resolution descriptors, the velocity carried over between levels.

All atlases are optimised at once as one batch; their losses are independent, so the sum
of losses gives each its own gradient. ``cancel()`` is polled inside the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from crossmodalmas.errors import CancelledError
from crossmodalmas.transforms import integrate_velocity, resize_flow, warp

_ADAM_EPS = 1e-4


@dataclass
class InstanceOptConfig:
    """Hyper-parameters of :func:`register`.

    Attributes:
        levels: descriptor pooling factor of each level, coarse to fine.
        iterations: Adam iterations per level.
        field_stride: how much coarser than the descriptors the velocity grid is.
        learning_rate: Adam step, in voxels of the velocity grid.
        regularisation: weight of the diffusion term on the velocity (per-voxel mean of the
            squared finite differences, in velocity-grid voxels).
        integration_steps: scaling-and-squaring steps.
    """

    levels: tuple[int, ...] = (4, 2)
    iterations: int = 60
    field_stride: int = 2
    learning_rate: float = 0.2
    regularisation: float = 0.01
    integration_steps: int = 6


@dataclass
class RegistrationFields:
    """Forward and backward displacement fields on the working grid, in its voxels.

    Attributes:
        forward: ``(N, 3, D, H, W)`` U: ``warp(atlas, forward)`` lies on the target.
        backward: ``(N, 3, D, H, W)`` V: ``warp(target, backward)`` lies on each atlas.
    """

    forward: torch.Tensor
    backward: torch.Tensor


def diffusion_energy(field: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a ``(N, 3, D, H, W)`` field, summed over the 3 axes, per item ``(N,)``."""
    terms = [field.diff(dim=d).pow(2).flatten(1).mean(1) for d in (2, 3, 4)]
    return sum(terms)


def _pool(features: torch.Tensor, factor: int) -> torch.Tensor:
    return features if factor == 1 else F.avg_pool3d(features, factor, factor, ceil_mode=True)


def _velocity_shape(shape, stride: int) -> tuple[int, ...]:
    return tuple(max(2, -(-s // stride)) for s in shape)


def _displacement(velocity: torch.Tensor, shape, steps: int) -> torch.Tensor:
    return resize_flow(integrate_velocity(velocity, steps), shape)


def _mismatch(warped: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean squared descriptor difference per atlas ``(N,)``, weighted by ``weights`` where given."""
    squared = (warped - target).pow(2)
    if weights is None:
        return squared.flatten(1).mean(1)
    per_voxel = squared.mean(1, keepdim=True) * weights
    return per_voxel.flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1e-6)


def _optimise_level(velocity, target, atlases, config, tick, cancel, weights=None):
    velocity = velocity.detach().requires_grad_(True)
    # Adam's step ignores the gradient's scale, so round-off gradients (an atlas already equal
    # to the target) would still move the field by a full step. Summing the loss over the
    # velocity grid makes real gradients O(1e-3..1), and ``eps`` then damps round-off ones.
    optimiser = torch.optim.Adam([velocity], lr=config.learning_rate, eps=_ADAM_EPS)
    # Adam jitters about the optimum by about its step: decay the step linearly to a tenth.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda i: 1.0 - 0.9 * i / max(config.iterations - 1, 1))
    scale = float(velocity[0, 0].numel())
    for _ in range(config.iterations):
        if cancel is not None and cancel():
            raise CancelledError("registration cancelled")
        optimiser.zero_grad(set_to_none=True)
        flow = _displacement(velocity, target.shape[2:], config.integration_steps)
        similarity = _mismatch(warp(atlases, flow), target, weights)
        loss = scale * (similarity + config.regularisation * diffusion_energy(velocity)).sum()
        loss.backward()
        optimiser.step()
        schedule.step()
        tick()
    return velocity.detach()


def register(target_features: torch.Tensor, atlas_features: torch.Tensor,
             config: Optional[InstanceOptConfig] = None,
             initial_velocity: Optional[torch.Tensor] = None,
             progress: Optional[Callable[[float], None]] = None,
             cancel: Optional[Callable[[], bool]] = None,
             support: Optional[torch.Tensor] = None) -> RegistrationFields:
    """Register every atlas to the target by optimising a velocity field per pair.

    Args:
        target_features: ``(1, F, D, H, W)`` descriptors of the target (e.g. MIND-SSC).
        atlas_features: ``(N, F, D, H, W)`` descriptors of the affinely aligned atlases on
            the same working grid.
        config: hyper-parameters; defaults to :class:`InstanceOptConfig`.
        initial_velocity: optional ``(N, 3, d, h, w)`` starting velocity in voxels of its own
            grid (e.g. a network's prediction); zero otherwise.
        progress: called with the fraction done in [0, 1].
        cancel: polled every iteration; returning True raises :class:`CancelledError`.
        support: optional ``(N, 1, D, H, W)`` bool, where each atlas's descriptors describe its
            anatomy (:func:`~crossmodalmas.features.descriptor_support` of its field of view):
            the mismatch is averaged there only. The region is fixed on the working grid, so
            no field can lower the loss by shrinking it; a field that pulls the atlas's empty
            outside into it is penalised as it should be. None: everywhere.

    Returns:
        :class:`RegistrationFields` in voxels of the working grid.

    Raises:
        ValueError: shapes do not match.
        CancelledError: ``cancel()`` returned True.
    """
    config = config or InstanceOptConfig()
    if target_features.dim() != 5 or target_features.shape[0] != 1:
        raise ValueError(f"register(): 'target_features' must be (1, F, D, H, W), got {tuple(target_features.shape)}")
    if atlas_features.dim() != 5 or atlas_features.shape[1:] != target_features.shape[1:]:
        raise ValueError(
            f"register(): 'atlas_features' must be (N, {', '.join(map(str, target_features.shape[1:]))}), "
            f"got {tuple(atlas_features.shape)}"
        )
    if support is not None and tuple(support.shape) != (atlas_features.shape[0], 1, *atlas_features.shape[2:]):
        raise ValueError(
            f"register(): 'support' must be ({atlas_features.shape[0]}, 1, "
            f"{', '.join(map(str, atlas_features.shape[2:]))}), got {tuple(support.shape)}"
        )
    shape = target_features.shape[2:]
    batch = atlas_features.shape[0]
    velocity_shape = _velocity_shape(shape, config.field_stride)
    if initial_velocity is None:
        velocity = target_features.new_zeros((batch, 3, *velocity_shape))
    else:
        velocity = resize_flow(initial_velocity.to(target_features), velocity_shape)
    total = len(config.levels) * config.iterations
    done = [0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0] / max(total, 1))

    weights_full = None if support is None else support.to(target_features)
    for factor in config.levels:
        target, atlases = _pool(target_features, factor), _pool(atlas_features, factor)
        weights = None if weights_full is None else _pool(weights_full, factor)
        level_shape = _velocity_shape(target.shape[2:], config.field_stride)
        velocity = resize_flow(velocity, level_shape)
        velocity = _optimise_level(velocity, target, atlases, config, tick, cancel, weights)
    velocity = resize_flow(velocity, velocity_shape)
    with torch.no_grad():
        forward = _displacement(velocity, shape, config.integration_steps)
        backward = _displacement(-velocity, shape, config.integration_steps)
    return RegistrationFields(forward=forward, backward=backward)
