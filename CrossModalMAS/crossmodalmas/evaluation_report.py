"""The evaluation's outputs: ``metrics.csv`` (kept up to date after every target), ``summary.md``
and ``boxplots.png``.

``metrics.csv`` has one row per target and label (:data:`COLUMNS`); it is rewritten atomically
(:func:`crossmodalmas.atomic.atomic_path`) each time a target is done, so an interrupted run
leaves either the old or the new file, never a partial row, and a re-run skips the targets it
lists (:func:`done_keys`). Figures are written with 6 significant digits; ``inf`` (a label
missing from the prediction: its HD95) and ``nan`` (undefined) are written as such.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from crossmodalmas.atomic import atomic_path
from crossmodalmas.errors import InputError

COLUMNS = ("protocol", "group", "target_subject", "target_modality", "label", "dice", "hd95_mm", "arvd",
           "dice_apex", "dice_mid", "dice_base", "atlases", "seconds")
FIGURES = ("dice", "hd95_mm", "arvd", "dice_apex", "dice_mid", "dice_base", "seconds")
ALL_GROUPS = "(all groups)"

Row = dict[str, str]


def row_key(row: Row) -> tuple[str, str, str, str]:
    """What identifies one target's rows: (protocol, group, target subject, target modality)."""
    return row["protocol"], row["group"], row["target_subject"], row["target_modality"]


def format_number(value: float) -> str:
    """A figure as the CSV holds it: 6 significant digits, ``nan`` and ``inf`` spelled out."""
    return "nan" if math.isnan(value) else "inf" if math.isinf(value) else f"{value:.6g}"


def read_rows(path: Path) -> list[Row]:
    """The rows of an existing ``metrics.csv`` (none when the file does not exist).

    Raises:
        InputError: the file is not a metrics table of this version (other columns).
    """
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise InputError(f"{path}: not a metrics table of this version (columns {reader.fieldnames}); "
                             "use another --out")
        return list(reader)


def write_rows(path: Path, rows: Iterable[Row]) -> None:
    """Write the whole table atomically (the old file stays until the new one is complete)."""
    path = Path(path)
    with atomic_path(path, ".csv") as temp:
        with open(temp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def done_keys(rows: Iterable[Row]) -> set[tuple[str, str, str, str]]:
    """The targets (:func:`row_key`) whose rows the table holds."""
    return {row_key(row) for row in rows}


def _label_order(label: str) -> tuple[int, float, str]:
    try:
        return 0, float(label), label
    except ValueError:
        return 1, 0.0, label


def _values(rows: Sequence[Row], column: str) -> list[float]:
    """The column's finite values."""
    values = [float(row[column]) for row in rows]
    return [value for value in values if math.isfinite(value)]


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}" if values else "-"


def grouped(rows: Sequence[Row]) -> dict[tuple[str, str, str], list[Row]]:
    """Rows by (protocol, group, label), plus (protocol, :data:`ALL_GROUPS`, label) where a
    protocol has several groups (the folds of kfold, the two directions of cross-modality);
    ordered by protocol, group, label."""
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row["protocol"], row["group"], row["label"])].append(row)
    per_protocol: dict[str, set[str]] = defaultdict(set)
    for protocol, group, _ in list(groups):
        per_protocol[protocol].add(group)
    for row in rows:
        if len(per_protocol[row["protocol"]]) > 1:
            groups[(row["protocol"], ALL_GROUPS, row["label"])].append(row)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] == ALL_GROUPS, item[0][1],
                                                        _label_order(item[0][2]))))


def _summary_line(key: tuple[str, str, str], rows: list[Row]) -> str:
    dice, hd95 = _values(rows, "dice"), _values(rows, "hd95_mm")
    missing = sum(1 for row in rows if math.isinf(float(row["hd95_mm"])))
    cells = [*key, str(len(rows)), _mean_sd(dice), _median(dice), _mean_sd(hd95), _median(hd95),
             str(missing), _mean_sd(_values(rows, "arvd"))]
    cells += [_mean_sd(_values(rows, column)) for column in ("dice_apex", "dice_mid", "dice_base")]
    return "| " + " | ".join(cells) + " |"


def summary_markdown(rows: Sequence[Row], title: str = "Evaluation") -> str:
    """``summary.md``: mean ± sd and median per protocol, group and label, as a Markdown table.

    HD95 statistics are over the targets where the label was found (``missed`` counts the
    others, whose HD95 is infinite); ``nan`` values (a third without the label) are left out.
    """
    header = ("| protocol | group | label | n | Dice mean ± sd | Dice median | HD95 mm mean ± sd | "
              "HD95 mm median | missed | aRVD mean ± sd | Dice apex | Dice mid | Dice base |")
    lines = [f"# {title}", "", f"{len(done_keys(rows))} targets. Label `all`: the union of the foreground "
             "labels (the whole organ). Apex, mid, base: inferior, middle and superior thirds of the "
             "truth's organ along the patient's S axis (seed 004).", "", header,
             "|" + "---|" * header.count(" | ") + "---|"]
    lines += [_summary_line(key, group) for key, group in grouped(rows).items()]
    return "\n".join(lines) + "\n"


def write_summary(rows: Sequence[Row], path: Path, title: str = "Evaluation") -> None:
    """Write :func:`summary_markdown` atomically."""
    with atomic_path(Path(path), ".md") as temp:
        temp.write_text(summary_markdown(rows, title), encoding="utf-8")


def _boxes(axis, rows: Sequence[Row], column: str, groups: list[tuple[str, str]], labels: list[str]) -> None:
    colours = [f"C{n % 10}" for n in range(len(groups))]
    width = 0.8 / len(groups)
    for g, group in enumerate(groups):
        data, positions = [], []
        for n, label in enumerate(labels):
            values = _values([row for row in rows if (row["protocol"], row["group"]) == group
                              and row["label"] == label], column)
            if values:
                data.append(values)
                positions.append(n - 0.4 + width * (g + 0.5))
        if data:
            parts = axis.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                                 manage_ticks=False, medianprops={"color": "black"})
            for box in parts["boxes"]:
                box.set_facecolor(colours[g])
    axis.set_xticks(range(len(labels)), labels)
    axis.set_xlim(-0.6, len(labels) - 0.4)
    axis.grid(axis="y", alpha=0.3)


def write_boxplots(rows: Sequence[Row], path: Path) -> None:
    """``boxplots.png``: Dice (top) and HD95 in mm (bottom) per label, one box per group.

    Drawn on an Agg canvas object (no pyplot, no global backend switch); written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    groups = sorted({(row["protocol"], row["group"]) for row in rows})
    labels = sorted({row["label"] for row in rows}, key=_label_order)
    figure = Figure(figsize=(max(6.0, 1.0 + 0.5 * len(labels) * len(groups)), 7.0), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1)
    _boxes(top, rows, "dice", groups, labels)
    top.set_ylabel("Dice")
    top.set_ylim(0.0, 1.0)
    _boxes(bottom, rows, "hd95_mm", groups, labels)
    bottom.set_ylabel("HD95 (mm)")
    bottom.set_xlabel("label")
    top.legend(handles=[Patch(color=f"C{n % 10}", label=f"{p}: {g}") for n, (p, g) in enumerate(groups)],
               fontsize="small", loc="lower left")
    with atomic_path(Path(path), ".png") as temp:
        figure.savefig(temp, format="png", dpi=100)
