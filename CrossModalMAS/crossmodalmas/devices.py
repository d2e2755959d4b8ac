"""What of the machine a run uses: its torch device (segmentation and training alike), its
CPU cores, and how much memory is free for it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

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
