"""Typed options of a segmentation run (what the CLI flags and the Slicer parameter node set)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Optional


class FusionMethod(str, enum.Enum):
    """Label fusion methods (see :mod:`crossmodalmas.fusion`)."""

    MAJORITY_VOTE = "mv"
    NON_LOCAL_WEIGHTED_VOTE = "nlwv"
    PATCH_LABEL_FUSION = "plf"
    LABEL_OVERLAP = "loa"
    LABEL_OVERLAP_LOCAL = "loa-local"


# Default instance-optimisation iterations: refining a network's fields, and alone (per level).
DEFAULT_REFINE = {"network": 30, "instance-opt": 60}


class DeviceChoice(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


@dataclass
class SegmentOptions:
    """Options of :func:`crossmodalmas.pipeline.segment`.

    Attributes:
        fusion: label fusion method; None: PLF where a similarity network is available
            (``similarity_model``, else the bundled default), NLWV otherwise.
        select: keep the best ``select`` atlases after affine alignment (None: keep all).
        roi_ras: working region as two RAS corners ``(r0, a0, s0, r1, a1, s1)`` in mm; None
            finds it automatically (union box of the affinely aligned atlas labels + margin).
        device: where the tensors live.
        working_spacing_mm: isotropic spacing of the working grid; None picks the coarsest of
            the target's spacing and what keeps the region within ``max_working_voxels``.
        max_working_voxels: cap on the working grid's size (speed and memory bound).
        margin_mm: margin around the automatic region.
        model: the registration network (a bundled model's name, or a path to a model entry
            .json / a folder with models.json); None is the bundled default; "instance-opt"
            uses no network (instance optimisation alone).
        refine_iterations: instance-optimisation iterations per resolution level: with a
            network, the refinement started from its fields (0: the network alone); without
            one, from zero. None takes the engine's default (:data:`DEFAULT_REFINE`).
        similarity_model: the similarity network of PLF (a bundled model's name or a path to
            a model entry .json / a folder with models.json); None is the bundled default.
        regularisation: weight of the diffusion regulariser of the instance optimisation.
        seed: random seed (the pipeline is deterministic given it).
    """

    fusion: Optional[FusionMethod] = None
    select: Optional[int] = None
    roi_ras: Optional[tuple[float, float, float, float, float, float]] = None
    device: DeviceChoice = DeviceChoice.AUTO
    working_spacing_mm: Optional[float] = None
    max_working_voxels: int = 128 ** 3
    margin_mm: float = 10.0
    model: Optional[str] = None
    refine_iterations: Optional[int] = None
    similarity_model: Optional[str] = None
    regularisation: float = 0.01
    seed: int = 0

    def __post_init__(self):
        self.fusion = None if self.fusion is None else FusionMethod(self.fusion)
        self.device = DeviceChoice(self.device)
        if self.refine_iterations is not None and self.refine_iterations < 0:
            raise ValueError(f"SegmentOptions: 'refine_iterations' must be >= 0, got {self.refine_iterations}")

    def refine_for(self, engine: str) -> int:
        """The refinement iterations for ``engine`` ("network" or "instance-opt")."""
        return DEFAULT_REFINE[engine] if self.refine_iterations is None else self.refine_iterations

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fusion"] = None if self.fusion is None else self.fusion.value
        out["device"] = self.device.value
        return out
