"""What a segmentation run returns: the labels on the target's grid plus what a reviewer needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from crossmodalmas.options import FusionMethod
from crossmodalmas.volume import Grid, LabelMap, Volume


@dataclass
class AtlasQC:
    """Per-atlas quality figures (all on the working grid).

    Attributes:
        name: the atlas's name.
        weight_share: the atlas's mean fusion weight over the voxels where atlases disagree
            (or over the region when they all agree), in [0, 1].
        agreement: Dice between the atlas's warped labels and the fused result (foreground).
        folding_percent: % of voxels where the forward field's Jacobian determinant is <= 0.
        sd_log_jacobian: Learn2Reg's SDlogJ of the forward field (smaller is smoother).
        inverse_consistency_mm: mean ``|U(x) + V(x + U(x))|`` in mm.
        similarity_before: MIND-SSC similarity to the target after affine only, in [0, 1], over
            the atlas's own anatomy (its field of view less the descriptors' reach; all of the
            region where it covers less than that).
        similarity_after: the same, on the same voxels, after the deformable step.
        coverage: fraction of the working region the affinely aligned atlas image covers.
        selection_score: the atlas selection's score (normalised mutual information with the
            target after affine alignment, :mod:`crossmodalmas.selection`), in [1, 2].
    """

    name: str
    folding_percent: float
    sd_log_jacobian: float
    inverse_consistency_mm: float
    similarity_before: float
    similarity_after: float
    coverage: float
    selection_score: float = float("nan")
    weight_share: float = float("nan")  # set by the fusion (crossmodalmas.qc.with_fusion_figures)
    agreement: float = float("nan")


@dataclass
class Result:
    """The output of :func:`crossmodalmas.pipeline.segment`, and all that fusing again needs
    (:func:`crossmodalmas.refusion.refuse`: another method or a subset of the atlases, without
    registering again).

    Attributes:
        labels: the segmentation on the target's exact grid, with the atlases' label values.
        working_grid: the grid the registration and fusion ran on.
        label_values: ``(C,)`` label value of each fused class index (index 0 = background).
        atlas_names: names of the atlases used, in the order of the arrays below.
        target_image: ``(K, J, I)`` float32 target on the working grid (normalised to [0, 1]).
        warped_images: ``(N, K, J, I)`` float32 warped atlas images (normalised to [0, 1]).
        warped_classes: ``(N, K, J, I)`` uint8 (int16 beyond 255 classes) warped atlas class
            indices into ``label_values``.
        weights: ``(N, K, J, I)`` float32 per-atlas fusion weight maps (sum 1 over atlases).
        uncertainty: ``(K, J, I)`` float32 normalised entropy of the fused label distribution.
        qc: per-atlas quality figures.
        fusion: the fusion method used.
        device: the torch device the run used.
        registration: the registration network's model name, or "instance-opt".
        similarity: ``(N, K, J, I)`` float32 similarity-network logits where the atlases
            disagree (0 elsewhere), once PLF has run; None before.
        similarity_model: the similarity network's model name, once PLF has run.
        timings: seconds per step.
        warnings: what was dropped or adjusted, in words.
        unknown: ``(K, J, I)`` bool on the target's grid: voxels no atlas's field of view
            covers (labelled 0: unknown, see :mod:`crossmodalmas.coverage`); None where the
            atlases cover the whole target.
    """

    labels: LabelMap
    working_grid: Grid
    label_values: np.ndarray
    atlas_names: list[str]
    target_image: np.ndarray
    warped_images: np.ndarray
    warped_classes: np.ndarray
    weights: np.ndarray
    uncertainty: np.ndarray
    qc: list[AtlasQC]
    fusion: FusionMethod
    device: str
    registration: str = "instance-opt"
    similarity: Optional[np.ndarray] = None
    similarity_model: Optional[str] = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unknown: Optional[np.ndarray] = None

    @property
    def warped_labels(self) -> np.ndarray:
        """``(N, K, J, I)`` int32 warped atlas label values."""
        return self.label_values.astype(np.int32)[self.warped_classes]

    def _on_working_grid(self, array: np.ndarray) -> Volume:
        return Volume(array, self.working_grid.ijk_to_ras.copy())

    def warped_atlas(self, index: int) -> Volume:
        """Atlas ``index``'s warped image on the working grid."""
        return self._on_working_grid(self.warped_images[index])

    def warped_atlas_labels(self, index: int) -> LabelMap:
        """Atlas ``index``'s warped labels on the working grid."""
        values = self.label_values.astype(np.int32)[self.warped_classes[index]]
        return LabelMap(values, self.working_grid.ijk_to_ras.copy())

    def weight_map(self, index: int) -> Volume:
        """Atlas ``index``'s fusion weight map on the working grid."""
        return self._on_working_grid(self.weights[index])

    def uncertainty_map(self) -> Volume:
        """The per-voxel uncertainty on the working grid."""
        return self._on_working_grid(self.uncertainty)

    def report(self) -> dict:
        """A JSON-serialisable summary: timings, device, per-atlas QC, weights, warnings."""
        return {
            "fusion": self.fusion.value,
            "device": self.device,
            "registration": self.registration,
            "similarity_model": self.similarity_model,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "working_grid": {"shape_kji": list(self.working_grid.shape),
                             "spacing_mm": [round(float(s), 4) for s in self.working_grid.spacing]},
            "labels": [int(v) for v in self.label_values[1:]],
            "unknown_fraction": 0.0 if self.unknown is None else round(float(np.mean(self.unknown)), 4),
            "atlases": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(q).items()}
                        for q in self.qc],
            "warnings": list(self.warnings),
        }
