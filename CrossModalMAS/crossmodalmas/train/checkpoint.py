"""Checkpoints of a training run: written atomically, read with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch

from crossmodalmas.atomic import atomic_path
from crossmodalmas.errors import InputError

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` next to ``path`` and rename it in place, so a run killed mid-write
    always leaves the previous checkpoint whole."""
    with atomic_path(Path(path), ".pt") as temp:
        torch.save(state, temp)


def load_checkpoint(path: Path, device) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (plain tensors and containers only).

    Raises:
        InputError: the file is missing or is not such a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--resume: no checkpoint at {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise InputError(f"--resume: {path} is not a readable checkpoint: {error}") from error
