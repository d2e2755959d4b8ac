"""Spatial transforms as pure torch functions: warp, compose, integrate, Jacobian.

Conventions for the whole package (one choice each, made here):

* A **displacement field** is a tensor ``(N, 3, D, H, W)`` in **voxels of the grid it lives
  on**, channels in array-axis order ``(k, j, i)`` = ``(D, H, W)``. It is a *pull-back* map:
  ``warp(moving, u)(x) = moving(x + u(x))``. Multiply a channel by the grid's spacing along
  that axis to get millimetres (:func:`flow_to_mm`).
* ``ALIGN_CORNERS = True``: voxel index 0 and ``size - 1`` are the centres of the first and
  last voxels, which is what the IJK -> RAS matrices of :mod:`crossmodalmas.volume` mean.
* ``torch.nn.functional.grid_sample`` wants normalised coordinates in ``(x, y, z)`` =
  ``(W, H, D)`` order in the last dimension; :func:`_to_sampling_grid` is the single place
  that flips (k, j, i) to (x, y, z) and normalises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ALIGN_CORNERS = True
CLASS_CHUNK = 16  # classes whose one-hot indicators :func:`warp_labels` warps at a time


def _check_flow(name: str, flow: torch.Tensor) -> None:
    if flow.dim() != 5 or flow.shape[1] != 3:
        raise ValueError(f"{name}: 'flow' must be (N, 3, D, H, W), got {tuple(flow.shape)}")


def _check_volume(name: str, arg: str, tensor: torch.Tensor, flow: torch.Tensor) -> None:
    if tensor.dim() != 5:
        raise ValueError(f"{name}: '{arg}' must be (N, C, D, H, W), got {tuple(tensor.shape)}")
    if tensor.shape[2:] != flow.shape[2:] or tensor.shape[0] not in (1, flow.shape[0]):
        raise ValueError(
            f"{name}: '{arg}' {tuple(tensor.shape)} does not match 'flow' {tuple(flow.shape)} "
            "(same D, H, W; batch 1 or the flow's)"
        )


def identity_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of every voxel, ``(1, 3, D, H, W)``, channels (k, j, i)."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def _to_sampling_grid(coords: torch.Tensor, source_shape) -> torch.Tensor:
    """Voxel coordinates ``(N, 3, d, h, w)`` (k, j, i) of a source grid of ``source_shape`` (D, H, W)
    -> grid_sample's ``(N, d, h, w, 3)`` in (x, y, z) = (i, j, k) order, normalised to [-1, 1]."""
    sizes = torch.tensor(tuple(source_shape), device=coords.device, dtype=coords.dtype)
    scale = 2.0 / (sizes - 1).clamp(min=1)
    normalised = coords * scale.view(1, 3, 1, 1, 1) - 1.0
    return normalised.flip(1).permute(0, 2, 3, 4, 1)


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "border") -> torch.Tensor:
    """Resample ``image`` at ``x + flow(x)`` (trilinear by default).

    Args:
        image: ``(N or 1, C, D, H, W)`` values on the same grid as ``flow``.
        flow: ``(N, 3, D, H, W)`` displacement in voxels, channels (k, j, i).
        mode: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``.
        padding_mode: what lies outside the image: ``"border"``, ``"zeros"`` or ``"reflection"``.

    Returns:
        ``(N, C, D, H, W)`` warped image.

    Raises:
        ValueError: shapes do not match.
    """
    _check_flow("warp()", flow)
    _check_volume("warp()", "image", image, flow)
    if image.shape[0] == 1 and flow.shape[0] > 1:
        image = image.expand(flow.shape[0], *image.shape[1:])
    coords = identity_grid(flow.shape[2:], flow.device, flow.dtype) + flow
    return sample_at(image, coords, mode=mode, padding_mode=padding_mode)


def sample_at(image: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear",
              padding_mode: str = "border") -> torch.Tensor:
    """Sample ``image`` ``(N, C, D, H, W)`` at voxel coordinates ``coords`` ``(N, 3, d, h, w)``.

    ``coords`` are in voxels of ``image``'s grid, channels (k, j, i); the output is
    ``(N, C, d, h, w)``. Used by :func:`warp` and to move values between grids.
    """
    if coords.dim() != 5 or coords.shape[1] != 3:
        raise ValueError(f"sample_at(): 'coords' must be (N, 3, d, h, w), got {tuple(coords.shape)}")
    grid = _to_sampling_grid(coords.to(image.dtype if image.is_floating_point() else coords.dtype),
                             image.shape[2:])
    return F.grid_sample(image.to(grid.dtype), grid, mode=mode, padding_mode=padding_mode,
                         align_corners=ALIGN_CORNERS)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer class indices ``(N, 1, D, H, W)`` in ``[0, num_classes)`` -> float ``(N, C, D, H, W)``."""
    if labels.dim() != 5 or labels.shape[1] != 1:
        raise ValueError(f"one_hot(): 'labels' must be (N, 1, D, H, W), got {tuple(labels.shape)}")
    return F.one_hot(labels[:, 0].long(), num_classes).permute(0, 4, 1, 2, 3).float()


def warp_labels(labels: torch.Tensor, flow: torch.Tensor, num_classes: int,
                mode: str = "onehot") -> torch.Tensor:
    """Warp a map of class indices without ever averaging label values.

    Args:
        labels: ``(N or 1, 1, D, H, W)`` integer class indices in ``[0, num_classes)``.
        flow: ``(N, 3, D, H, W)`` displacement in voxels, channels (k, j, i).
        num_classes: number of classes (background included).
        mode: ``"onehot"`` interpolates each class's indicator linearly and takes the argmax
            (smooth boundaries; the first class wins a tie); ``"nearest"`` takes the nearest
            voxel's class.

    Returns:
        ``(N, 1, D, H, W)`` int64 class indices.
    """
    if mode == "nearest":
        return warp(labels.float(), flow, mode="nearest").round().long()
    if mode != "onehot":
        raise ValueError(f"warp_labels(): 'mode' must be 'onehot' or 'nearest', got {mode!r}")
    # The indicators go through the warp CLASS_CHUNK classes at a time, so a parcellation with a
    # thousand labels needs N x CLASS_CHUNK maps at once, not N x 1000 (the same result).
    best_value, best_class = None, None
    for start in range(0, num_classes, CLASS_CHUNK):
        classes = torch.arange(start, min(start + CLASS_CHUNK, num_classes), device=labels.device)
        indicators = (labels.long() == classes.view(1, -1, 1, 1, 1)).float()
        value, index = warp(indicators, flow).max(dim=1, keepdim=True)
        if best_value is None:
            best_value, best_class = value, index + start
        else:
            better = value > best_value  # strictly: an earlier class keeps a tie, as argmax does
            best_value = torch.where(better, value, best_value)
            best_class = torch.where(better, index + start, best_class)
    return best_class


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Displacement of the pull-back map ``x -> second_map(first_map(x))``.

    With ``first_map(x) = x + first(x)``: ``warp(warp(m, second), first) == warp(m, compose(first, second))``,
    i.e. the result is ``first(x) + second(x + first(x))``. Both in voxels, (N, 3, D, H, W).
    """
    _check_flow("compose()", first)
    _check_flow("compose()", second)
    return first + warp(second, first, padding_mode="border")


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: the displacement of ``exp(velocity)``.

    Args:
        velocity: ``(N, 3, D, H, W)`` stationary velocity field in voxels.
        steps: number of squarings; the field is first scaled by ``2 ** -steps``.

    Returns:
        ``(N, 3, D, H, W)`` displacement in voxels; ``integrate_velocity(-v)`` is its inverse.
    """
    _check_flow("integrate_velocity()", velocity)
    if steps < 0:
        raise ValueError(f"integrate_velocity(): 'steps' must be >= 0, got {steps}")
    flow = velocity / (2 ** steps)
    for _ in range(steps):
        flow = compose(flow, flow)
    return flow


def resize_flow(flow: torch.Tensor, shape) -> torch.Tensor:
    """Resample a displacement field to another grid of the same extent, rescaling its voxel units."""
    _check_flow("resize_flow()", flow)
    old = torch.tensor(flow.shape[2:], dtype=flow.dtype, device=flow.device)
    new = torch.tensor(tuple(shape), dtype=flow.dtype, device=flow.device)
    ratio = (new - 1).clamp(min=1) / (old - 1).clamp(min=1)
    resized = F.interpolate(flow, size=tuple(shape), mode="trilinear", align_corners=ALIGN_CORNERS)
    return resized * ratio.view(1, 3, 1, 1, 1)


def jacobian_determinant(flow: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + flow(x)`` by central differences.

    Unitless and the same whether computed in voxels or mm. Args: ``flow`` ``(N, 3, D, H, W)``
    in voxels. Returns: ``(N, D, H, W)``; values <= 0 mark folding.
    """
    _check_flow("jacobian_determinant()", flow)
    gradients = [torch.gradient(flow[:, c], dim=(1, 2, 3)) for c in range(3)]
    jac = torch.stack([torch.stack(g, dim=-1) for g in gradients], dim=-2)  # (N, D, H, W, 3, 3)
    jac = jac + torch.eye(3, dtype=flow.dtype, device=flow.device)
    return torch.linalg.det(jac)


def flow_to_mm(flow: torch.Tensor, spacing_kji) -> torch.Tensor:
    """Displacement in voxels -> mm, given the grid's spacing along (k, j, i)."""
    _check_flow("flow_to_mm()", flow)
    spacing = torch.as_tensor(spacing_kji, dtype=flow.dtype, device=flow.device).view(1, 3, 1, 1, 1)
    return flow * spacing


def inverse_consistency_error(forward: torch.Tensor, backward: torch.Tensor, spacing_kji) -> torch.Tensor:
    """Per-voxel ``|forward(x) + backward(x + forward(x))|`` in mm, ``(N, D, H, W)``.

    Both fields in voxels on the same grid; zero where ``backward`` inverts ``forward``.
    """
    return flow_to_mm(compose(forward, backward), spacing_kji).norm(dim=1)
