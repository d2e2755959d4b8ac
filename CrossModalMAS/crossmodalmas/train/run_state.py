"""What every training run holds and checkpoints: network, optimiser, step, clock, random
state, label-map banks and log. The trainers add their data and loss on top."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from crossmodalmas import __version__
from crossmodalmas.devices import resolve_device
from crossmodalmas.label_sources import LabelMapBank, LabelSource, Split
from crossmodalmas.nets import build_network
from crossmodalmas.train.checkpoint import CHECKPOINT_NAME, save_checkpoint
from crossmodalmas.train.log import TrainingLog


class RunState:
    """The shared state of a run; ``_PLOT`` names the loss and validation columns of ``log.png``.

    Args:
        config: the run's config (``device``, ``seed``, ``net``, ``learning_rate``, ``sources``,
            ``data_root``, ``shape``).
        out: the run folder.
        architecture: the network's name in :func:`crossmodalmas.nets.build_network`.
        columns: the columns of ``log.csv``.
    """

    _PLOT = ("loss", "val_dice")

    def __init__(self, config, out: Path, architecture: str, columns: list[str]):
        self.config, self.out = config, out
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.net = build_network(architecture, config.net.to_dict()).to(self.device)
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=config.learning_rate)
        self.step, self.seconds = 0, 0.0
        root = Path(config.data_root) if config.data_root else None
        sources = [LabelSource(s) for s in config.sources]
        self.train_bank = LabelMapBank(sources, Split.TRAIN, config.shape, data_root=root)
        self.eval_bank = LabelMapBank(sources, Split.EVAL, config.shape, data_root=root)
        self.log = TrainingLog(out, columns)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" else nullcontext())

    def draw_labels(self) -> torch.Tensor:
        """``batch_size`` training label maps, ``(B, D, H, W)`` on the run's device."""
        maps = [self.train_bank.draw(self.generator) for _ in range(self.config.batch_size)]
        return torch.stack(maps).to(self.device)

    def state(self) -> dict:
        return {"config": self.config.to_dict(), "state_dict": self.net.state_dict(),
                "optimiser": self.optimiser.state_dict(), "step": self.step,
                "seconds": self.seconds, "generator": self.generator.get_state(),
                "version": __version__}

    def restore(self, state: dict) -> None:
        self.net.load_state_dict(state["state_dict"], strict=True)
        self.optimiser.load_state_dict(state["optimiser"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.generator.set_state(state["generator"].cpu())

    def optimise(self, loss: torch.Tensor) -> None:
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()

    def checkpoint(self) -> None:
        save_checkpoint(self.state(), self.out / CHECKPOINT_NAME)
        self.log.plot(*self._PLOT)
