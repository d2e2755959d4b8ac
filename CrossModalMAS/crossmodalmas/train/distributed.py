"""Training on several processes: ``torchrun --nproc_per_node N`` on one node, or several nodes.

torchrun (``python -m torch.distributed.run``) starts one process per GPU (or per CPU share)
and tells each its place through the environment: ``RANK`` (0..N-1 over all nodes),
``WORLD_SIZE`` (N) and ``LOCAL_RANK`` (its GPU on its node), plus the rendezvous address.
Without them a run is a single process and nothing here does any communication.

What a run with ``WORLD_SIZE`` > 1 does (the trainers and :mod:`crossmodalmas.train.loop`):

- one process group: NCCL for CUDA tensors and gloo for CPU tensors where torch sees a GPU
  (``cpu:gloo,cuda:nccl``), gloo alone otherwise; each rank on ``cuda:LOCAL_RANK``;
- :class:`~torch.nn.parallel.DistributedDataParallel` around the network: every step the
  ranks' gradients are averaged, so the effective batch is ``WORLD_SIZE x batch_size``;
- each rank its own stream of pairs (its random streams are seeded with its rank);
- rank 0 alone prepares the run folder and writes config, checkpoints, log, figure and model;
  every rank resumes from the same checkpoint;
- a stop (SIGINT/SIGTERM) seen by any rank stops every rank after the same step, and they
  checkpoint together; the process group is destroyed at the end, also on errors.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from crossmodalmas.devices import resolve_device
from crossmodalmas.errors import InputError
from crossmodalmas.options import DeviceChoice

# Ranks wait for each other at every step; rank 0 validating or writing a checkpoint makes the
# others wait that long, so the timeout must outlast the slowest validation.
_TIMEOUT = timedelta(minutes=30)
_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def gpu_per_rank(local_size: int) -> bool:
    """Whether this node has a GPU for each of its ``local_size`` training processes."""
    return torch.cuda.is_available() and torch.cuda.device_count() >= local_size


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (one process: rank 0 of 1).

    Attributes:
        rank: 0..world_size-1 over all nodes.
        world_size: how many processes train together.
        local_rank: the process's index on its node (its GPU).
        local_size: how many of them run on this node (they share its cores).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def enabled(self) -> bool:
        """Whether there are other processes to talk to."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder."""
        return self.rank == 0

    def device(self, choice: str) -> torch.device:
        """The run's device for ``choice`` (auto/cpu/cuda): a CUDA rank gets its own GPU; with
        fewer GPUs on the node than ranks, ``auto`` trains every rank on the CPU.

        Raises:
            InputError: ``cuda`` chosen with fewer GPUs on the node than ranks.
        """
        device = resolve_device(choice)
        if device.type != "cuda" or not self.enabled:
            return device
        if gpu_per_rank(self.local_size):
            return torch.device("cuda", self.local_rank)
        if DeviceChoice(choice) is DeviceChoice.AUTO:
            return torch.device("cpu")
        raise InputError(f"device cuda: {self.local_size} training processes on this node but torch sees "
                         f"{torch.cuda.device_count()} CUDA device(s); each needs its own: start at most "
                         f"{torch.cuda.device_count()} per node (torchrun --nproc-per-node) or train on the CPU")

    def wrap(self, module: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
        """``module`` inside :class:`DistributedDataParallel` (the module itself for one process).

        Args:
            module: what the training step calls; its parameters are averaged over the ranks.
            device: the rank's device (its GPU, or the CPU).
            find_unused_parameters: DDP's option, for modules some of whose parameters a step
                may leave out of the loss.
        """
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids,
                                       find_unused_parameters=find_unused_parameters)

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over all ranks (one all-reduce; the flags as they are for one process)."""
        if not self.enabled:
            return tuple(bool(flag) for flag in flags)
        values = torch.tensor([float(bool(flag)) for flag in flags])
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return tuple(bool(value) for value in values.tolist())

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


def _variable(name: str) -> int:
    text = os.environ[name]
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"environment variable {name}={text!r}: must be an integer (set by torchrun)") from None
    if value < 0:
        raise InputError(f"environment variable {name}={text!r}: must be >= 0")
    return value


def from_environment() -> Distributed:
    """This process's place as torchrun's environment gives it (rank 0 of 1 without it).

    Raises:
        InputError: ``WORLD_SIZE`` set without ``RANK`` (or the reverse), a value that is not a
            non-negative integer, or a rank outside ``0..WORLD_SIZE-1``.
    """
    present = [name for name in _VARIABLES[:2] if name in os.environ]
    if not present:
        return Distributed()
    if len(present) == 1:
        raise InputError(f"environment variable {present[0]} is set but {({'RANK', 'WORLD_SIZE'} - set(present)).pop()} "
                         "is not: start several training processes with torchrun")
    rank, world_size = _variable("RANK"), _variable("WORLD_SIZE")
    local_rank = _variable("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    local_size = _variable("LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in os.environ else 1
    if world_size < 1 or rank >= world_size:
        raise InputError(f"environment variables RANK={rank}, WORLD_SIZE={world_size}: the rank must lie in "
                         "0..WORLD_SIZE-1")
    return Distributed(rank, world_size, local_rank, max(1, local_size))


@contextmanager
def process_group() -> Iterator[Distributed]:
    """Join the other training processes for the ``with`` block (nothing for one process).

    On CUDA the rank's GPU becomes the current device before the group starts. The group is
    destroyed on leaving, also on an error.
    """
    place = from_environment()
    if not place.enabled or dist.is_initialized():
        yield place
        return
    backend = "gloo"
    if gpu_per_rank(place.local_size):
        torch.cuda.set_device(place.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=_TIMEOUT)
    try:
        yield place
        # Leave together: a rank that tore gloo down while the other was still in its last
        # steps aborted now and then ("terminate called without an active exception", SIGABRT).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's state (names and bytes, in name order): equal on every rank when
    the replicas agree, which each distributed checkpoint records."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
