"""Benchmark: pairwise atlas -> target registration, side by side, on one machine (writes BENCHMARKS.md).

    python scripts/benchmark_registration.py [--cases brain,phantom,synthseg,synthetic] [--methods ...]
        [--quick] [--refine N] [--diffeo-model M] [--paper-model M] [--noinv-model M] [--device auto|cpu|cuda]
        [--out BENCHMARKS.md] [--json FILE] [--update-manifest]
    python scripts/benchmark_registration.py --from-json --json FILE [--out BENCHMARKS.md] [--update-manifest]
    either with [--gpu-from FILE]: the GPU columns of a separate run (``benchmark_speed.py --json FILE``)

Every method of :mod:`registration_methods` maps the atlas labels of every pair of
:mod:`registration_cases` onto its target grid; this script scores them (Dice, HD95), records the
field figures (% non-positive Jacobian, SDlogJ, inverse consistency) and wall clock, measures the
speed section (:mod:`benchmark_speed`), checks the targets (:mod:`benchmark_targets`), writes the
markdown (:mod:`benchmark_report`) and the raw numbers as JSON, and with ``--update-manifest`` writes
each bundled network's figures into ``models.json``. ``--from-json`` redraws the section from a
run's JSON (the verdicts recomputed by today's code), measuring nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch

from benchmark_report import write_markdown
from benchmark_speed import measure_speed
from benchmark_targets import group_means, mean, targets, values
from crossmodalmas import metrics, options
from crossmodalmas.models import ModelEntry, add_to_manifest, bundled_models_dir
from registration_cases import CASES, ROOT, Pair, group_labels, load_pairs
from registration_methods import (METHOD_OF_ROLE, METHODS, ROLE_OF, Mapped, build_methods, import_ants,
                                  resolve_models)

DEFAULT_MODELS = {"diffeo": "xmod-general-diffeo", "paper": "xmod-general-paper", "noinv": "xmod-general-paper-noinv"}
DEFAULT_REFINE = options.DEFAULT_REFINE["network"]  # what segment() does by default


def hd95_cropped(predicted: np.ndarray, truth: np.ndarray, label: int, spacing_kji) -> float:
    """:func:`crossmodalmas.metrics.hausdorff95` on the box of both masks plus one voxel: the same value
    (every surface voxel and its nearest match lie inside), a fraction of the work on large grids."""
    both = (predicted == label) | (truth == label)
    if not both.any():
        return 0.0
    found = np.argwhere(both)
    lo, hi = np.maximum(found.min(0) - 1, 0), np.minimum(found.max(0) + 2, both.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return metrics.hausdorff95(predicted[box], truth[box], label, spacing_kji)


def score(pair: Pair, predicted: np.ndarray) -> dict:
    """Dice per scored label and its mean; HD95 (mm) per label and its mean over the labels found in both
    (``hd95_missing``: how many scored labels the prediction lacks, HD95 infinite)."""
    truth = pair.truth.array
    if pair.groups:
        predicted, truth = group_labels(predicted, pair.groups), group_labels(truth, pair.groups)
    dice = metrics.dice(predicted, truth, pair.labels)
    hd95 = {label: hd95_cropped(predicted, truth, label, pair.truth.grid.spacing_kji) for label in pair.labels}
    finite = [v for v in hd95.values() if np.isfinite(v)]
    return {"dice": dice, "hd95_mm": {k: (v if np.isfinite(v) else None) for k, v in hd95.items()},
            "mean_dice": float(np.mean(list(dice.values()))),
            "mean_hd95_mm": float(np.mean(finite)) if finite else None,
            "hd95_missing": len(hd95) - len(finite)}


def _attempt(method: Callable[[Pair], Mapped], pair: Pair) -> Mapped:
    """``method(pair)``; a method that raises (ITK, an input it refuses) maps no label: it scores Dice 0
    on this pair rather than being left out of the means, and its error is kept."""
    try:
        return method(pair)
    except (RuntimeError, ValueError) as error:
        message = " ".join(str(error).split())[:300]
        print(f"    failed: {type(error).__name__}: {message}")
        return Mapped(np.zeros(pair.truth.array.shape, dtype=np.int32), extra={"error": message})


def run_pair(pair: Pair, methods: dict[str, Callable[[Pair], Mapped]]) -> dict:
    """Every method on one pair: scores, field figures, seconds (the wall clock of the method call)."""
    out = {}
    for name, method in methods.items():
        print(f"  {pair.name}: {name} ...")
        load, started = os.getloadavg()[0], time.perf_counter()
        mapped = _attempt(method, pair)
        seconds = time.perf_counter() - started
        out[name] = {**score(pair, mapped.labels), **mapped.figures(), "seconds": seconds,
                     "load_1min_before": load, **mapped.extra}
        print(f"    Dice {out[name]['mean_dice']:.3f}  {seconds:.1f} s  {out[name].get('device', 'cpu')}")
    return out


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def machine() -> dict:
    """CPU model, cores and library versions of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines() if Path("/proc/cpuinfo").is_file() else []
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor())
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip() if shutil.which("git") else ""
    return {"cpu": model, "cores": os.cpu_count(), "commit": commit or "unknown", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "antspyx": _version("antspyx"),
            "simpleitk": sitk.Version.VersionString(), "python": platform.python_version()}


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(float(value), 4)


def manifest_figures(results: list[dict], speed: dict, role: str, date: str) -> tuple[dict, dict]:
    """``(accuracy, inference_seconds)`` of the network of ``role`` (its method alone, no refinement)."""
    method = METHOD_OF_ROLE[role]
    accuracy = {"mean_dice": {g: _rounded(v) for g, v in group_means(results).get(method, {}).items()},
                **{key: _rounded(mean(values(results, method, key)))
                   for key in ("folding_percent", "sd_log_jacobian", "inverse_consistency_mm")},
                "benchmark": f"BENCHMARKS.md {date}"}
    gpu = (speed.get("gpu") or {}).get("networks", {}).get(role)
    network = speed.get("networks", {}).get(role)
    inference = {"cpu": _rounded(network["cpu_s"]) if network else None, "gpu": _rounded(gpu["one_s"]) if gpu else None}
    return accuracy, inference


def update_manifest(results: list[dict], speed: dict, entries: dict[str, ModelEntry], date: str,
                    folder: Path) -> list[str]:
    """Write the measured figures of each network bundled in ``folder`` into its ``models.json`` entry
    (``accuracy`` keeps its other keys, e.g. training's validation); returns the names updated."""
    updated = []
    for role, entry in entries.items():
        method = METHOD_OF_ROLE[role]
        if entry.folder is None or Path(entry.folder).resolve() != Path(folder).resolve():
            print(f"--update-manifest: {entry.name} is not a bundled model of {folder}; left alone")
        elif not any(method in e["methods"] for e in results):
            print(f"--update-manifest: {method} did not run; {entry.name} left alone")
        else:
            accuracy, inference = manifest_figures(results, speed, role, date)
            add_to_manifest(dataclasses.replace(entry, accuracy={**entry.accuracy, **accuracy},
                                                inference_seconds=inference), folder)
            updated.append(entry.name)
    return updated


def _subset(parser: argparse.ArgumentParser, flag: str, text: str, known) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        parser.error(f"{flag}: unknown {unknown}; choose from {list(known)}")
    return chosen


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--diffeo-model``, ``--paper-model``, ``--noinv-model``: the networks of each role."""
    for role, name in DEFAULT_MODELS.items():
        parser.add_argument(f"--{role}-model", default=name, help=f"bundled name or entry .json (default {name})")


def chosen_models(args: argparse.Namespace) -> dict[str, str]:
    """``{role: name}`` of the networks :func:`add_model_arguments`' flags chose."""
    return {role: getattr(args, f"{role}_model") for role in DEFAULT_MODELS}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="one pair per set, one map per synthetic source")
    parser.add_argument("--refine", type=int, default=DEFAULT_REFINE, help="iterations of net-diffeo+refine")
    add_model_arguments(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device of ours")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown report")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmark_out" / "registration.json", help="raw numbers")
    parser.add_argument("--update-manifest", action="store_true",
                        help="write the bundled networks' measured figures into models.json")
    parser.add_argument("--from-json", action="store_true",
                        help="redraw --out from an earlier run's --json (targets recomputed), measuring nothing")
    parser.add_argument("--gpu-from", type=Path, metavar="FILE",
                        help="the GPU columns from a separate run on a machine with a GPU (benchmark_speed.py --json)")
    args = parser.parse_args(argv)
    args.cases = _subset(parser, "--cases", args.cases, CASES)
    args.methods = _subset(parser, "--methods", args.methods, METHODS)
    if args.refine < 0:
        parser.error(f"--refine: must be >= 0, got {args.refine}")
    return args


def _info(args, argv, results: list[dict], names: dict[str, str]) -> dict:
    ours = [m for e in results for k, m in e["methods"].items() if k == "instance-opt" or k in ROLE_OF]
    return {**machine(), "date": datetime.date.today().isoformat(),
            "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
            "ours_device": ours[0]["device"] if ours else args.device, "refine": args.refine, "models": names,
            "quick": args.quick,
            "peak_load": max((m["load_1min_before"] for r in results for m in r["methods"].values()), default=0.0)}


def redraw(args) -> int:
    """``--from-json``: the section of an earlier run, from its raw numbers, with today's report code."""
    saved = json.loads(args.json.read_text(encoding="utf-8"))
    results, speed, info = saved["results"], with_gpu_from(saved["speed"], args.gpu_from), saved["machine"]
    write_markdown(args.out, results, speed, targets(results, speed), info)
    print(f"redrew {args.out} from {args.json} (run of {info['date']}, code at {info['commit']})")
    if args.update_manifest:
        entries = resolve_models(info["models"])
        print(f"updated in models.json: {update_manifest(results, speed, entries, info['date'], bundled_models_dir())}")
    return 0


def with_gpu_from(speed: dict, path: Optional[Path]) -> dict:
    """``speed`` with the GPU columns of the separate run saved at ``path`` (None: as it is)."""
    if path is None:
        return speed
    return {**speed, "gpu": json.loads(path.read_text(encoding="utf-8"))}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return redraw(args)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up when piped to a log
    ants = import_ants() if "syn" in args.methods else None
    names = chosen_models(args)
    entries = resolve_models(names)
    pairs = load_pairs(args.cases, args.quick)
    if not pairs:
        print("no case to run")
        return 0
    with tempfile.TemporaryDirectory(prefix="benchmark-registration-") as workdir:
        methods = build_methods(args.methods, ants, names, entries, args.refine, args.device, Path(workdir))
        results = [{"case": p.case, "group": p.group, "pair": p.name, "cross": p.cross, **p.extra,
                    "methods": run_pair(p, methods)} for p in pairs]
    speed = with_gpu_from(measure_speed(entries, results, names), args.gpu_from)
    checked = targets(results, speed)
    info = _info(args, argv, results, names)
    write_markdown(args.out, results, speed, checked, info)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "results": results, "speed": speed,
                                     "targets": [dataclasses.asdict(t) for t in checked]}, indent=1, default=str),
                         encoding="utf-8")
    if args.update_manifest:
        print(f"updated in models.json: {update_manifest(results, speed, entries, info['date'], bundled_models_dir())}")
    print(f"wrote {args.out} and {args.json}; targets met: {sum(t.met is True for t in checked)} of {len(checked)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
