"""The training log: one CSV row per logged step and a loss/validation-Dice figure."""

from __future__ import annotations

import csv
from pathlib import Path


class TrainingLog:
    """Appends rows to ``log.csv`` in ``folder`` (surviving resumes) and draws ``log.png``."""

    def __init__(self, folder: Path, columns: list[str]):
        self.path = Path(folder) / "log.csv"
        self.columns = columns
        if not self.path.exists():
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerow(columns)

    def append(self, row: dict) -> None:
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([_format(row.get(c, "")) for c in self.columns])

    def rows(self) -> list[dict]:
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def plot(self, loss_column: str, validation_column: str) -> Path:
        """Training loss and validation Dice against the step, as ``log.png``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = self.rows()
        figure = Figure(figsize=(8, 3.5))
        FigureCanvasAgg(figure)
        left, right = figure.subplots(1, 2)
        for axes, column, title in ((left, loss_column, "training loss"),
                                    (right, validation_column, "validation Dice")):
            points = [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]
            if points:
                axes.plot(*zip(*points))
            axes.set_xlabel("step")
            axes.set_title(title)
        figure.tight_layout()
        out = self.path.with_suffix(".png")
        figure.savefig(out, dpi=90)
        return out


class DiscardedLog:
    """The log of a training process other than rank 0: rows and figures are dropped (rank 0
    alone writes the run folder, :mod:`crossmodalmas.train.distributed`)."""

    def append(self, row: dict) -> None:
        """Drop ``row``."""

    def plot(self, loss_column: str, validation_column: str) -> None:
        """Draw nothing."""


def _format(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
