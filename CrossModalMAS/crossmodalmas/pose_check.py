"""Which of a partial pair's candidate poses the deformable step does best from.

The affine step places an atlas slab where its image matches the target best *rigidly*. Between
two subjects that is not where the deformable step does best: their organs differ in place and
size, and the rigid match of a 5-10 cm slab settles where those differences balance, 10-25 mm
along the slab from the pose of the anatomy. The deformable step reaches a few millimetres, not
that far. So each candidate pose (the affine step's choice and the same moved along the slab's
thin axis, :meth:`~crossmodalmas.affine.AffineAligner.candidates`) is registered deformably on
one shared grid, and the one whose *warped labels* explain the target's intensities best wins.

The score is ``N * MI`` (as the global search's, the G statistic of dependence) between the
warped label of each voxel the atlas covers (background inside its field of view a class of its
own) and the target's intensity in quantile bins: anatomy brought into register has each
structure over one kind of target tissue. The images' own match is no arbiter: measured on the
robustness benchmark's two-subject slabs, the MIND similarity after the deformable step was the
same to 0.003 from the affine choice as from the true pose (organ Dice 0.48 against 0.68),
while this score was 12 % higher at the true pose. The image match after a deformable step is
what the step maximised; whether its labels landed on coherent tissue is not.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from crossmodalmas.atlases import Atlas
from crossmodalmas.features import descriptor_support, mind_ssc, mind_ssc_each
from crossmodalmas.global_search import information
from crossmodalmas.instance_opt import RegistrationFields
from crossmodalmas.preprocess import label_box_in_target, resample, robust_normalise, working_grid
from crossmodalmas.transforms import warp_labels
from crossmodalmas.volume import Grid, Volume

SHIFTS_MM = (-14.0, -7.0, 7.0, 14.0)  # the alternatives along the slab's axis (see the module docstring)
TARGET_BINS = 16  # quantile bins of the target's intensities in the score
# An alternative replaces the affine step's choice only when it scores this much higher. Poses
# 7 mm apart score within a few per cent of each other, not always in the order of their Dice:
# on the robustness benchmark's slabs, the best alternative scored 3.4 % and 6.6 % higher where
# it was the better pose (organ Dice 0.48 -> 0.52, 0.38 -> 0.72), 0.9 % higher where it was the
# worse one (0.55 -> 0.40).
MARGIN = 1.03
_OUTSIDE = -1  # the label value given to voxels outside the atlas's field of view

# (target image, atlas images, target descriptors, atlas descriptors, support, grid) -> fields;
# the pipeline's deformable step, with its model and options bound.
Register = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Grid], RegistrationFields]


def label_information(classes: np.ndarray, target_bins: np.ndarray, outside: int = 0) -> float:
    """``N * MI`` (nats) between label classes and target intensity bins, over the voxels whose
    class is not ``outside``.

    Args:
        classes: non-negative integer class per voxel (any shape).
        target_bins: integer bin per voxel in ``[0, TARGET_BINS)``, the shape of ``classes``.
        outside: the class of voxels that do not count.

    Raises:
        ValueError: the two arrays differ in shape.
    """
    if classes.shape != target_bins.shape:
        raise ValueError(f"label_information(): 'classes' {classes.shape} and 'target_bins' "
                         f"{target_bins.shape} must have one shape")
    counted = classes != outside
    if not counted.any():
        return 0.0
    rows = int(classes.max()) + 1
    joint = np.bincount(classes[counted].astype(np.int64) * TARGET_BINS + target_bins[counted],
                        minlength=rows * TARGET_BINS)
    return information(joint.reshape(rows, TARGET_BINS).astype(np.float64))


def quantile_bins(image: np.ndarray) -> np.ndarray:
    """Each voxel's bin among ``TARGET_BINS`` equal-population bins of ``image`` (contrast-free)."""
    edges = np.quantile(image, np.linspace(0.0, 1.0, TARGET_BINS + 1)[1:-1])
    return np.digitize(image, edges).astype(np.int64)


def candidate_scores(target: Volume, atlas: Atlas, candidates: Sequence[sitk.Transform],
                     registration: tuple[Register, torch.device], margin_mm: float, spacing_mm: Optional[float],
                     max_voxels: int) -> list[float]:
    """Each candidate's :func:`label_information` after the deformable step, all registered on
    one working grid (the box of every candidate's labels plus ``margin_mm``, as the pipeline's
    region: ``spacing_mm``, ``max_voxels``) in one call of the ``registration``'s function, on
    its device.

    Returns:
        One score per candidate (0 for one whose labels miss the target).
    """
    boxes = [box for box in (label_box_in_target(atlas.labels, t) for t in candidates) if box is not None]
    if not boxes:
        return [0.0] * len(candidates)
    box = np.stack([np.min([b[0] for b in boxes], 0) - margin_mm, np.max([b[1] for b in boxes], 0) + margin_mm])
    try:
        grid = working_grid(target.grid, box, spacing_mm, max_voxels)
    except ValueError:  # the boxes lie outside the target: nothing to tell the candidates apart by
        return [0.0] * len(candidates)
    target_image = robust_normalise(resample(target.array, target.ijk_to_ras, grid))
    normalised = robust_normalise(atlas.image.array)
    images = np.stack([resample(normalised, atlas.image.ijk_to_ras, grid, t) for t in candidates])
    labels = np.stack([resample(atlas.labels.array, atlas.labels.ijk_to_ras, grid, t, labels=True, default=_OUTSIDE)
                       for t in candidates])
    support = torch.cat([descriptor_support(torch.from_numpy(one)[None, None]) for one in labels != _OUTSIDE])
    values, classes = np.unique(labels, return_inverse=True)  # label values -> classes 0, 1, ...
    classes = classes.reshape(labels.shape)
    register, device = registration
    target_t, atlases_t = torch.from_numpy(target_image)[None, None].to(device), torch.from_numpy(images)[:, None].to(device)
    fields = register(target_t, atlases_t, mind_ssc(target_t), mind_ssc_each(atlases_t), support.to(device), grid)
    with torch.no_grad():
        warped = warp_labels(torch.from_numpy(classes)[:, None], fields.forward.cpu(), len(values))[:, 0].numpy()
    bins = quantile_bins(target_image)
    outside = 0 if values[0] == _OUTSIDE else -1  # the outside's class (-1, none: every voxel counts)
    return [label_information(one, bins, outside) for one in warped]


def chosen_candidate(scores: Sequence[float]) -> int:
    """The index of the candidate to keep: the best-scoring alternative where it beats the first
    (the affine step's choice) by ``MARGIN``, else 0."""
    best = int(np.argmax(scores))
    return best if scores[best] > MARGIN * scores[0] else 0
