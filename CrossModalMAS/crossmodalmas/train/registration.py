"""``crossmodalmas train-registration``: train the consistent registration network on
synthetic cross-modality pairs (:mod:`crossmodalmas.synth`), checkpointing and resuming.

The run folder holds ``config.json``, ``checkpoint.pt`` (every few minutes, atomic),
``log.csv`` and ``log.png``, and at the end ``model.pt`` (``{config, state_dict, version}``)
with its ``model.json`` entry, which ``--model PATH`` and ``models.json`` accept as is.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from crossmodalmas import __version__
from crossmodalmas.devices import resolve_device
from crossmodalmas.errors import InputError
from crossmodalmas.label_sources import LabelMapBank, LabelSource, Split
from crossmodalmas.losses import consistent_registration_loss, label_constrained_loss
from crossmodalmas.nets import build_network
from crossmodalmas.synth import synth_pair
from crossmodalmas.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from crossmodalmas.train.config import LossKind, TrainRegistrationConfig
from crossmodalmas.train.log import TrainingLog
from crossmodalmas.train.model_entry import write_model
from crossmodalmas.train.validation import validate, validation_pairs
from crossmodalmas.transforms import one_hot, warp

ARCHITECTURE = "consistent-registration-net"
_LOG_EVERY = 10
_COLUMNS = ["step", "seconds", "loss", "dice", "smoothness", "invertibility", "similarity", "end_point_error",
            "val_dice_before", "val_dice", "val_folding_percent"]


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
    if config.lambda_supervised > 0:
        error = ((forward - pair.forward).norm(dim=1).mean()
                 + (backward - pair.backward).norm(dim=1).mean())
        terms["end_point_error"] = error
        terms["total"] = terms["total"] + config.lambda_supervised * error
    return terms


class _Run:
    """The state of one training run: network, optimiser, random state, data and log."""

    def __init__(self, config: TrainRegistrationConfig, out: Path):
        self.config, self.out = config, out
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.net = build_network(ARCHITECTURE, config.net.to_dict()).to(self.device)
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=config.learning_rate)
        self.step, self.seconds = 0, 0.0
        root = Path(config.data_root) if config.data_root else None
        sources = [LabelSource(s) for s in config.sources]
        self.train_bank = LabelMapBank(sources, Split.TRAIN, config.shape, data_root=root)
        eval_bank = LabelMapBank(sources, Split.EVAL, config.shape, data_root=root)
        self.validation = validation_pairs(eval_bank, config.validation_pairs, config.synth,
                                           config.seed + 1, self.device)
        self.log = TrainingLog(out, _COLUMNS)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" else nullcontext())

    def state(self) -> dict:
        return {"config": self.config.to_dict(), "state_dict": self.net.state_dict(),
                "optimiser": self.optimiser.state_dict(), "step": self.step,
                "seconds": self.seconds, "generator": self.generator.get_state(),
                "version": __version__}

    def restore(self, state: dict) -> None:
        self.net.load_state_dict(state["state_dict"], strict=True)
        self.optimiser.load_state_dict(state["optimiser"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.generator.set_state(state["generator"].cpu())

    def batch(self):
        maps = [self.train_bank.draw(self.generator) for _ in range(self.config.batch_size)]
        labels = torch.stack(maps).to(self.device)
        return synth_pair(labels, int(labels.max()) + 1, self.config.synth, self.generator)

    def train_step(self) -> dict:
        pair = self.batch()
        with self.autocast:
            forward, backward = self.net(pair.image_a, pair.image_b)
        terms = _loss_terms(self.config, pair, forward.float(), backward.float(), self.generator)
        self.optimiser.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimiser.step()
        return {name: float(value.detach()) for name, value in terms.items()}


def _same_recipe(a: TrainRegistrationConfig, b: TrainRegistrationConfig) -> bool:
    """Equal apart from the number of steps (which a resume may extend)."""
    return {**a.to_dict(), "steps": 0} == {**b.to_dict(), "steps": 0}


def _prepare_folder(config: Optional[TrainRegistrationConfig], out: Path, resume: bool,
                    steps: Optional[int]) -> TrainRegistrationConfig:
    """The run's config (the given one for a new run, the saved one for ``--resume``),
    with ``steps`` overriding its length, saved as ``out/config.json``."""
    saved = out / "config.json"
    if resume:
        if not saved.is_file():
            raise InputError(f"--resume: {out} holds no training run (no config.json)")
        stored = TrainRegistrationConfig.from_json(saved)
        if config is not None and not _same_recipe(config, stored):
            raise InputError(f"--resume: --config differs from the run's {saved}; resume "
                             "without --config, or start a new run in another folder")
        config = stored
    elif config is None:
        raise InputError("train-registration: --config is needed for a new run")
    elif (out / CHECKPOINT_NAME).exists() or saved.exists():
        raise InputError(f"--out {out} already holds a training run; pass --resume to go on "
                         "with it, or choose another folder (nothing was overwritten)")
    if steps is not None:
        config.steps = steps
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(config.to_dict(), indent=2))
    return config


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
    config = _prepare_folder(config, out, resume, steps)
    if config.threads:
        torch.set_num_threads(config.threads)
    run = _Run(config, out)
    if resume:
        run.restore(load_checkpoint(out / CHECKPOINT_NAME, run.device))
    _loop(run, show_progress, should_stop or (lambda: False))
    save_checkpoint(run.state(), out / CHECKPOINT_NAME)
    if run.step < config.steps:
        return out / CHECKPOINT_NAME
    run.log.plot("loss", "val_dice")
    return write_model(run.net, config, ARCHITECTURE, validate(run.net, run.validation),
                       run.seconds, out)


def _loop(run: _Run, show_progress: bool, should_stop: Callable[[], bool]) -> None:
    config = run.config
    last_checkpoint = time.monotonic()
    bar = tqdm(total=config.steps, initial=run.step, disable=not show_progress,
               desc="train-registration", unit="step")
    started = time.monotonic() - run.seconds
    while run.step < config.steps and not should_stop():
        terms = run.train_step()
        run.step += 1
        run.seconds = time.monotonic() - started
        bar.update(1)
        row = {}
        if run.step % _LOG_EVERY == 0:
            row = {"loss": terms["total"], **{k: v for k, v in terms.items() if k != "total"}}
            bar.set_postfix(loss=f"{terms['total']:.3f}")
        if run.step % config.validate_every == 0 or run.step == config.steps:
            row.update(validate(run.net, run.validation))
        if row:
            run.log.append({"step": run.step, "seconds": round(run.seconds, 1), **row})
        if time.monotonic() - last_checkpoint > 60 * config.checkpoint_minutes:
            save_checkpoint(run.state(), run.out / CHECKPOINT_NAME)
            run.log.plot("loss", "val_dice")
            last_checkpoint = time.monotonic()
    bar.close()
