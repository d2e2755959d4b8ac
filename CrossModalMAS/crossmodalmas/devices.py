"""Which torch device a run uses (segmentation and training alike)."""

from __future__ import annotations

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
