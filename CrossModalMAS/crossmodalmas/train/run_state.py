"""What every training run holds and checkpoints: network, optimiser, step, clock, random
state, the pairs' feed and log. The trainers add their loss and validation on top."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from crossmodalmas import __version__
from crossmodalmas.errors import InputError
from crossmodalmas.label_sources import LabelMapBank, LabelSource, Split
from crossmodalmas.nets import build_network
from crossmodalmas.train.checkpoint import CHECKPOINT_NAME, save_checkpoint
from crossmodalmas.train.distributed import Distributed, weights_digest
from crossmodalmas.train.log import DiscardedLog, TrainingLog
from crossmodalmas.train.pair_feed import DRAW, PairFeed, PairSource, StepInput, resolve_workers, step_seed
from crossmodalmas.train.real_pairs import RealPairs, open_real_pairs


class RunState:
    """The shared state of a run; ``_PLOT`` names the loss and validation columns of ``log.png``.

    Args:
        config: the run's config (:class:`crossmodalmas.train.config.TrainingConfig`).
        out: the run folder.
        architecture: the network's name in :func:`crossmodalmas.nets.build_network`.
        columns: the columns of ``log.csv``.
        place: this process among the training processes (rank 0 of 1 alone).

    Raises:
        InputError: unusable label sources or dataset.
    """

    _PLOT = ("loss", "val_dice")

    def __init__(self, config, out: Path, architecture: str, columns: list[str], place: Distributed = Distributed()):
        self.config, self.out, self.place = config, out, place
        self.device = place.device(config.device)
        torch.manual_seed(config.seed)
        # Each rank its own stream; rank 0's is the single-process run's.
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + place.rank)
        self.net = build_network(architecture, config.net.to_dict()).to(self.device)
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=config.learning_rate)
        self.step, self.seconds = 0, 0.0
        synthetic = config.real_fraction < 1.0
        self.train_bank = self._bank(Split.TRAIN) if synthetic else None
        self.eval_bank = self._bank(Split.EVAL) if synthetic else None
        self.real: RealPairs | None = open_real_pairs(config) if config.real_fraction > 0 else None
        workers = resolve_workers(config.workers, self.device, place.local_size)
        self.feed = PairFeed(PairSource(config, self.train_bank, self.real), self.device, config.seed,
                             place.rank, workers)
        self.log = TrainingLog(out, columns) if place.is_main else DiscardedLog()
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" else nullcontext())
        self.model = place.wrap(self.trained_module(), self.device, self.unused_parameters())

    def _bank(self, split: Split) -> LabelMapBank:
        config = self.config
        root = Path(config.data_root) if config.data_root else None
        try:
            return LabelMapBank([LabelSource(s) for s in config.sources], split, config.shape, data_root=root)
        except ValueError as error:
            raise InputError(f"config 'sources'/'data_root': {error}") from error

    def trained_module(self) -> nn.Module:
        """What a training step calls (and, on several processes, DDP wraps): the network."""
        return self.net

    def unused_parameters(self) -> bool:
        """Whether a step may leave some parameters out of the loss (DDP must then look for them)."""
        return False

    def next_pairs(self) -> StepInput:
        """This step's rendered pairs on the run's device (:mod:`crossmodalmas.train.pair_feed`)."""
        return self.feed.next(self.step, self.generator)

    def state(self) -> dict:
        return {"config": self.config.to_dict(), "state_dict": self.net.state_dict(),
                "optimiser": self.optimiser.state_dict(), "step": self.step,
                "seconds": self.seconds, "generator": self.generator.get_state(),
                "version": __version__}

    def restore(self, state: dict) -> None:
        """Go on from a checkpoint: weights, optimiser, step, clock and this rank's generator."""
        self.net.load_state_dict(state["state_dict"], strict=True)
        self.optimiser.load_state_dict(state["optimiser"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        generators = state.get("rank_generators") or [state["generator"]]
        if self.place.rank < len(generators):
            self.generator.set_state(generators[self.place.rank].cpu())
        else:  # more ranks than the checkpoint knows: a fresh stream for this one
            print(f"crossmodalmas: rank {self.place.rank}: the checkpoint holds the random state of "
                  f"{len(generators)} rank(s); this rank starts a new stream", file=sys.stderr)
            self.generator.manual_seed(step_seed(self.config.seed, self.place.rank, self.step, DRAW))

    def optimise(self, loss: torch.Tensor) -> None:
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()

    def checkpoint(self) -> None:
        """Save the state (rank 0; every rank must call it, at the same step) and redraw the figure.

        On several processes the checkpoint also holds every rank's generator state
        (``rank_generators``) and weights digest (``replica_sha256``: equal when the replicas agree).
        """
        generators = self.place.gather(self.generator.get_state())
        digests = self.place.gather(weights_digest(self.net)) if self.place.enabled else []
        if not self.place.is_main:
            return
        state = self.state()
        if self.place.enabled:
            state.update(rank_generators=generators, replica_sha256=digests)
            if len(set(digests)) > 1:
                print(f"crossmodalmas: warning: the ranks' weights differ at step {self.step}", file=sys.stderr)
        save_checkpoint(state, self.out / CHECKPOINT_NAME)
        self.log.plot(*self._PLOT)

    def close(self) -> None:
        """End the feed's worker processes."""
        self.feed.close()
