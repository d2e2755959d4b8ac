"""Which torch device a run uses (segmentation and training alike)."""

from __future__ import annotations

import os

import torch

from crossmodalmas.errors import InputError
from crossmodalmas.options import DeviceChoice


def resolve_device(choice: DeviceChoice) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else CPU. Raises InputError for an absent CUDA."""
    choice = DeviceChoice(choice)
    if choice is DeviceChoice.CUDA and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device on this machine (use auto or cpu)")
    if choice is DeviceChoice.CPU or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it, e.g. a
    container's or a batch job's share; else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
