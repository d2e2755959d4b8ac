"""Per-target evaluation figures: Dice, HD95, aRVD per label and seed 004's apex/mid/base Dice.

Seed 004 (OASIS, PROMISE12) reports the Dice "in the apex and base areas of the prostate ...
determined by dividing the prostate into three approximately equally sized parts along the
axial direction (the first 1/3 as apex and the last 1/3 as base)". Here:

- The thirds are cut from the **truth's organ**: the union of its foreground labels (the whole
  gland for the prostate, the whole heart for MM-WHS), so every label of one target is scored
  in the same three slabs, as the paper scores the gland's zones.
- "Axial" is the patient's superior-inferior axis, the S coordinate of each voxel centre in
  RAS, computed from the grid's IJK -> RAS matrix: never assumed to be the K index (an image
  stored with S along I, or oblique, is cut correctly).
- The extent is from the lowest to the highest voxel of the organ along S, each widened by
  half a voxel's S-extent; apex is the inferior third, mid the middle one, base the superior
  one (the prostate's apex is inferior, its base superior; so is the LV's apex to its base).
  A voxel belongs to the slab its centre lies in.
- Both the prediction and the truth are restricted to the slab; a prediction outside the
  organ's S-extent counts in the whole-label Dice and HD95, not in the thirds.

The whole-organ row (label ``ALL``, the union of the foreground labels as one binary mask) is
what seed 004's "Whole" column is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from crossmodalmas.metrics import segmentation_report
from crossmodalmas.volume import LabelMap

ALL_LABELS = "all"  # the label column's value of the whole-organ (union of foreground) row
SLAB_NAMES = ("apex", "mid", "base")  # inferior, middle, superior third along S
_OUTSIDE = -1


@dataclass(frozen=True)
class LabelScores:
    """The figures of one label of one target.

    Attributes:
        label: the label value as text (``"205"``), or :data:`ALL_LABELS` for the organ.
        dice: Dice in [0, 1].
        hd95_mm: 95th-percentile symmetric Hausdorff distance in mm (``inf`` when the label is
            missing from the prediction).
        arvd: absolute relative volume difference (0 is perfect; ``nan`` if absent from truth).
        dice_thirds: Dice in the apex, mid and base slabs (``nan`` where a slab holds the
            label in neither map).
    """

    label: str
    dice: float
    hd95_mm: float
    arvd: float
    dice_thirds: tuple[float, float, float]


def superior_coordinate(shape, ijk_to_ras) -> np.ndarray:
    """The S coordinate (RAS mm) of every voxel centre of a grid.

    Args:
        shape: (K, J, I) of the grid.
        ijk_to_ras: (4, 4) IJK -> RAS matrix.

    Returns:
        float64 array of ``shape``.
    """
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    k, j, i = (np.arange(n, dtype=np.float64) for n in shape)
    return (matrix[2, 0] * i[None, None, :] + matrix[2, 1] * j[None, :, None]
            + matrix[2, 2] * k[:, None, None] + matrix[2, 3])


def axial_thirds(mask: np.ndarray, ijk_to_ras) -> np.ndarray:
    """Split a mask's superior-inferior extent into thirds.

    Args:
        mask: (K, J, I) boolean array (the truth's organ).
        ijk_to_ras: (4, 4) IJK -> RAS matrix of the mask's grid.

    Returns:
        int8 array of ``mask``'s shape: 0 apex (inferior third), 1 mid, 2 base (superior
        third), -1 outside the extent; all -1 for an empty mask.

    Raises:
        ValueError: ``mask`` is not 3-D or ``ijk_to_ras`` is not 4 x 4.
    """
    mask = np.asarray(mask, dtype=bool)
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    if mask.ndim != 3 or matrix.shape != (4, 4):
        raise ValueError(f"axial_thirds(): 'mask' must be 3-D (K, J, I) and 'ijk_to_ras' 4 x 4, "
                         f"got {mask.shape} and {matrix.shape}")
    slabs = np.full(mask.shape, _OUTSIDE, dtype=np.int8)
    if not mask.any():
        return slabs
    s = superior_coordinate(mask.shape, matrix)
    half_voxel = 0.5 * float(np.abs(matrix[2, :3]).sum())  # a voxel's half-extent along S
    low, high = float(s[mask].min()) - half_voxel, float(s[mask].max()) + half_voxel
    inside = (s >= low) & (s <= high)
    third = np.clip(np.floor((s - low) / ((high - low) / 3.0)), 0, 2).astype(np.int8)
    slabs[inside] = third[inside]
    return slabs


def _dice_masks(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


def thirds_dice(pred: np.ndarray, truth: np.ndarray, slabs: np.ndarray) -> tuple[float, float, float]:
    """Dice of two boolean masks within each of the three slabs of :func:`axial_thirds`.

    Returns:
        (apex, mid, base) Dice; ``nan`` for a slab where both masks are empty.
    """
    return tuple(_dice_masks(pred & (slabs == n), truth & (slabs == n)) for n in range(3))


def _check_pair(pred: LabelMap, truth: LabelMap) -> None:
    if pred.array.shape != truth.array.shape or not pred.grid.same_as(truth.grid):
        raise ValueError(f"evaluate_labels(): 'pred' {pred.array.shape} and 'truth' {truth.array.shape} "
                         "must be on the same grid (the target's)")


def evaluate_labels(pred: LabelMap, truth: LabelMap, labels: Optional[list[int]] = None) -> list[LabelScores]:
    """Every figure of one segmented target: one row per label, then the whole organ.

    Args:
        pred: the segmentation, on the truth's grid.
        truth: the reference labels.
        labels: label values to score; default every non-zero value of either map (a label
            only in the prediction scores Dice 0).

    Returns:
        :class:`LabelScores` per label (sorted), then one for :data:`ALL_LABELS` (the union of
        the foreground labels as one mask).

    Raises:
        ValueError: the maps are on different grids.
    """
    _check_pair(pred, truth)
    spacing = pred.grid.spacing_kji
    organ_truth, organ_pred = truth.array != 0, pred.array != 0
    slabs = axial_thirds(organ_truth, truth.ijk_to_ras)
    rows = []
    for label, figures in sorted(segmentation_report(pred.array, truth.array, spacing, labels).items()):
        thirds = thirds_dice(pred.array == label, truth.array == label, slabs)
        rows.append(LabelScores(str(label), figures["dice"], figures["hd95_mm"], figures["arvd"], thirds))
    organ = segmentation_report(organ_pred.astype(np.int32), organ_truth.astype(np.int32), spacing, [1])
    if 1 in organ:
        whole = organ[1]
        rows.append(LabelScores(ALL_LABELS, whole["dice"], whole["hd95_mm"], whole["arvd"],
                                thirds_dice(organ_pred, organ_truth, slabs)))
    return rows
