"""The fusion benchmark's Markdown section and its atlas-count figure (from benchmark_fusion.py's JSON)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

CROSS_MODALITY = ("brain", "prostate", "heart", "abdomen")  # every atlas of another contrast than the target
METHOD_NAMES = {"mv": "majority vote", "nlwv": "NLWV (MIND-SSC)", "loa": "label overlap (global)",
                "loa-local": "label overlap (15³ windows)", "plf": "PLF (similarity net)",
                "staple": "STAPLE (SimpleITK)", "jlf": "joint label fusion (antspyx)"}


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def method_means(tasks: list[dict], groups) -> dict[str, dict[str, Optional[float]]]:
    """``{method: {mean_dice, hd95_mm, seconds}}`` over the tasks of ``groups``."""
    chosen = [t for t in tasks if t["group"] in groups]
    methods = list(dict.fromkeys(m for t in chosen for m in t["methods"]))
    return {m: {key: _mean([t["methods"][m][key] for t in chosen if m in t["methods"]])
                for key in ("mean_dice", "hd95_mm", "seconds")} for m in methods}


def _verdict(met: Optional[bool]) -> str:
    return "not measured" if met is None else ("met" if met else "**missed**")


def targets(report: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows."""
    cross = method_means(report["tasks"], CROSS_MODALITY)
    plf = (cross.get("plf") or {}).get("mean_dice")
    rows = []
    for other, margin, label in (("mv", 0.01, "PLF >= majority vote + 0.01 Dice"), ("nlwv", 0.0, "PLF >= NLWV"),
                                 ("jlf", 0.0, "PLF >= joint label fusion")):
        value = (cross.get(other) or {}).get("mean_dice")
        met = None if plf is None or value is None else plf >= value + margin
        rows.append((f"{label} (cross-modality tasks)", f"{_fmt(plf)} vs {_fmt(value)}", _verdict(met)))
    speed = report["speed"]
    worst_fuse = max(speed["fuse_s"][m] for m in ("mv", "loa", "plf"))
    rows.append((f"fusion (mv, loa, plf) of {speed['atlases']} atlases at {'x'.join(map(str, speed['shape']))} < 5 s",
                 ", ".join(f"{m} {_fmt(s, 2)} s" for m, s in speed["fuse_s"].items()), _verdict(worst_fuse < 5.0)))
    worst_refuse = max(speed["refuse_s"].values())
    rows.append((f"re-fusion with one atlas unticked, {speed['atlases']} atlases at "
                 f"{'x'.join(map(str, speed['shape']))} < 1 s",
                 ", ".join(f"{m} {_fmt(s, 2)} s" for m, s in speed["refuse_s"].items()), _verdict(worst_refuse < 1.0)))
    rho = _mean([t["similarity"]["spearman"] for t in report["tasks"] if t["group"] in CROSS_MODALITY])
    rows.append(("Spearman rho of PLF weights vs patch label Dice >= 0.6 (mean over cross-modality tasks)",
                 _fmt(rho), _verdict(None if rho is None else rho >= 0.6)))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def _selection_rows(tasks: list[dict]) -> list[list[str]]:
    rows = []
    for method in ("mv", "loa", "plf"):
        curves = [t["curve"][method] for t in tasks if "curve" in t]
        if not curves:
            continue
        selected = np.mean([c["selected"] for c in curves], axis=0)
        random = np.mean([c["random"] for c in curves], axis=0)
        picks = [n for n in (1, 2, 4) if n <= len(selected)]
        rows.append([METHOD_NAMES[method], *[f"{_fmt(selected[n - 1])} / {_fmt(random[n - 1])}" for n in picks],
                     _fmt(selected[-1])])
    return rows


def plot_curves(tasks: list[dict], path: Path) -> Path:
    """Mean Dice against the number of atlases, selection on (solid) and off (dashed), per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for method in ("mv", "loa", "plf"):
        curves = [t["curve"][method] for t in tasks if "curve" in t]
        if not curves:
            continue
        counts = np.arange(1, len(curves[0]["selected"]) + 1)
        line, = axes.plot(counts, np.mean([c["selected"] for c in curves], axis=0), label=f"{method}, selected")
        axes.plot(counts, np.mean([c["random"] for c in curves], axis=0), "--", color=line.get_color(),
                  label=f"{method}, random")
    axes.set_xlabel("number of atlases")
    axes.set_ylabel("mean Dice")
    axes.set_title("Fusion vs number of atlases (synthetic cross-modality tasks)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path


def fusion_markdown(report: dict, figure: Optional[Path], folder: Path) -> list[str]:
    m = report["machine"]
    tasks = report["tasks"]
    lines = ["# Benchmarks: label fusion", "",
             f"Run on {m.get('date', '')} with `python scripts/benchmark_fusion.py {' '.join(report['argv'])}`; "
             f"code at `{m.get('commit')}`; machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}, "
             f"antspyx {m.get('antspyx')}, SimpleITK {m.get('simpleitk')}, GPU: {m.get('gpu') or 'none lent to this run'}. "
             "Every method fuses the same warped atlases (one registration per task by the default network + "
             "refinement); Dice and HD95 on the target's own grid, means over its labels; seconds of the fusion "
             "alone.", "", "## Targets", ""]
    lines += _table(["target", "measured", "verdict"], [list(r) for r in targets(report)])
    lines += ["## Mean over tasks", ""]
    header = ["method"] + [f"{g} Dice / HD95 mm / s" for g in ("cross-modality", "oasis")]
    groups = {"cross-modality": method_means(tasks, CROSS_MODALITY), "oasis": method_means(tasks, ("oasis",))}
    methods = list(dict.fromkeys(k for g in groups.values() for k in g))
    lines += _table(header, [[METHOD_NAMES.get(k, k)] + [
        " / ".join(_fmt(groups[g].get(k, {}).get(key), d) for key, d in (("mean_dice", 3), ("hd95_mm", 1), ("seconds", 2)))
        for g in groups] for k in methods])
    lines += ["## Per task (mean Dice)", ""]
    lines += _table(["task", "atlases"] + [METHOD_NAMES.get(k, k) for k in methods] + ["PLF rho"],
                    [[t["task"], str(t["atlases"])] + [_fmt(t["methods"].get(k, {}).get("mean_dice")) for k in methods]
                     + [_fmt(t["similarity"]["spearman"])] for t in tasks])
    selection = _selection_rows(tasks)
    if selection:
        lines += ["## Atlas selection: best n by score / random n (mean Dice)", ""]
        lines += _table(["method", "n = 1", "n = 2", "n = 4", "all 8"][:len(selection[0])], selection)
    if figure is not None:
        lines += [f"![Dice against the number of atlases]({os.path.relpath(figure, folder)})", ""]
    speed = report["speed"]
    lines += [f"Fusion speed: {speed['atlases']} atlases on {'x'.join(map(str, speed['shape']))} voxels "
              f"({100 * speed['disagreeing_fraction']:.0f}% of them where the atlases disagree).", ""]
    return lines
