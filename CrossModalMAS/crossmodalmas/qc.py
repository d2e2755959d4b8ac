"""Per-atlas quality figures of a run (what a reviewer reads before trusting the result)."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from crossmodalmas.fusion import Fused
from crossmodalmas.instance_opt import RegistrationFields
from crossmodalmas.metrics import determinant_figures, inverse_consistency_mm
from crossmodalmas.transforms import jacobian_determinant
from crossmodalmas.result import AtlasQC


def descriptor_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - mean absolute difference of MIND-SSC descriptors per item, in [0, 1] (``(N,)``)."""
    return 1.0 - (a - b).abs().flatten(1).mean(1)


def multiclass_dice(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> float:
    """Dice over all foreground classes at once: 2 sum|A_c & B_c| / sum(|A_c| + |B_c|)."""
    overlap = total = 0.0
    for c in range(1, num_classes):
        in_a, in_b = a == c, b == c
        overlap += float((in_a & in_b).sum())
        total += float(in_a.sum() + in_b.sum())
    return 2.0 * overlap / total if total else 1.0


def _weight_shares(warped_classes: torch.Tensor, weights: torch.Tensor) -> list[float]:
    disagree = (warped_classes != warped_classes[:1]).any(0)
    region = disagree if bool(disagree.any()) else torch.ones_like(disagree)
    return [float(w[region].mean()) for w in weights]


def registration_qc(names: Sequence[str], fields: RegistrationFields, atlas_features: torch.Tensor,
                    warped_features: torch.Tensor, target_features: torch.Tensor,
                    coverage: Sequence[float], spacing_kji) -> list[AtlasQC]:
    """The registration's quality figures of every atlas (the fusion's come from
    :func:`with_fusion_figures`).

    Args:
        names: atlas names, N of them.
        fields: forward and backward fields, ``(N, 3, D, H, W)`` in working-grid voxels.
        atlas_features: ``(N, F, D, H, W)`` descriptors after affine alignment only.
        warped_features: ``(N, F, D, H, W)`` descriptors after the deformable step.
        target_features: ``(1, F, D, H, W)`` target descriptors.
        coverage: fraction of the region each atlas covers.
        spacing_kji: working-grid spacing in mm along (k, j, i).
    """
    before = descriptor_similarity(atlas_features, target_features)
    after = descriptor_similarity(warped_features, target_features)
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


def with_fusion_figures(qc: Sequence[AtlasQC], warped_classes: torch.Tensor, fused: Fused) -> list[AtlasQC]:
    """``qc`` with each atlas's weight share and agreement with the fused labels filled in.

    Args:
        qc: the atlases' registration figures, in the order of ``warped_classes``.
        warped_classes: ``(N, D, H, W)`` warped class indices.
        fused: the fusion output.
    """
    shares = _weight_shares(warped_classes, fused.weights)
    fused_labels = fused.labels
    num_classes = fused.probabilities.shape[0]
    return [replace(item, weight_share=shares[i],
                    agreement=multiclass_dice(warped_classes[i], fused_labels, num_classes))
            for i, item in enumerate(qc)]
