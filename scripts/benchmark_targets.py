"""The registration benchmark's verdicts and summaries, computed from its results (never hand-written).

``results`` is the run's list of pairs, each ``{"case", "group", "pair", "cross", "methods": {method:
{"mean_dice", "folding_percent", "sd_log_jacobian", "inverse_consistency_mm", "seconds", ...}}}``;
``speed`` is :func:`benchmark_speed.measure_speed`'s dict. A figure that was not measured (a
method skipped, no SyN, no GPU) gives a target the verdict None ("not measured"), never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

DICE_MARGIN = 0.05  # network >= SyN + this on the held-out synthetic pairs
CPU_PASS_LIMIT_S, GPU_BATCH_LIMIT_S, SPEEDUP_MIN = 3.0, 1.0, 50.0
DIFFEO_FOLDING_MAX, PAPER_FOLDING_MAX, ICE_RATIO_MAX = 0.01, 0.5, 0.5
SYNTH_CPU_LIMIT_S, SYNTH_GPU_LIMIT_S = 5.0, 0.5  # "a few seconds" on the CPU, "well under a second" on a GPU
NETWORK_METHODS = ("net-paper", "net-diffeo", "net-diffeo+refine")
DIFFEO_METHODS = ("net-diffeo", "net-diffeo+refine")
OASIS_PLAIN, OASIS_INVERTED = "oasis A->B", "oasis A(inverted)->B"
Where = Callable[[dict], bool]


@dataclass
class Target:
    """One target: what is required, of which method or network, what was measured, and whether it held."""

    requirement: str
    subject: str
    measured: str
    met: Optional[bool]


def is_synthetic(entry: dict) -> bool:
    return entry["case"] == "synthetic"


def mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def values(results: list[dict], method: str, key: str, where: Optional[Where] = None) -> list[float]:
    """``key`` of ``method`` over the pairs (``where`` selects them) where it ran and is not None."""
    found = [e["methods"][method].get(key) for e in results
             if method in e["methods"] and (where is None or where(e))]
    return [v for v in found if v is not None]


def paired(results: list[dict], method: str, other: str, key: str = "mean_dice",
           where: Optional[Where] = None) -> tuple[list[float], list[float]]:
    """``key`` of both methods over the pairs where both ran (same order)."""
    both = [e for e in results if method in e["methods"] and other in e["methods"] and (where is None or where(e))]
    return [e["methods"][method][key] for e in both], [e["methods"][other][key] for e in both]


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _versus_syn(ours: float, syn: float) -> str:
    """``ours vs SyN syn`` to 3 decimals, or to 4 where those would show two unequal figures as
    one (a verdict between two equal-looking numbers reads as an error)."""
    digits = 4 if ours != syn and _fmt(ours) == _fmt(syn) else 3
    return f"{_fmt(ours, digits)} vs SyN {_fmt(syn, digits)}"


def _dice_targets(results: list[dict]) -> list[Target]:
    out = []
    for method in NETWORK_METHODS:
        ours, syn = paired(results, method, "syn", where=is_synthetic)
        met = None if not ours else mean(ours) >= mean(syn) + DICE_MARGIN
        measured = (f"{_versus_syn(mean(ours), mean(syn))} ({len(ours)} pairs)" if ours
                    else "not measured (method or SyN not run on the synthetic pairs)")
        out.append(Target(f"mean Dice >= SyN + {DICE_MARGIN} on the held-out synthetic pairs", method, measured, met))
        for pair in (OASIS_PLAIN, OASIS_INVERTED):
            ours, syn = paired(results, method, "syn", where=lambda e, p=pair: e["pair"] == p)
            out.append(Target(f"Dice >= SyN on `{pair}`", method,
                              _versus_syn(ours[0], syn[0]) if ours else "not measured",
                              ours[0] >= syn[0] if ours else None))
    return out


def _speed_targets(speed: dict) -> list[Target]:
    out, syn, gpu = [], speed.get("syn_brain_s_per_atlas"), speed.get("gpu")
    shape = "x".join(str(s) for s in speed.get("shape", ()))
    for role, name in speed.get("models", {}).items():
        net = speed.get("networks", {}).get(role)
        if net is None:
            out.append(Target("one pass on the CPU; SyN / network; the GPU batch", name,
                              "not measured (model not found)", None))
            continue
        out.append(Target(f"one pass, one atlas, {shape}, CPU < {CPU_PASS_LIMIT_S:g} s", net["name"],
                          f"{net['cpu_s']:.2f} s (torch threads: {speed['threads']})", net["cpu_s"] < CPU_PASS_LIMIT_S))
        ratio = None if syn is None else syn / net["cpu_s"]
        out.append(Target(f"SyN s per atlas / one pass on the CPU >= {SPEEDUP_MIN:g}", net["name"],
                          f"{_fmt(syn, 1)} s / {net['cpu_s']:.2f} s = {_fmt(ratio, 1)}" if ratio is not None else
                          "not measured (no SyN on the brain pairs)", None if ratio is None else ratio >= SPEEDUP_MIN))
        batch = None if gpu is None else gpu["networks"].get(role, {}).get("batch_s")
        out.append(Target(f"{speed.get('gpu_atlases')} atlases in one batch on an H100 < {GPU_BATCH_LIMIT_S:g} s",
                          net["name"], "no GPU was lent to this run" if gpu is None else
                          f"{_fmt(batch, 3)} s on {gpu['device_name']}",
                          None if batch is None or "H100" not in gpu["device_name"] else batch < GPU_BATCH_LIMIT_S))
    synth = "x".join(str(s) for s in speed.get("synth_shape", ()))
    if "synth_cpu_s" in speed:
        out.append(Target(f"`synth_pair` at {synth} on the CPU <= {SYNTH_CPU_LIMIT_S:g} s", "synth_pair",
                          f"{speed['synth_cpu_s']:.2f} s", speed["synth_cpu_s"] <= SYNTH_CPU_LIMIT_S))
        out.append(Target(f"`synth_pair` at {synth} on an H100 < {SYNTH_GPU_LIMIT_S:g} s", "synth_pair",
                          "no GPU was lent to this run" if gpu is None else f"{gpu['synth_s']:.3f} s on "
                          f"{gpu['device_name']}", None if gpu is None or "H100" not in gpu["device_name"]
                          else gpu["synth_s"] < SYNTH_GPU_LIMIT_S))
    return out


def _field_targets(results: list[dict]) -> list[Target]:
    out = []
    for method, limit in [(m, DIFFEO_FOLDING_MAX) for m in DIFFEO_METHODS] + [("net-paper", PAPER_FOLDING_MAX)]:
        folding = values(results, method, "folding_percent")
        out.append(Target(f"% non-positive Jacobian < {limit:g} % on every pair", method,
                          f"worst {max(folding):.4f} %, mean {mean(folding):.4f} % ({len(folding)} pairs)"
                          if folding else "not measured", max(folding) < limit if folding else None))
    paper, noinv = paired(results, "net-paper", "net-paper-noinv", "inverse_consistency_mm", is_synthetic)
    ratio = mean(paper) / mean(noinv) if paper and mean(noinv) else None
    out.append(Target(f"inverse-consistency error <= {ICE_RATIO_MAX:g} x the network trained without it "
                      "(synthetic pairs)", "net-paper vs net-paper-noinv",
                      f"{_fmt(mean(paper))} / {_fmt(mean(noinv))} mm = {_fmt(ratio, 2)}" if ratio is not None
                      else "not measured", None if ratio is None else ratio <= ICE_RATIO_MAX))
    return out


def targets(results: list[dict], speed: dict) -> list[Target]:
    """Every target of the issue with its measured figure and verdict."""
    return _dice_targets(results) + _field_targets(results) + _speed_targets(speed)


def group_means(results: list[dict], key: str = "mean_dice") -> dict[str, dict[str, float]]:
    """``{method: {group: mean key}}`` over the pairs of each group, plus ``"synthetic (all)"``."""
    out: dict[str, dict[str, float]] = {}
    methods = list(dict.fromkeys(m for e in results for m in e["methods"]))
    groups = list(dict.fromkeys(e["group"] for e in results))
    for method in methods:
        row = {g: mean(values(results, method, key, lambda e, g=g: e["group"] == g)) for g in groups}
        if any(is_synthetic(e) for e in results):
            row["synthetic (all)"] = mean(values(results, method, key, is_synthetic))
        out[method] = {g: v for g, v in row.items() if v is not None}
    return out


def ablation(results: list[dict]) -> dict:
    """Paper mode with vs without the invertibility loss, over the synthetic pairs both ran on."""
    out = {"pairs": 0}
    for key in ("inverse_consistency_mm", "folding_percent", "mean_dice"):
        paper, noinv = paired(results, "net-paper", "net-paper-noinv", key, is_synthetic)
        out["pairs"] = len(paper)
        out[key] = {"net-paper": mean(paper), "net-paper-noinv": mean(noinv),
                    "ratio": mean(paper) / mean(noinv) if paper and mean(noinv) else None}
    return out


def coarse_grid_cost(results: list[dict]) -> dict[str, dict]:
    """Mean Dice of ``net-diffeo`` (training scale) vs ``net-diffeo@working-grid`` per group and overall."""
    groups = list(dict.fromkeys(e["group"] for e in results)) + ["all"]
    out = {}
    for group in groups:
        coarse, full = paired(results, "net-diffeo", "net-diffeo@working-grid",
                              where=None if group == "all" else (lambda e, g=group: e["group"] == g))
        if coarse:
            out[group] = {"pairs": len(coarse), "training scale": mean(coarse), "working grid": mean(full),
                          "cost": mean(full) - mean(coarse)}
    return out
