"""What of the machine a run uses: its torch device (segmentation and training alike), its
CPU cores, and how much memory is free for it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, TypeVar

import torch

from crossmodalmas.errors import InputError
from crossmodalmas.options import DeviceChoice

T = TypeVar("T")


def resolve_device(choice: DeviceChoice) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else CPU. Raises InputError for an absent CUDA."""
    choice = DeviceChoice(choice)
    if choice is DeviceChoice.CUDA and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device on this machine (use auto or cpu)")
    if choice is DeviceChoice.CPU or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def cpu_fallback(step: str, compute: Callable[[torch.device], T], device: torch.device,
                 warn: Callable[[str], None]) -> tuple[T, torch.device]:
    """``compute(device)``, and on CUDA out-of-memory ``compute`` again on the CPU, said with ``warn``.

    For a step that is one piece of work (the target's descriptors, the fusion): a step over
    many atlases first halves its batches (:mod:`crossmodalmas.atlas_warping`).

    Args:
        step: what runs, for the message (e.g. ``"label fusion"``).
        compute: does the step on the device it is given.
        device: where to try first.
        warn: called with the message when the step moved to the CPU.

    Returns:
        ``(what compute returned, the device it ran on)``.
    """
    try:
        return compute(device), device
    except torch.cuda.OutOfMemoryError:
        if torch.device(device).type != "cuda":  # nothing to fall back to
            raise
        torch.cuda.empty_cache()
        warn(f"{step}: CUDA out of memory; running on the CPU")
        cpu = torch.device("cpu")
        return compute(cpu), cpu


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it, e.g. a
    container's or a batch job's share; else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: a container's or a batch job's memory limit


def available_memory() -> Optional[int]:
    """Bytes of memory the process can still take without swapping: Linux's ``MemAvailable``,
    capped by the room left under its cgroup's limit (a container's); None where the OS does
    not say (macOS, Windows: no bound is then put on what is run side by side)."""
    found = []
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            found.append(max(int(limit) - int((_CGROUP / "memory.current").read_text()), 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None
