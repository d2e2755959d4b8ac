"""``crossmodalmas train-registration``: train the consistent registration network on
synthetic cross-modality pairs (:mod:`crossmodalmas.synth`), real pairs of a labelled dataset
(:mod:`crossmodalmas.train.real_pairs`) or both, from scratch or fine-tuning a model
(:mod:`crossmodalmas.train.fine_tune`), on one process or several
(:mod:`crossmodalmas.train.distributed`), checkpointing and resuming.

The run folder holds ``config.json``, ``checkpoint.pt`` (every few minutes, atomic),
``log.csv`` and ``log.png``, and at the end ``model.pt`` (``{config, state_dict, version}``)
with its ``model.json`` entry, which ``--model PATH`` and ``models.json`` accept as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from crossmodalmas.losses import consistent_registration_loss, label_constrained_loss
from crossmodalmas.train.config import LossKind, TrainRegistrationConfig
from crossmodalmas.train.distributed import Distributed
from crossmodalmas.train.loop import path_without_a_model, run_training
from crossmodalmas.train.model_entry import training_data, write_model
from crossmodalmas.train.run_state import RunState
from crossmodalmas.train.validation import validate, validation_pairs
from crossmodalmas.transforms import one_hot, warp

ARCHITECTURE = "consistent-registration-net"
_COLUMNS = ["step", "seconds", "loss", "dice", "smoothness", "invertibility", "similarity", "end_point_error",
            "val_dice_before", "val_dice", "val_folding_percent"]
_REAL_COLUMNS = ["val_real_dice_before", "val_real_dice", "val_real_folding_percent"]


def _loss_labels(labels_a, labels_b, max_labels: int, generator):
    """Keep at most ``max_labels`` random foreground labels (others become background) and
    renumber them 1..m; returns the two remapped maps and m + 1."""
    present = torch.unique(torch.cat([labels_a.flatten(), labels_b.flatten()]))
    foreground = present[present > 0]
    if foreground.numel() > max_labels:
        order = torch.randperm(foreground.numel(), generator=generator, device=foreground.device)
        foreground = foreground[order[:max_labels]]
    table = torch.zeros(int(present.max()) + 1, dtype=torch.long, device=labels_a.device)
    table[foreground] = torch.arange(1, foreground.numel() + 1, device=labels_a.device)
    return table[labels_a], table[labels_b], foreground.numel() + 1


def _papers_loss(config: TrainRegistrationConfig, pair, forward, backward, generator) -> dict:
    labels_a, labels_b, k = _loss_labels(pair.labels_a, pair.labels_b, config.max_loss_labels, generator)
    onehot_a, onehot_b = one_hot(labels_a, k), one_hot(labels_b, k)
    if config.loss is LossKind.CONSISTENT:
        return consistent_registration_loss(onehot_a, onehot_b, forward, backward,
                                            lambda_smooth=config.lambda_smooth,
                                            lambda_inverse=config.lambda_inverse)
    return label_constrained_loss(warp(pair.image_a, forward), pair.image_b,
                                  warp(onehot_a, forward), onehot_b, forward,
                                  alpha=config.alpha, beta=config.beta, gamma=config.gamma)


def _loss_terms(config: TrainRegistrationConfig, pair, forward, backward, generator) -> dict:
    """The papers' loss plus, where configured, the supervised end-point term (see the config)."""
    terms = _papers_loss(config, pair, forward, backward, generator)
    if config.lambda_supervised > 0 and pair.forward is not None:  # real pairs have no true field
        error = ((forward - pair.forward).norm(dim=1).mean()
                 + (backward - pair.backward).norm(dim=1).mean())
        terms["end_point_error"] = error
        terms["total"] = terms["total"] + config.lambda_supervised * error
    return terms


class _Run(RunState):
    """A registration run: synthetic and/or real pairs, the papers' loss, held-out pair validation."""

    def __init__(self, config: TrainRegistrationConfig, out: Path, place: Distributed = Distributed()):
        real = config.real_fraction > 0
        super().__init__(config, out, ARCHITECTURE, _COLUMNS + (_REAL_COLUMNS if real else []), place)
        if real:
            self._PLOT = ("loss", "val_real_dice")
        main = place.is_main
        self.validation = (validation_pairs(self.eval_bank, config.validation_pairs, config.synth, config.seed + 1,
                                            self.device) if main and self.eval_bank is not None else [])
        self.real_validation = (self.real.validation_pairs(config.validation_pairs, config.seed + 1, self.device)
                                if main and real else [])

    def unused_parameters(self) -> bool:
        return self.config.loss is LossKind.LABEL_CONSTRAINED  # seed 004's loss leaves V out

    def train_step(self) -> dict:
        pair = self.next_pairs().pair
        with self.autocast:
            forward, backward = self.model(pair.image_a, pair.image_b)
        terms = _loss_terms(self.config, pair, forward.float(), backward.float(), self.generator)
        self.optimise(terms["total"])
        return {name: float(value.detach()) for name, value in terms.items()}

    def validate(self) -> dict:
        figures = validate(self.net, self.validation) if self.validation else {}
        if self.real_validation:
            figures.update({name.replace("val_", "val_real_", 1): value
                            for name, value in validate(self.net, self.real_validation).items()})
        return figures


def _working_grid(config: TrainRegistrationConfig) -> dict:
    # The network runs at the scale it was trained at: anatomy filling about as many voxels
    # as a training pair, never finer than ``finest_spacing_mm``.
    return {"spacing_mm": config.finest_spacing_mm,
            "max_voxels": int(config.shape[0] * config.shape[1] * config.shape[2])}


def train_registration(config: Optional[TrainRegistrationConfig], out: Path, resume: bool = False,
                       show_progress: bool = True,
                       should_stop: Optional[Callable[[], bool]] = None,
                       steps: Optional[int] = None) -> Path:
    """Train (or go on training) a registration network; returns the ``model.json`` path.

    Args:
        config: the run's configuration (None with ``resume``: the saved one).
        out: the run folder.
        resume: continue from ``out/checkpoint.pt``.
        show_progress: draw a tqdm bar on stderr.
        should_stop: polled every step; True checkpoints and returns early (SIGTERM).
        steps: overrides the config's number of steps (with ``resume``: trains a run longer).

    Raises:
        InputError: a bad folder, config or checkpoint.
    """
    out = Path(out)
    run = run_training(TrainRegistrationConfig, _Run, "train-registration", config, out, resume,
                       show_progress, should_stop, steps, task="registration", architecture=ARCHITECTURE)
    config = run.config
    unfinished = path_without_a_model(run, out)
    if unfinished is not None:
        return unfinished
    return write_model(run.net, config, ARCHITECTURE, run.validate(), run.seconds, out,
                       task="registration", working_grid=_working_grid(config),
                       description=f"consistent registration network ({config.net.mode.value} mode), "
                                   f"trained on {training_data(config)}")
