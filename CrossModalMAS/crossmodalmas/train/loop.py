"""The step loop every trainer shares: progress bar, CSV log, validation, periodic checkpoints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Protocol

import torch

from tqdm import tqdm

from crossmodalmas.errors import InputError
from crossmodalmas.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from crossmodalmas.train.distributed import Distributed, process_group
from crossmodalmas.train.fine_tune import init_entry, load_init
from crossmodalmas.train.model_entry import ENTRY_FILE
from crossmodalmas.train.run_folder import prepare_folder

LOG_EVERY = 10
"""Steps between the training-loss rows of ``log.csv``."""


class Trainable(Protocol):
    """What :func:`train_loop` drives (a trainer's run state)."""

    config: object  # has steps, validate_every, checkpoint_minutes
    log: object  # a TrainingLog
    step: int
    seconds: float

    def train_step(self) -> dict: ...
    def validate(self) -> dict: ...
    def checkpoint(self) -> None: ...  # save the state and redraw the figure


def train_loop(run, description: str, show_progress: bool, should_stop: Callable[[], bool],
               place: Distributed = Distributed()) -> None:
    """Train until ``run.config.steps`` or ``should_stop()``; log every :data:`LOG_EVERY` steps,
    validate every ``validate_every`` steps and at the end, checkpoint every
    ``checkpoint_minutes`` of wall-clock time (``run.checkpoint()``).

    On several processes (``place``) rank 0 alone shows progress, logs and validates; a stop
    or a due checkpoint on any rank is one on every rank, after the same step.
    """
    config = run.config
    last_checkpoint = time.monotonic()
    bar = tqdm(total=config.steps, initial=run.step, disable=not (show_progress and place.is_main),
               desc=description, unit="step")
    started = time.monotonic() - run.seconds
    (stop,) = place.any(should_stop())
    while run.step < config.steps and not stop:
        terms = run.train_step()
        run.step += 1
        run.seconds = time.monotonic() - started
        bar.update(1)
        if place.is_main:
            _log_step(run, terms, bar)
        stop, due = place.any(should_stop(), time.monotonic() - last_checkpoint > 60 * config.checkpoint_minutes)
        if due:
            run.checkpoint()
            last_checkpoint = time.monotonic()
    bar.close()


def _log_step(run, terms: dict, bar) -> None:
    """The step's row of ``log.csv``: the loss every :data:`LOG_EVERY` steps, the validation when due."""
    config, row = run.config, {}
    if run.step % LOG_EVERY == 0:
        row = {"loss": terms["total"], **{k: v for k, v in terms.items() if k != "total"}}
        bar.set_postfix(loss=f"{terms['total']:.3f}")
    if run.step % config.validate_every == 0 or run.step == config.steps:
        row.update(run.validate())
    if row:
        run.log.append({"step": run.step, "seconds": round(run.seconds, 1), **row})


def _prepared_config(place: Distributed, config_type, config, out: Path, resume: bool, steps: Optional[int],
                     command: str):
    """Rank 0 prepares the run folder (:func:`prepare_folder`); every rank gets the run's config,
    or rank 0's error."""
    if not place.enabled:
        return prepare_folder(config_type, config, out, resume, steps, command)
    prepared, error = None, None
    if place.is_main:
        try:
            prepared = prepare_folder(config_type, config, out, resume, steps, command)
        except InputError as caught:
            error = str(caught)
    values, error = place.broadcast((prepared.to_dict() if prepared is not None else None, error))
    if error is not None:
        raise InputError(error)
    return prepared if place.is_main else config_type.from_dict(values, origin=f"{out / 'config.json'}")


def run_training(config_type, make_run: Callable, command: str, config, out: Path, resume: bool,
                 show_progress: bool, should_stop: Optional[Callable[[], bool]], steps: Optional[int],
                 *, task: str, architecture: str):
    """Join the other training processes if any (:mod:`crossmodalmas.train.distributed`),
    prepare the run folder, build the run (``make_run(config, out, place)``), restore it on
    resume or start it from ``config.init`` (:mod:`crossmodalmas.train.fine_tune`), train and
    checkpoint; returns the run (finished when ``run.step == run.config.steps``).

    Args:
        task, architecture: the network's task ("registration", "similarity") and architecture,
            which an ``init`` model must have.

    Raises:
        InputError: a bad folder, config, init model or checkpoint.
    """
    with process_group() as place:
        init = init_entry(config, task, architecture) if config is not None and not resume else None
        config = _prepared_config(place, config_type, config, out, resume, steps, command)
        if config.threads:
            torch.set_num_threads(config.threads)
        run = make_run(config, out, place)
        try:
            if resume:
                run.restore(load_checkpoint(out / CHECKPOINT_NAME, run.device))
            elif init is not None:
                load_init(run.net, init, run.device)
            train_loop(run, command, show_progress, should_stop or (lambda: False), place)
            run.checkpoint()
        finally:
            run.close()
    return run


def path_without_a_model(run, out: Path) -> Optional[Path]:
    """What a trainer returns when this process writes no model: the checkpoint of a run that
    stopped early, or on ranks other than 0 the entry rank 0 writes; None: write the model."""
    if run.step < run.config.steps:
        return out / CHECKPOINT_NAME
    if not run.place.is_main:
        return out / ENTRY_FILE
    return None
