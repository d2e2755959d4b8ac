"""The end of a training run: the weights file and its ``models.json`` entry."""

from __future__ import annotations

import math
import platform
from pathlib import Path

import torch

from crossmodalmas import __version__
from crossmodalmas.models import ModelEntry, sha256_of, write_entry
from crossmodalmas.train.checkpoint import save_checkpoint

MODEL_FILE = "model.pt"
ENTRY_FILE = "model.json"


def _machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), {platform.machine()}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_model(net: torch.nn.Module, config, architecture: str, accuracy: dict, seconds: float,
                out: Path, task: str, working_grid: dict, description: str) -> Path:
    """Write ``model.pt`` (``{config, state_dict, version}``, tensors only, so it loads with
    ``weights_only=True``) and ``model.json``; returns the entry's path.

    Args:
        net: the trained network.
        config: the run's config (has ``name``, ``net``, ``sources``, ``steps``, ``to_dict()``).
        architecture: the name :func:`crossmodalmas.nets.build_network` knows.
        accuracy: the final validation figures.
        seconds: the training time.
        out: the run folder.
        task: ``"registration"`` or ``"similarity"``.
        working_grid: ``{"spacing_mm", "max_voxels"}`` the network runs at.
        description: one line for people.
    """
    out = Path(out)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    save_checkpoint({"config": config.net.to_dict(), "state_dict": state,
                     "version": __version__}, out / MODEL_FILE)
    entry = ModelEntry.from_dict({
        "name": config.name,
        "file": MODEL_FILE,
        "sha256": sha256_of(out / MODEL_FILE),
        "task": task,
        "architecture": architecture,
        "arguments": config.net.to_dict(),
        "working_grid": working_grid,
        "normalisation": "percentile-0.5-99.5-to-0-1",
        "training": {"recipe": config.to_dict(), "data": list(config.sources),
                     "steps": config.steps, "seconds": round(seconds, 1), "machine": _machine()},
        # JSON has no NaN: a figure that could not be measured (no candidate pair) is null.
        "accuracy": {"synthetic_validation": {k: round(v, 4) if math.isfinite(v) else None
                                              for k, v in accuracy.items()}},
        "inference_seconds": {"cpu": None, "gpu": None},
        "default": False,
        "description": description,
    })
    write_entry(entry, out / ENTRY_FILE)
    return out / ENTRY_FILE
