"""A correlation front end: a MIND-SSC cost volume and its soft arg-min displacement.

A U-Net that has to discover image matching from a label loss learns slowly: measured here,
hundreds of CPU steps left its fields at the identity. An explicit cost volume makes
matching a given (as in PDD-Net and ConvexAdam, Heinrich et al.; Siebert et al., MICCAI
2021): for every voxel and every shift ``s`` within ``radius``, the mean squared difference
of the target's descriptors and the atlas's descriptors at ``x + s``, box-smoothed so the
arg-min is regularised. Its soft arg-min is a displacement the network starts from and
corrects. MIND-SSC keeps it modality-independent. No trainable weights here but the
temperature, which the network owns.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def shifts(radius: int, device=None) -> torch.Tensor:
    """Every integer shift ``(k, j, i)`` with components in ``[-radius, radius]``: ``(S, 3)``."""
    values = range(-radius, radius + 1)
    return torch.tensor(list(itertools.product(values, values, values)), dtype=torch.float32, device=device)


def cost_volume(target: torch.Tensor, atlas: torch.Tensor, radius: int, smoothing: int = 1) -> torch.Tensor:
    """Descriptor distance for every shift of the atlas.

    Args:
        target: ``(N, C, D, H, W)`` target descriptors.
        atlas: ``(N, C, D, H, W)`` atlas descriptors on the same grid.
        radius: the largest shift, in voxels of this grid.
        smoothing: half-width of the box filter applied to each shift's cost map.

    Returns:
        ``(N, S, D, H, W)`` costs, shifts ordered as :func:`shifts`; ``cost[:, s](x)`` compares
        ``target(x)`` with ``atlas(x + shift_s)`` (replicate padding outside).

    Raises:
        ValueError: the shapes differ or are not 5-D.
    """
    if target.dim() != 5 or target.shape != atlas.shape:
        raise ValueError(f"cost_volume(): 'target' and 'atlas' must be the same (N, C, D, H, W), "
                         f"got {tuple(target.shape)} and {tuple(atlas.shape)}")
    d, h, w = target.shape[2:]
    padded = F.pad(atlas, (radius,) * 6, mode="replicate")
    costs = []
    for k, j, i in shifts(radius).long().tolist():
        moved = padded[:, :, radius + k:radius + k + d, radius + j:radius + j + h, radius + i:radius + i + w]
        costs.append((moved - target).square().mean(dim=1))
    cost = torch.stack(costs, dim=1)
    if smoothing > 0:
        size = 2 * smoothing + 1
        cost = F.avg_pool3d(F.pad(cost, (smoothing,) * 6, mode="replicate"), size, stride=1)
    return cost


def soft_argmin(cost: torch.Tensor, radius: int, temperature: torch.Tensor) -> torch.Tensor:
    """Expected shift under ``softmax(-cost / temperature)``: ``(N, 3, D, H, W)`` voxels (k, j, i).

    The costs are first divided by their per-voxel spread so one temperature suits any
    contrast and descriptor scale.
    """
    spread = cost.std(dim=1, keepdim=True).clamp(min=1e-6)
    weights = torch.softmax(-(cost - cost.mean(dim=1, keepdim=True)) / (spread * temperature), dim=1)
    return torch.einsum("nsdhw,sc->ncdhw", weights, shifts(radius, cost.device))
