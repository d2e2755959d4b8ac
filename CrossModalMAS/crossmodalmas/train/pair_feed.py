"""The training pairs of a run, one batch per step, made in the main process or in worker processes.

A step's pairs are made in two stages. **draw** (the CPU's part): whether the step is real or
synthetic (``real_fraction``; a whole batch is of one kind), then ``batch_size`` label maps
from the label-map bank, or ``batch_size`` real pairs from the dataset's crops
(:mod:`crossmodalmas.train.real_pairs`). **render** (torch on any device): the synthetic
contrasts and deformations (:func:`crossmodalmas.synth.synth_pair`), or the real pairs'
augmentation.

``workers`` = 0: both stages in the main process on the run's device, with the run's own
generator, in the order the trainers have always drawn (a run is what it was before workers
existed; the generator's state is in the checkpoint, so a resume is bit-equal).

``workers`` > 0: a :class:`torch.utils.data.DataLoader` over :class:`PairStream` (an
``IterableDataset``). Worker ``w`` of ``W`` makes steps ``start + w``, ``start + w + W``, ...;
the loader hands them out in step order. Step ``s`` draws with a CPU generator seeded from
``(seed, rank, s, 0)`` and renders with one seeded from ``(seed, rank, s, 1)``: in the worker
on a CPU run; in the main process on the GPU on a CUDA run (contrasts and deformations are
cheap there, painted phantoms and file crops are not), from pinned memory. **What a resume
guarantees with workers > 0**: the pairs of step ``s`` depend on ``(seed, rank, s)`` alone,
not on the number of workers nor on where a run was stopped, so a resumed run trains on
exactly the pairs of an uninterrupted one (and ends with the same weights where the device is
deterministic). Such a run draws other pairs than the same run with workers = 0, and a run
resumed with another number of ranks gives its ranks other streams than before.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from crossmodalmas.devices import usable_cores
from crossmodalmas.label_sources import LabelMapBank
from crossmodalmas.synth import SynthPair, synth_pair
from crossmodalmas.train.real_pairs import RealPairs, augment

DRAW, RENDER = 0, 1
_MAX_AUTO_WORKERS = 4


def step_seed(seed: int, rank: int, step: int, stage: int) -> int:
    """A 63-bit seed for one stage of one step of one rank (numpy's SeedSequence hash)."""
    high, low = np.random.SeedSequence([seed, rank, step, stage]).generate_state(2, np.uint32)
    return (int(high) << 31) ^ int(low)


@dataclass
class StepInput:
    """One step's pairs.

    Attributes:
        step: the step (0-based) they are for.
        real: drawn from the dataset (no true fields) or synthetic.
        drawn: what the draw gave: ``(B, D, H, W)`` label maps, or the real pairs before augmentation.
        pair: the rendered pairs (None until rendered).
    """

    step: int
    real: bool
    drawn: Union[torch.Tensor, SynthPair]
    pair: Optional[SynthPair] = None

    def pin_memory(self) -> "StepInput":
        """A copy in page-locked memory (the DataLoader calls this with ``pin_memory=True``)."""
        return replace(self, drawn=_apply(self.drawn, torch.Tensor.pin_memory),
                       pair=_apply(self.pair, torch.Tensor.pin_memory))


def _apply(value, function):
    """``function`` on a tensor, or on every tensor field of a :class:`SynthPair`."""
    if value is None or torch.is_tensor(value):
        return None if value is None else function(value)
    return SynthPair(**{f.name: _apply(getattr(value, f.name), function) for f in fields(value)})


class PairSource:
    """Both stages of a step for a run's config.

    Args:
        config: the run's config (``real_fraction``, ``batch_size``, ``synth``, ``augment``).
        bank: training label maps (needed when ``real_fraction`` < 1).
        real: the dataset's pairs (needed when ``real_fraction`` > 0).
    """

    def __init__(self, config, bank: Optional[LabelMapBank], real: Optional[RealPairs]):
        self.config, self.bank, self.real = config, bank, real

    def _is_real(self, generator: torch.Generator) -> bool:
        fraction = self.config.real_fraction
        if fraction in (0.0, 1.0):  # no draw: a synthetic-only run keeps its random stream
            return fraction == 1.0
        return float(torch.rand((), generator=generator, device=generator.device)) < fraction

    def draw(self, step: int, generator: torch.Generator) -> StepInput:
        """The draw stage, on the generator's device."""
        if self._is_real(generator):
            return StepInput(step, True, self.real.draw(self.config.batch_size, generator))
        maps = [self.bank.draw(generator) for _ in range(self.config.batch_size)]
        return StepInput(step, False, torch.stack(maps))

    def render(self, item: StepInput, generator: torch.Generator) -> SynthPair:
        """The render stage, on the generator's device (``item`` is moved there)."""
        drawn = _apply(item.drawn, lambda t: t.to(generator.device, non_blocking=True))
        if item.real:
            return augment(drawn, self.config.synth, generator) if self.config.augment else drawn
        return synth_pair(drawn, int(drawn.max()) + 1, self.config.synth, generator)


class PairStream(IterableDataset):
    """The steps from ``start`` on, split over the DataLoader's workers (see the module docstring).

    Args:
        source: the two stages.
        seed, rank: what the per-step generators are seeded with (besides the step).
        start: the first step.
        render: render in the worker too (a CPU run), else leave it to the main process.
    """

    def __init__(self, source: PairSource, seed: int, rank: int, start: int, render: bool):
        super().__init__()
        self.source, self.seed, self.rank, self.start, self.render = source, seed, rank, start, render

    def make(self, step: int) -> StepInput:
        item = self.source.draw(step, torch.Generator().manual_seed(step_seed(self.seed, self.rank, step, DRAW)))
        if self.render:
            item.pair = self.source.render(item, torch.Generator().manual_seed(
                step_seed(self.seed, self.rank, step, RENDER)))
        return item

    def __iter__(self):
        info = get_worker_info()
        worker, count = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start + worker
        while True:  # endless: the run stops asking
            yield self.make(step)
            step += count


def resolve_workers(workers: Optional[int], device: torch.device, local_processes: int = 1) -> int:
    """``workers``, or for None: 0 on CPU; on CUDA up to 4, leaving one core per process free."""
    if workers is not None:
        return workers
    if device.type != "cuda":
        return 0
    return max(1, min(_MAX_AUTO_WORKERS, usable_cores() // max(1, local_processes) - 1))


class PairFeed:
    """A run's pairs, step after step, on its device.

    Args:
        source: the two stages.
        device: the run's device.
        seed, rank: the run's seed and this process's rank.
        workers: 0 (the main process) or how many worker processes.
    """

    def __init__(self, source: PairSource, device: torch.device, seed: int, rank: int, workers: int):
        self.source, self.device, self.seed, self.rank, self.workers = source, device, seed, rank, workers
        self._iterator = None

    def next(self, step: int, generator: torch.Generator) -> StepInput:
        """Step ``step``'s pairs, rendered, on the run's device.

        Args:
            step: the step about to be trained (0-based), consecutive from call to call.
            generator: the run's own generator (used with workers = 0 only).
        """
        if self.workers == 0:
            item = self.source.draw(step, generator)
            item.pair = self.source.render(item, generator)
            return item
        if self._iterator is None:
            render = self.device.type == "cpu"
            stream = PairStream(self.source, self.seed, self.rank, step, render)
            self._iterator = iter(DataLoader(stream, batch_size=None, num_workers=self.workers,
                                             pin_memory=self.device.type == "cuda"))
        item = next(self._iterator)
        if item.step != step:
            raise RuntimeError(f"PairFeed.next(): the stream is at step {item.step}, step {step} was asked for")
        if item.pair is None:
            generator = torch.Generator(device=self.device).manual_seed(
                step_seed(self.seed, self.rank, step, RENDER))
            item.pair = self.source.render(item, generator)
        else:
            item.pair = _apply(item.pair, lambda t: t.to(self.device, non_blocking=True))
        return item

    def close(self) -> None:
        """End the worker processes (a later :meth:`next` starts new ones from its step)."""
        self._iterator = None
