"""The training benchmark's Markdown section and its fine-tuning figure (from benchmark_training.py's report)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DATASETS = {
    "prostate": "the 32 MSD Task05 prostate label maps of `../shared/data`, each rendered as a synthetic T2 and "
                "ADC image (two modalities per subject; pairs are T2 -> ADC or ADC -> T2 of two subjects), cropped "
                "around the gland plus 10 mm; held out: the label sources' evaluation maps (every fifth), which "
                "no bundled model trained on",
    "phantom": "CT/MR heart phantoms (`crossmodalmas.phantom_dataset`), cropped around the LV myocardium plus 10 mm",
}


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _header(report: dict) -> list[str]:
    m = report["machine"]
    return ["# Benchmarks: training", "",
            f"`{' '.join(['python scripts/benchmark_training.py', *report['argv']])}`, {m['date']}, "
            f"code at `{m.get('commit')}`; machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}, "
            f"GPU: {m.get('gpu') or 'none lent to this run'}. The load columns are the machine's 1-minute load "
            f"average before and after each measurement: above {m.get('cores')}, other processes were sharing the "
            "cores and the rates are lower than the machine alone gives.", ""]


def _throughput(report: dict) -> list[str]:
    settings = report["settings"]
    lines = ["## Throughput", "",
             f"`train-registration` with the recipe of the bundled network and "
             f"{'its architecture' if not settings.get('throughput_net') else 'a tiny network'} at {settings['shape']}³, "
             "batch 1 per process; rates between the first and last logged training steps (start-up and "
             "validation left out). Two processes run under `torchrun` (gloo on CPU) with one thread each and "
             "average their gradients, so one step trains on two pairs.", "",
             "| device | processes | pairs | workers | threads / process | steps/s | pairs/s | GPU utilisation "
             "| load before / after |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in report["throughput"]:
        gpu = "n/a" if row["gpu_utilisation_percent"] is None else f"{row['gpu_utilisation_percent']:.0f} %"
        lines.append(f"| {row['device']} | {row['processes']} | {row['pairs']} | {row['workers']} | "
                     f"{row['threads'] or 'default'} | {_fmt(row['steps_per_s'], 2)} | {_fmt(row['pairs_per_s'], 2)} | "
                     f"{gpu} | {_load(row)} |")
    return lines + [""]


def _load(row: dict) -> str:
    """The 1-minute load averages around a measurement ("n/a" in reports that predate them)."""
    values = row.get("load_average") or [None, None]
    return " / ".join(_fmt(value, 1) for value in values)


def _curve(report: dict, figure: Path, markdown: Path) -> list[str]:
    curve = report["curve"]
    runs = curve["runs"]
    relative = os.path.relpath(figure, Path(markdown).parent)
    lines = ["## Fine-tuning against training from scratch", "",
             f"Real pairs only (`real_fraction` 1): {DATASETS[report['dataset']]}. Both runs use the recipe of "
             f"`{curve['init']}` at {curve['shape']}³ on {curve['device'].upper()}, {curve.get('threads') or 'default'} thread(s) "
             f"(learning rate {curve['learning_rate']}, the same seed and "
             f"pairs), {curve['steps']} steps; one starts from `{curve['init']}` (`--init`), the other from a "
             "random start. Validation Dice: mean over the held-out pairs and their labels of the atlas labels "
             "warped by U against the target's. Threshold: "
             f"{100 * curve['threshold_share']:.0f} % of the fine-tuned run's final Dice = {curve['threshold']:.3f}.", "",
             "| run | Dice before registration | Dice at step 0 | final Dice | steps to the threshold | training s "
             "| load before / after |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, run in runs.items():
        reached = run["steps_to_threshold"]
        reached = str(reached) if reached is not None else f"not reached in {curve['steps']}"
        lines.append(f"| {name} | {_fmt(run['val_dice_before_registration'])} | {_fmt(run['val_dice'][0])} | "
                     f"{_fmt(run['val_dice'][-1])} | {reached} | {run['seconds']:.0f} | {_load(run)} |")
    return lines + ["", f"![validation Dice against steps]({relative})", ""]


def section(report: dict, figure: Path, markdown: Path) -> list[str]:
    """The lines of BENCHMARKS.md's "training" section."""
    return _header(report) + _throughput(report) + _curve(report, figure, markdown)


def curve_figure(report: dict, path: Path) -> Path:
    """Validation Dice against steps for both runs, with the threshold and the unregistered Dice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = report["curve"]
    figure = Figure(figsize=(6.5, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for name, run in curve["runs"].items():
        axes.plot(run["steps"], run["val_dice"], marker="o", markersize=3, label=name)
    before = curve["runs"]["fine-tuned"]["val_dice_before_registration"]
    axes.axhline(before, color="grey", linestyle=":", label="before registration")
    axes.axhline(curve["threshold"], color="black", linestyle="--", linewidth=0.8, label=f"{100 * curve['threshold_share']:.0f} % of fine-tuned final")
    axes.set_xlabel("step")
    axes.set_ylabel("validation Dice (real pairs)")
    axes.set_title(f"fine-tuning {curve['init']} vs from scratch ({report['dataset']})")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
