"""Per-atlas quality figures of a run (what a reviewer reads before trusting the result)."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

import torch

from crossmodalmas.fusion import Fused, disagreement
from crossmodalmas.instance_opt import RegistrationFields
from crossmodalmas.metrics import determinant_figures, inverse_consistency_mm
from crossmodalmas.transforms import jacobian_determinant
from crossmodalmas.result import AtlasQC


def descriptor_similarity(a: torch.Tensor, b: torch.Tensor, where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1 - mean absolute difference of MIND-SSC descriptors per item, in [0, 1] (``(N,)``);
    one item at a time (a difference of all N at once was the pipeline's peak memory).

    Args:
        a: ``(N, F, D, H, W)`` descriptors, e.g. of the atlases.
        b: ``(1, F, D, H, W)`` descriptors, e.g. of the target.
        where: optional ``(N, 1, D, H, W)`` bool, the voxels each item is judged on (its
            :func:`~crossmodalmas.features.descriptor_support`): an atlas covering half the
            region is then judged on its anatomy, not marked down for the half it does not
            show. An item with no voxel there is judged on all of them.

    Raises:
        ValueError: ``where`` is given and is not ``(N, 1, D, H, W)`` on ``a``'s grid.
    """
    if where is not None and tuple(where.shape) != (a.shape[0], 1, *a.shape[2:]):
        raise ValueError(f"descriptor_similarity(): 'where' must be {(a.shape[0], 1, *a.shape[2:])}, "
                         f"got {tuple(where.shape)}")
    out = []
    for i, item in enumerate(a):
        difference = (item[None] - b).abs().mean(dim=1)[0]  # mean over descriptor channels
        inside = None if where is None else where[i, 0]
        out.append(1.0 - (difference[inside].mean() if inside is not None and inside.any() else difference.mean()))
    return torch.stack(out)


def _weight_shares(weights: torch.Tensor, where: torch.Tensor) -> list[float]:
    """Each atlas's mean weight where the atlases disagree (``where``; everywhere, where they never do)."""
    if weights.stride()[-3:] == (0, 0, 0):  # one weight per atlas (MV, global LOA): no voxel to average
        return weights[:, 0, 0, 0].tolist()
    if where.numel() == 0:
        return [float(w.mean()) for w in weights]
    return weights.reshape(weights.shape[0], -1)[:, where].mean(dim=1).tolist()


def registration_qc(names: Sequence[str], fields: RegistrationFields, similarity_before: torch.Tensor,
                    warped_features: torch.Tensor, target_features: torch.Tensor,
                    coverage: Sequence[float], spacing_kji, support: Optional[torch.Tensor] = None) -> list[AtlasQC]:
    """The registration's quality figures of every atlas (the fusion's come from
    :func:`with_fusion_figures`).

    Args:
        names: atlas names, N of them.
        fields: forward and backward fields, ``(N, 3, D, H, W)`` in working-grid voxels.
        similarity_before: ``(N,)`` :func:`descriptor_similarity` of the atlases after affine
            alignment only (taken before the deformable step, so their descriptors can be freed).
        warped_features: ``(N, F, D, H, W)`` descriptors after the deformable step.
        target_features: ``(1, F, D, H, W)`` target descriptors.
        coverage: fraction of the region each atlas covers.
        spacing_kji: working-grid spacing in mm along (k, j, i).
        support: optional ``(N, 1, D, H, W)`` bool, where each atlas is judged (the voxels
            ``similarity_before`` was judged on, so that before and after compare alike).
    """
    before, after = similarity_before, descriptor_similarity(warped_features, target_features, support)
    out = []
    for i, name in enumerate(names):
        smoothness = determinant_figures(jacobian_determinant(fields.forward[i:i + 1].float()))
        out.append(AtlasQC(
            name=name,
            folding_percent=smoothness["folding_percent"],
            sd_log_jacobian=smoothness["sd_log_jacobian"],
            inverse_consistency_mm=inverse_consistency_mm(fields.forward[i:i + 1], fields.backward[i:i + 1],
                                                          spacing_kji),
            similarity_before=float(before[i]),
            similarity_after=float(after[i]),
            coverage=float(coverage[i]),
        ))
    return out


def _agreements(warped_classes: torch.Tensor, fused_labels: torch.Tensor, where: torch.Tensor) -> list[float]:
    """Foreground Dice of every atlas with the fused labels, all classes at once:
    ``2 |{A = F > 0}| / (|{A > 0}| + |{F > 0}|)``, counting only the voxels where the atlases
    disagree (``where``): elsewhere every atlas and the fusion hold the same class."""
    n = warped_classes.shape[0]
    flat, fused = warped_classes.reshape(n, -1), fused_labels.reshape(-1)
    common = float((flat[0] > 0).sum() - (flat[0, where] > 0).sum())  # foreground where all agree
    varying, fused_varying = flat[:, where], fused[where]
    fused_total = common + float((fused_varying > 0).sum())
    out = []
    for atlas in varying:
        overlap = common + float(((atlas == fused_varying) & (atlas > 0)).sum())
        total = common + float((atlas > 0).sum()) + fused_total
        out.append(2.0 * overlap / total if total else 1.0)
    return out


def with_fusion_figures(qc: Sequence[AtlasQC], warped_classes: torch.Tensor, fused: Fused) -> list[AtlasQC]:
    """``qc`` with each atlas's weight share and agreement with the fused labels filled in.

    Args:
        qc: the atlases' registration figures, in the order of ``warped_classes``.
        warped_classes: ``(N, D, H, W)`` warped class indices.
        fused: the fusion output.
    """
    where = fused.where if fused.where is not None else disagreement(warped_classes[:, None])
    shares = _weight_shares(fused.weights, where)
    agreements = _agreements(warped_classes, fused.labels, where)
    return [replace(item, weight_share=shares[i], agreement=agreements[i]) for i, item in enumerate(qc)]
