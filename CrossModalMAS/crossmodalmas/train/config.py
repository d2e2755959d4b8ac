"""The typed configuration of a registration training run, saved beside its checkpoints."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from crossmodalmas.data import LAYOUTS
from crossmodalmas.errors import InputError
from crossmodalmas.nets.registration_net import RegistrationNetConfig
from crossmodalmas.options import DeviceChoice
from crossmodalmas.synth import SynthConfig


class LossKind(str, enum.Enum):
    """``consistent``: seed 000 eq. 5 (symmetric Dice + smoothness + invertibility).
    ``label_constrained``: seed 004 eq. 1 (NCC + Dice + smoothness on U; the OASIS variant)."""

    CONSISTENT = "consistent"
    LABEL_CONSTRAINED = "label_constrained"


class JsonConfig:
    """Reading a typed run configuration from JSON, with one-line errors naming the source."""

    @classmethod
    def from_dict(cls, values: dict, origin: str = "config"):
        """Build from a dict; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{origin}: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise InputError(f"{origin}: {error}") from error

    @classmethod
    def from_json(cls, path: Path):
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"--config {path}: cannot read it as JSON: {error}") from error
        if not isinstance(values, dict):
            raise InputError(f"--config {path}: must hold a JSON object")
        return cls.from_dict(values, origin=f"--config {path}")


@dataclass
class TrainingConfig(JsonConfig):
    """What every training run has (the trainers' configs add their network and loss).

    Attributes:
        name: the model's name in its ``models.json`` entry.
        sources: label-map sources (:class:`crossmodalmas.label_sources.LabelSource` values).
        data_root: folder holding ``labelmaps/`` (for the brain and prostate sources).
        shape: training grid (D, H, W); pairs are drawn at this size.
        batch_size, steps, learning_rate: the optimisation (Adam).
        validate_every: steps between validations on held-out synthetic pairs.
        validation_pairs: how many held-out pairs (fixed for the whole run).
        checkpoint_minutes: wall-clock minutes between checkpoints.
        seed: seeds everything random in the run.
        device: "auto", "cpu" or "cuda"; mixed precision (bfloat16) is used on CUDA.
        threads: CPU threads for torch (None: torch's default).
        synth: the synthetic-pair ranges (for real pairs: the augmentation's deformation ranges).
        dataset: a labelled dataset of the user's (:func:`crossmodalmas.data.open_dataset`: a
            CSV manifest, a Decathlon, MM-WHS or plain folder); None: synthetic pairs only.
        dataset_layout: its layout (:data:`crossmodalmas.data.LAYOUTS`; "auto" detects it).
        label_map: a label remap for the dataset (a JSON file, or a bundled name such as "mmwhs").
        real_fraction: share of the training pairs drawn from ``dataset`` (0: none, 1: all);
            each step draws its whole batch from one kind (:mod:`crossmodalmas.train.pair_feed`).
        crop_labels: the label values (after ``label_map``) a real case is cropped around;
            empty: all foreground. Seed 000 crops around the LV myocardium.
        crop_margin_mm: margin around those labels, mm.
        augment: deform real pairs at random (affine + smooth deformation with the ``synth``
            ranges; seed 000 augments its real pairs so).
        init: fine-tune: start from this model's weights (a bundled model's name or a model
            entry path); its architecture arguments must equal ``net``.
        workers: processes that draw and load pairs (0: in the main process, with the run's own
            random stream; None: 0 on CPU, up to 4 on CUDA). See
            :mod:`crossmodalmas.train.pair_feed` for what a resume guarantees with workers > 0.
    """

    name: str = "xmod-general"
    sources: tuple = ("brain", "prostate", "heart", "shapes")
    data_root: Optional[str] = None
    shape: tuple = (64, 64, 64)
    batch_size: int = 1
    steps: int = 2000
    learning_rate: float = 1e-4
    validate_every: int = 100
    validation_pairs: int = 8
    checkpoint_minutes: float = 5.0
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    synth: SynthConfig = field(default_factory=SynthConfig)
    dataset: Optional[str] = None
    dataset_layout: str = "auto"
    label_map: Optional[str] = None
    real_fraction: float = 0.0
    crop_labels: tuple = ()
    crop_margin_mm: float = 10.0
    augment: bool = True
    init: Optional[str] = None
    workers: Optional[int] = None

    def __post_init__(self):
        self.device = DeviceChoice(self.device).value
        self.sources = tuple(self.sources)
        self.shape = tuple(int(s) for s in self.shape)
        if isinstance(self.synth, dict):
            self.synth = SynthConfig(**self.synth)
        self.crop_labels = tuple(int(label) for label in self.crop_labels)
        self._check_real_data()
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 0):
            raise ValueError(f"'workers' must be None or an integer >= 0, got {self.workers!r}")

    def _check_real_data(self) -> None:
        if not 0.0 <= self.real_fraction <= 1.0:
            raise ValueError(f"'real_fraction' must be in [0, 1], got {self.real_fraction}")
        if self.real_fraction > 0 and not self.dataset:
            raise ValueError(f"'real_fraction' {self.real_fraction} needs a 'dataset' (none given)")
        if self.dataset_layout not in LAYOUTS:
            raise ValueError(f"'dataset_layout' must be one of {', '.join(LAYOUTS)}, got {self.dataset_layout!r}")
        if not self.crop_margin_mm >= 0:
            raise ValueError(f"'crop_margin_mm' must be >= 0, got {self.crop_margin_mm}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(sources=list(self.sources), shape=list(self.shape), synth=self.synth.to_dict(),
                   net=self.net.to_dict(), crop_labels=list(self.crop_labels))
        return out


@dataclass
class TrainRegistrationConfig(TrainingConfig):
    """Everything a registration training run depends on (the fields of :class:`TrainingConfig` and:)

    Attributes:
        learning_rate: Adam at 1e-4: seed 004 used 1e-5 at batch 16 on a GPU; a larger step
            suits the small batches trained here.
        loss: which of the papers' losses.
        lambda_smooth, lambda_inverse: seed 000's lambda1 and lambda2 (0.3, 0.2).
        alpha, beta, gamma: seed 004's weights (1, 1, 0.01).
        lambda_supervised: weight of an extra, dense term: the mean end-point error (voxels)
            of U and V against the true fields a synthetic pair knows by construction
            (:func:`crossmodalmas.synth.true_correspondence`). 0 is the papers' loss. Label
            Dice alone gives a network at the identity a sparse signal whose sign flips from
            pair to pair: measured here, 400 CPU steps left the fields at ~1e-4 voxels. The
            dense term gets it moving at once; the Dice terms still decide the alignment of
            the structures.
        max_loss_labels: Dice over at most this many random foreground labels per step (the
            brain maps have ~50; all of them would make every warp 50 channels wide).
        finest_spacing_mm: the model entry's ``working_grid.spacing_mm``: the network never
            runs on a grid finer than this (it runs at the training grid's size otherwise).
        net: the architecture.
    """

    loss: LossKind = LossKind.CONSISTENT
    lambda_smooth: float = 0.3
    lambda_inverse: float = 0.2
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.01
    lambda_supervised: float = 0.0
    max_loss_labels: int = 16
    finest_spacing_mm: float = 1.0
    net: RegistrationNetConfig = field(default_factory=RegistrationNetConfig)

    def __post_init__(self):
        super().__post_init__()
        self.loss = LossKind(self.loss)
        if isinstance(self.net, dict):
            self.net = RegistrationNetConfig(**self.net)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["loss"] = self.loss.value
        return out
