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


def data_sources(config) -> list[str]:
    """What a run trained on, for the entry's ``training.data``: the label sources of its
    synthetic pairs and, where it drew real ones, ``dataset:<path>``."""
    synthetic = list(config.sources) if config.real_fraction < 1 else []
    return synthetic + ([f"dataset:{config.dataset}"] if config.real_fraction > 0 else [])


def training_data(config) -> str:
    """The same in words, for the entry's description (and where it started from)."""
    parts = []
    if config.real_fraction < 1:
        parts.append(f"synthetic pairs from {', '.join(config.sources)}")
    if config.real_fraction > 0:
        parts.append(f"real pairs of {config.dataset} ({config.real_fraction:.0%} of the steps)")
    started = f", fine-tuned from {config.init}" if config.init else ""
    return " and ".join(parts) + started


def _accuracy(figures: dict) -> dict:
    """Validation figures by kind: on held-out synthetic pairs, and (``val_real_*``) on the
    dataset's held-out real pairs. JSON has no NaN: a figure that could not be measured (no
    candidate pair) is null."""
    out: dict[str, dict] = {}
    for name, value in figures.items():
        kind = "real_validation" if name.startswith("val_real_") else "synthetic_validation"
        out.setdefault(kind, {})[name] = round(value, 4) if math.isfinite(value) else None
    return out


def write_model(net: torch.nn.Module, config, architecture: str, accuracy: dict, seconds: float,
                out: Path, task: str, working_grid: dict, description: str) -> Path:
    """Write ``model.pt`` (``{config, state_dict, version}``, tensors only, so it loads with
    ``weights_only=True``) and ``model.json``; returns the entry's path.

    Args:
        net: the trained network.
        config: the run's config (has ``name``, ``net``, ``sources``, ``steps``, ``to_dict()``).
        architecture: the name :func:`crossmodalmas.nets.build_network` knows.
        accuracy: the final validation figures (``val_real_*`` ones on real held-out pairs).
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
        "training": {"recipe": config.to_dict(), "data": data_sources(config),
                     "steps": config.steps, "seconds": round(seconds, 1), "machine": _machine()},
        "accuracy": _accuracy(accuracy),
        "inference_seconds": {"cpu": None, "gpu": None},
        "default": False,
        "description": description,
    })
    write_entry(entry, out / ENTRY_FILE)
    return out / ENTRY_FILE
