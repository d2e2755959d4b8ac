"""Evaluation metrics: overlap, surface distance, volume, and the regularity of displacement fields.

Label arrays are numpy-compatible integer arrays in KJI order holding label *values* (e.g.
MM-WHS codes 205, 500, ...), not class indices; 0 is background. Distances are in mm, using
the grid's spacing along (k, j, i). Displacement fields follow :mod:`crossmodalmas.transforms`:
torch ``(N, 3, D, H, W)`` in voxels, channels (k, j, i).
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
from scipy import ndimage

from . import transforms


def _pair(fn: str, pred, truth, ndim: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"{fn}: 'pred' {pred.shape} and 'truth' {truth.shape} must have the same shape")
    if ndim is not None and pred.ndim != ndim:
        raise ValueError(f"{fn}: 'pred' and 'truth' must be {ndim}-D (K, J, I) arrays, got {pred.shape}")
    return pred, truth


def _spacing(fn: str, spacing_kji) -> np.ndarray:
    spacing = np.asarray(spacing_kji, dtype=float)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(
            f"{fn}: 'spacing_kji' must be 3 positive finite numbers (mm along k, j, i), got {spacing_kji!r}"
        )
    return spacing


def _foreground_values(pred: np.ndarray, truth: np.ndarray) -> list[int]:
    values = np.union1d(np.unique(pred), np.unique(truth))
    return [int(v) for v in values if v != 0]


def _dice_one(pred: np.ndarray, truth: np.ndarray, label: int) -> Optional[float]:
    a, b = pred == label, truth == label
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def dice(pred, truth, labels: Optional[Iterable[int]] = None) -> dict[int, float]:
    """Dice overlap ``2 |P ∩ T| / (|P| + |T|)`` per label value.

    Args:
        pred: integer label array (any shape).
        truth: integer label array of the same shape.
        labels: label values to score; default: every non-zero value in either array.

    Returns:
        ``{label: dice}``; a label absent from both arrays is left out, one absent from only
        one array scores 0.0.

    Raises:
        ValueError: the shapes differ.
    """
    pred, truth = _pair("dice()", pred, truth)
    values = _foreground_values(pred, truth) if labels is None else [int(v) for v in labels]
    scores = {label: _dice_one(pred, truth, label) for label in values}
    return {label: score for label, score in scores.items() if score is not None}


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask with a 6-neighbour outside it (or outside the grid)."""
    structure = ndimage.generate_binary_structure(3, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _directed_distances(source: np.ndarray, target: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from each surface voxel of ``source`` to the nearest surface voxel of ``target``."""
    return ndimage.distance_transform_edt(~target, sampling=spacing)[source]


def hausdorff95(pred, truth, label: int, spacing_kji) -> float:
    """95th-percentile symmetric Hausdorff distance between the surfaces of one label, in mm.

    Surfaces are the boundary voxels (6-connectivity) of each mask; distances come from
    ``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing_kji``. The symmetric value
    is the larger of the two directed 95th percentiles (as MONAI's ``compute_hausdorff_distance``
    with ``percentile=95``).

    Args:
        pred: 3-D integer label array (K, J, I).
        truth: 3-D integer label array of the same shape.
        label: the label value to compare.
        spacing_kji: voxel spacing in mm along (k, j, i).

    Returns:
        Distance in mm; 0.0 when the label is absent from both, ``inf`` when absent from one.

    Raises:
        ValueError: shapes differ, arrays are not 3-D, or the spacing is not 3 positive numbers.
    """
    pred, truth = _pair("hausdorff95()", pred, truth, ndim=3)
    spacing = _spacing("hausdorff95()", spacing_kji)
    a, b = pred == label, truth == label
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    surface_a, surface_b = _surface(a), _surface(b)
    forward = np.percentile(_directed_distances(surface_a, surface_b, spacing), 95)
    backward = np.percentile(_directed_distances(surface_b, surface_a, spacing), 95)
    return float(max(forward, backward))


def abs_relative_volume_difference(pred, truth, label: int) -> float:
    """Absolute relative volume difference ``|V_pred - V_truth| / V_truth`` of one label.

    Spacing cancels, so voxel counts are used.

    Args:
        pred: integer label array.
        truth: integer label array of the same shape.
        label: the label value.

    Returns:
        The ratio (0 is perfect), ``nan`` when the label is absent from ``truth``.

    Raises:
        ValueError: the shapes differ.
    """
    pred, truth = _pair("abs_relative_volume_difference()", pred, truth)
    volume_truth = int((truth == label).sum())
    if volume_truth == 0:
        return float("nan")
    return abs(int((pred == label).sum()) - volume_truth) / volume_truth


def _check_flow(fn: str, name: str, flow) -> None:
    if not isinstance(flow, torch.Tensor):
        raise TypeError(f"{fn}: '{name}' must be a torch.Tensor, got {type(flow).__name__}")
    if flow.dim() != 5 or flow.shape[1] != 3 or min(flow.shape[2:]) < 2:
        raise ValueError(
            f"{fn}: '{name}' must be (N, 3, D, H, W) in voxels with D, H, W >= 2, got {tuple(flow.shape)}"
        )


def determinant_figures(determinant: torch.Tensor) -> dict[str, float]:
    """Smoothness figures of a Jacobian-determinant map (any shape), computed once.

    Returns:
        ``{"folding_percent": % of values <= 0, "sd_log_jacobian": Learn2Reg's SDlogJ, the
        std of log(clip(J + 3, 1e-9, 1e9))}``. The ``+ 3`` and the clip are Learn2Reg's, so
        folded voxels stay finite; SDlogJ is reported beside the folding so figures compare
        with published ones (smaller is smoother).
    """
    determinant = determinant.double()
    return {"folding_percent": float((determinant <= 0).double().mean()) * 100.0,
            "sd_log_jacobian": float(torch.log((determinant + 3).clamp(1e-9, 1e9)).std())}


def folding_percent(flow: torch.Tensor) -> float:
    """Percentage of voxels where the map ``x -> x + flow(x)`` folds (Jacobian determinant <= 0).

    Uses :func:`crossmodalmas.transforms.jacobian_determinant` (central differences, one-sided
    at the border). For a batch, the percentage is over all voxels of all fields, which equals
    the mean of the per-field percentages (same grid).

    Args:
        flow: ``(N, 3, D, H, W)`` displacement in voxels, channels (k, j, i).

    Returns:
        Percentage in ``[0, 100]``.

    Raises:
        TypeError: ``flow`` is not a tensor.
        ValueError: ``flow`` is not ``(N, 3, D, H, W)`` with every spatial size >= 2.
    """
    _check_flow("folding_percent()", "flow", flow)
    return determinant_figures(transforms.jacobian_determinant(flow.float()))["folding_percent"]


def sd_log_jacobian(flow: torch.Tensor) -> float:
    """Learn2Reg's SDlogJ of the map ``x -> x + flow(x)`` (see :func:`determinant_figures`).

    Args:
        flow: ``(N, 3, D, H, W)`` displacement in voxels, channels (k, j, i).

    Raises:
        TypeError: ``flow`` is not a tensor.
        ValueError: ``flow`` is not ``(N, 3, D, H, W)`` with every spatial size >= 2.
    """
    _check_flow("sd_log_jacobian()", "flow", flow)
    return determinant_figures(transforms.jacobian_determinant(flow.float()))["sd_log_jacobian"]


def inverse_consistency_mm(forward: torch.Tensor, backward: torch.Tensor, spacing_kji) -> float:
    """Mean inverse-consistency error ``|U(x) + V(x + U(x))|`` in mm (seed 000's invertibility).

    Args:
        forward: ``(N, 3, D, H, W)`` displacement ``U`` in voxels.
        backward: displacement ``V`` in voxels, same shape, meant to invert ``forward``.
        spacing_kji: voxel spacing in mm along (k, j, i).

    Returns:
        The mean over voxels and batch of :func:`crossmodalmas.transforms.inverse_consistency_error`.

    Raises:
        TypeError: a field is not a tensor.
        ValueError: bad shapes or spacing.
    """
    fn = "inverse_consistency_mm()"
    _check_flow(fn, "forward", forward)
    _check_flow(fn, "backward", backward)
    if forward.shape != backward.shape:
        raise ValueError(
            f"{fn}: 'forward' {tuple(forward.shape)} and 'backward' {tuple(backward.shape)} must have the same shape"
        )
    spacing = _spacing(fn, spacing_kji).tolist()
    return float(transforms.inverse_consistency_error(forward.float(), backward.float(), spacing).mean())


def segmentation_report(pred, truth, spacing_kji,
                        labels: Optional[Iterable[int]] = None) -> dict[int, dict[str, float]]:
    """Dice, HD95 (mm) and aRVD per label value.

    Args:
        pred: 3-D integer label array (K, J, I).
        truth: 3-D integer label array of the same shape.
        spacing_kji: voxel spacing in mm along (k, j, i).
        labels: label values to score; default: every non-zero value in either array.

    Returns:
        ``{label: {"dice": ..., "hd95_mm": ..., "arvd": ...}}``; labels absent from both arrays
        are left out (see :func:`dice`, :func:`hausdorff95`, :func:`abs_relative_volume_difference`).

    Raises:
        ValueError: shapes differ, arrays are not 3-D, or the spacing is not 3 positive numbers.
    """
    pred, truth = _pair("segmentation_report()", pred, truth, ndim=3)
    _spacing("segmentation_report()", spacing_kji)
    overlaps = dice(pred, truth, labels)
    return {
        label: {
            "dice": score,
            "hd95_mm": hausdorff95(pred, truth, label, spacing_kji),
            "arvd": abs_relative_volume_difference(pred, truth, label),
        }
        for label, score in overlaps.items()
    }
