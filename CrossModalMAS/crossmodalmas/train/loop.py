"""The step loop every trainer shares: progress bar, CSV log, validation, periodic checkpoints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Protocol

import torch

from tqdm import tqdm

from crossmodalmas.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
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


def train_loop(run, description: str, show_progress: bool, should_stop: Callable[[], bool]) -> None:
    """Train until ``run.config.steps`` or ``should_stop()``; log every :data:`LOG_EVERY` steps,
    validate every ``validate_every`` steps and at the end, checkpoint every
    ``checkpoint_minutes`` of wall-clock time (``run.checkpoint()``)."""
    config = run.config
    last_checkpoint = time.monotonic()
    bar = tqdm(total=config.steps, initial=run.step, disable=not show_progress,
               desc=description, unit="step")
    started = time.monotonic() - run.seconds
    while run.step < config.steps and not should_stop():
        terms = run.train_step()
        run.step += 1
        run.seconds = time.monotonic() - started
        bar.update(1)
        row = {}
        if run.step % LOG_EVERY == 0:
            row = {"loss": terms["total"], **{k: v for k, v in terms.items() if k != "total"}}
            bar.set_postfix(loss=f"{terms['total']:.3f}")
        if run.step % config.validate_every == 0 or run.step == config.steps:
            row.update(run.validate())
        if row:
            run.log.append({"step": run.step, "seconds": round(run.seconds, 1), **row})
        if time.monotonic() - last_checkpoint > 60 * config.checkpoint_minutes:
            run.checkpoint()
            last_checkpoint = time.monotonic()
    bar.close()



def run_training(config_type, make_run: Callable, command: str, config, out: Path, resume: bool,
                 show_progress: bool, should_stop: Optional[Callable[[], bool]], steps: Optional[int]):
    """Prepare the run folder, build the run (``make_run(config, out)``), restore it on resume,
    train and checkpoint; returns the run (finished when ``run.step == run.config.steps``).

    Raises:
        InputError: a bad folder, config or checkpoint.
    """
    config = prepare_folder(config_type, config, out, resume, steps, command)
    if config.threads:
        torch.set_num_threads(config.threads)
    run = make_run(config, out)
    if resume:
        run.restore(load_checkpoint(out / CHECKPOINT_NAME, run.device))
    train_loop(run, command, show_progress, should_stop or (lambda: False))
    run.checkpoint()
    return run
