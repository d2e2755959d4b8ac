"""The typed configuration of a similarity-network training run, saved beside its checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from crossmodalmas.nets.similarity import SimilarityNetConfig
from crossmodalmas.train.config import TrainingConfig
from crossmodalmas.train.patches import PATCH

PATCH_RADIUS = PATCH // 2


@dataclass
class TrainSimilarityConfig(TrainingConfig):
    """Everything a similarity training run (seed 000, Algorithm 1) depends on (the fields of
    :class:`crossmodalmas.train.config.TrainingConfig` and:)

    Attributes:
        batch_size: pairs per step (each gives up to ``queries`` triplets).
        registration_model: the registration network that warps the atlases (a bundled
            model's name or a model entry path; None: the bundled default). Its name is saved
            in the recipe: the similarity network learns the errors of that warp.
        true_field_fraction: share of pairs warped by the pair's true field instead of the
            network's: well-aligned supports give the positives (Dice > ``positive_dice``)
            that a network's warp alone rarely does, the network's warp the misregistrations
            seen at test time.
        queries: boundary voxels sampled per pair.
        candidates: candidate supports per query: the warped atlas at the query (offset 0) and
            at ``candidates - 1`` random offsets.
        max_offset: largest offset along each axis, voxels.
        positive_dice, negative_dice: thr1 and thr2 of eq. 9 (0.9 and 0.5, seed 000).
        net: the architecture.
    """

    name: str = "xmod-similarity"
    batch_size: int = 2
    learning_rate: float = 1e-3
    registration_model: Optional[str] = None
    true_field_fraction: float = 0.5
    queries: int = 512
    candidates: int = 12
    max_offset: int = 4
    positive_dice: float = 0.9
    negative_dice: float = 0.5
    net: SimilarityNetConfig = field(default_factory=SimilarityNetConfig)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.net, dict):
            self.net = SimilarityNetConfig(**self.net)
        if not 0.0 <= self.negative_dice < self.positive_dice <= 1.0:
            raise ValueError("'negative_dice' and 'positive_dice' must satisfy 0 <= negative < positive <= 1, "
                             f"got {self.negative_dice} and {self.positive_dice}")
        if self.candidates < 2 or self.queries < 1 or self.max_offset < 1:
            raise ValueError(f"'candidates' must be >= 2, 'queries' >= 1 and 'max_offset' >= 1, got "
                             f"{self.candidates}, {self.queries}, {self.max_offset}")
        if not 0.0 <= self.true_field_fraction <= 1.0:
            raise ValueError(f"'true_field_fraction' must be in [0, 1], got {self.true_field_fraction}")
        margin = 2 * (PATCH_RADIUS + self.max_offset) + 1
        if min(self.shape) < margin:
            raise ValueError(f"'shape' {list(self.shape)} is too small for 15³ patches shifted by up to "
                             f"{self.max_offset} voxels: every side needs at least {margin}")

    @property
    def margin(self) -> int:
        """How far inside the grid queries lie, so that every shifted patch is in the grid."""
        return PATCH_RADIUS + self.max_offset
