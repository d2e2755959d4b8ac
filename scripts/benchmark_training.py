"""Benchmark: training throughput and fine-tuning against training from scratch (a section of BENCHMARKS.md).

    python scripts/benchmark_training.py [--quick] [--shape N] [--curve-steps N] [--processes 1,2]
        [--out BENCHMARKS.md] [--json benchmark_training.json] [--figure docs/training_curve.png] [--work DIR]

Throughput: steps per second of ``crossmodalmas train-registration`` (the bundled network's
architecture and recipe, at ``--shape``³) on synthetic pairs and on a dataset's real pairs, on
the CPU with 1 process (one thread, and all cores) and 2 processes (``torchrun``, gloo, one
thread each), and on
CUDA where torch sees a GPU, with the pairs made in the main process and by DataLoader workers,
and the GPU's mean utilisation meanwhile. Rates are taken between the first and the last
training-loss row of ``log.csv`` (start-up, label banks and validations left out).

Fine-tuning: validation Dice against steps of a run that starts from ``xmod-general-diffeo``
(``--init``) and of the same run from scratch, on real pairs only: two-contrast prostate images
made from ``../shared/data`` (:mod:`training_cases`; heart phantoms where it is absent); and how
many steps each needs to reach 95 % of the fine-tuned run's final Dice.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from benchmark_registration import machine
from markdown_sections import replace_section
from registration_cases import DATA, ROOT
from training_cases import benchmark_dataset
from training_report import curve_figure, section
from crossmodalmas.models import find_model, load_network
from crossmodalmas.nets import build_network
from crossmodalmas.train.config import TrainRegistrationConfig
from crossmodalmas.train.fine_tune import init_recipe
from crossmodalmas.train.pair_feed import resolve_workers
from crossmodalmas.train.real_pairs import open_real_pairs
from crossmodalmas.train.registration import ARCHITECTURE, train_registration
from crossmodalmas.train.validation import validate

INIT = "xmod-general-diffeo"
THRESHOLD = 0.95  # of the fine-tuned run's final Dice


@dataclass(frozen=True)
class Settings:
    """Sizes of a benchmark run; ``throughput_net`` None is the bundled network's architecture."""

    shape: int
    throughput_steps: int
    curve_steps: int
    validate_every: int
    validation_pairs: int
    processes: tuple
    throughput_net: Optional[dict] = None
    all_cores: bool = True  # also one process with every core (besides one thread)
    gpu_steps: int = 200  # a GPU step is short: more of them, so that start-up weighs little in its utilisation


FULL = Settings(shape=48, throughput_steps=30, curve_steps=200, validate_every=20, validation_pairs=8, processes=(1, 2))
QUICK = Settings(shape=16, throughput_steps=20, curve_steps=1, validate_every=1, validation_pairs=1, processes=(1,),
                 throughput_net={"channels": [4, 8], "output_level": 0, "input_downsample": 2}, all_cores=False,
                 gpu_steps=20)


def base_config(settings: Settings, dataset: Path, crop_labels: list[int], quick: bool) -> dict:
    """The bundled model's recipe (network, loss, synthetic ranges) at the benchmark's size."""
    values = init_recipe(INIT, "registration")
    sources = ["shapes"] if quick else (values["sources"] if DATA.is_dir() else ["heart", "shapes"])
    values.update(init=None, name="bench", shape=[settings.shape] * 3, sources=sources,
                  data_root=str(DATA) if DATA.is_dir() else None, dataset=str(dataset), crop_labels=crop_labels,
                  crop_margin_mm=10.0, checkpoint_minutes=1e6, device="auto", workers=0, threads=None)
    return values


class GpuSampler:
    """The GPU's utilisation (%), sampled every 0.2 s in a thread while the ``with`` block runs:
    :func:`torch.cuda.utilization` (NVML), else ``nvidia-smi``; None without a GPU or either."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> Optional[float]:
        if not torch.cuda.is_available():
            return None
        try:
            return float(torch.cuda.utilization())
        except (ModuleNotFoundError, RuntimeError):  # no pynvml: ask nvidia-smi
            if shutil.which("nvidia-smi") is None:
                return None
            done = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True)
            return float(done.stdout.split()[0]) if done.returncode == 0 and done.stdout.strip() else None

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> Optional[float]:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def loss_rows(folder: Path) -> list[tuple[int, float]]:
    """``(step, seconds)`` of the training-loss rows of a run's ``log.csv``."""
    with (folder / "log.csv").open(newline="") as handle:
        return [(int(row["step"]), float(row["seconds"])) for row in csv.DictReader(handle) if row["loss"]]


def rate(rows: list[tuple[int, float]]) -> Optional[float]:
    """Steps per second between the first and the last row (None with fewer than two)."""
    if len(rows) < 2 or rows[-1][1] <= rows[0][1]:
        return None
    return (rows[-1][0] - rows[0][0]) / (rows[-1][1] - rows[0][1])


def _train(values: dict, out: Path, processes: int) -> None:
    """One run: in this process, or under torchrun with ``processes`` processes."""
    if processes == 1:
        train_registration(TrainRegistrationConfig.from_dict(values), out, show_progress=False)
        return
    config = out.with_suffix(".json")
    config.write_text(json.dumps(values))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "crossmodalmas", "train-registration", "--config", str(config), "--out", str(out), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed ({done.returncode}): {done.stderr[-2000:]}")


def measure(values: dict, work: Path, processes: int, pairs: str, device: str, workers: Optional[int],
            threads: Optional[int] = None) -> dict:
    """Steps and pairs per second of one run (and the GPU's utilisation on CUDA); ``workers``
    None is the run's default for the device (:func:`crossmodalmas.train.pair_feed.resolve_workers`);
    ``threads`` per process (None: torch's default)."""
    workers = resolve_workers(workers, torch.device(device))
    name = f"{device}-{processes}p-{threads}t-{pairs}-w{workers}"
    run = {**values, "device": device, "workers": workers, "threads": threads,
           "real_fraction": 1.0 if pairs == "real" else 0.0, "validation_pairs": 1}
    before = load_average()
    with GpuSampler() as gpu:
        _train(run, work / name, processes)
    steps = rate(loss_rows(work / name))
    print(f"benchmark_training: {name}: {steps and round(steps, 3)} steps/s", flush=True)
    return {"device": device, "processes": processes, "pairs": pairs, "workers": workers, "threads": threads,
            "batch_size": run["batch_size"], "steps_per_s": steps,
            "pairs_per_s": steps * run["batch_size"] * processes if steps else None,
            "gpu_utilisation_percent": gpu.mean if device == "cuda" else None,
            "load_average": [before, load_average()]}


def load_average() -> Optional[float]:
    """The machine's 1-minute load average (None where the OS gives none): above the core count,
    other processes were taking CPU time from the measurement."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def throughput(settings: Settings, values: dict, work: Path) -> list[dict]:
    """Every throughput measurement of the benchmark."""
    values = {**values, "steps": settings.throughput_steps, "validate_every": settings.throughput_steps,
              "net": settings.throughput_net or values["net"]}
    cores = (os.cpu_count() or 1) if settings.all_cores else 1
    # One process with one thread and with every core; several with one thread each (torchrun's default).
    setups = [(1, threads) for threads in sorted({1, cores})] + [(n, 1) for n in settings.processes if n > 1]
    out = [measure(values, work, processes, pairs, "cpu", 0, threads)
           for processes, threads in setups if processes in settings.processes for pairs in ("synthetic", "real")]
    if torch.cuda.is_available():
        steps = settings.gpu_steps
        on_gpu = {**values, "steps": steps, "validate_every": steps}
        out += [measure(on_gpu, work, 1, pairs, "cuda", workers)
                for pairs in ("synthetic", "real") for workers in (0, None)]
    return out


def _dice_at_start(values: dict, init: bool) -> dict:
    """The validation figures before the first step: the bundled weights, or the seeded random start."""
    config = TrainRegistrationConfig.from_dict(values)
    pairs = open_real_pairs(config).validation_pairs(config.validation_pairs, config.seed + 1, "cpu")
    if init:
        net = load_network(find_model(INIT, "registration"))
    else:
        torch.manual_seed(config.seed)  # as a run builds its network
        net = build_network(ARCHITECTURE, config.net.to_dict())
    return validate(net, pairs)


def curve_run(values: dict, work: Path, name: str, init: bool) -> dict:
    """One real-pairs run's validation Dice against steps (step 0 measured before training)."""
    run = {**values, "real_fraction": 1.0, "init": INIT if init else None, "name": name}
    start = _dice_at_start(run, init)
    before = load_average()
    train_registration(TrainRegistrationConfig.from_dict(run), work / name, show_progress=False)
    with (work / name / "log.csv").open(newline="") as handle:
        points = [(int(r["step"]), float(r["val_real_dice"])) for r in csv.DictReader(handle) if r["val_real_dice"]]
    seconds = json.loads((work / name / "model.json").read_text(encoding="utf-8"))["training"]["seconds"]
    return {"steps": [0] + [s for s, _ in points], "val_dice": [start["val_dice"]] + [d for _, d in points],
            "val_dice_before_registration": start["val_dice_before"], "seconds": seconds,
            "load_average": [before, load_average()]}


def steps_to(run: dict, threshold: float) -> Optional[int]:
    """The first validated step whose Dice reaches ``threshold`` (None: never)."""
    return next((s for s, d in zip(run["steps"], run["val_dice"]) if d >= threshold), None)


def fine_tune_curve(settings: Settings, values: dict, work: Path) -> dict:
    """Both curve runs. One thread each: on a shared machine torch's OpenMP threads wait for each
    other spinning when the cores are busy (measured here: 2 threads ran a step 5-30 times slower
    than alone), and the curve is about Dice against steps, not speed."""
    values = {**values, "steps": settings.curve_steps, "validate_every": settings.validate_every,
              "validation_pairs": settings.validation_pairs, "threads": 1}
    runs = {"fine-tuned": curve_run(values, work, "fine-tuned", True),
            "scratch": curve_run(values, work, "scratch", False)}
    threshold = THRESHOLD * runs["fine-tuned"]["val_dice"][-1]
    for run in runs.values():
        run["steps_to_threshold"] = steps_to(run, threshold)
    return {"init": INIT, "shape": settings.shape, "steps": settings.curve_steps,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": 1,
            "learning_rate": values["learning_rate"], "threshold_share": THRESHOLD, "threshold": threshold,
            "runs": runs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and phantom data: checks the harness in seconds")
    parser.add_argument("--shape", type=int, help="training grid side (default 48; quick 16)")
    parser.add_argument("--curve-steps", type=int, help="steps of each fine-tuning run (default 300)")
    parser.add_argument("--processes", help="process counts for the CPU throughput, e.g. 1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmark_training.json")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "training_curve.png")
    parser.add_argument("--work", type=Path, help="folder for the datasets and runs (default: a temporary one, removed)")
    parser.add_argument("--from-json", type=Path, metavar="FILE",
                        help="measure nothing: redraw the figure and the section from a report this script wrote")
    parser.add_argument("--reuse-curve", type=Path, metavar="FILE",
                        help="measure the throughput only; take the fine-tuning curve from a report this script wrote")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return write_outputs(json.loads(args.from_json.read_text(encoding="utf-8")), args)
    settings = QUICK if args.quick else FULL
    changes = {"shape": args.shape, "curve_steps": args.curve_steps,
               "processes": tuple(int(p) for p in args.processes.split(",")) if args.processes else None}
    settings = Settings(**{**asdict(settings), **{k: v for k, v in changes.items() if v is not None}})
    work = args.work or Path(tempfile.mkdtemp(prefix="crossmodalmas-training-bench-"))
    try:
        kind, dataset, crop_labels = benchmark_dataset(work / "dataset", quick=args.quick)
        values = base_config(settings, dataset, crop_labels, args.quick)
        report = {"machine": {**machine(), "date": datetime.date.today().isoformat(),
                              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                  "argv": sys.argv[1:] if argv is None else list(argv), "settings": asdict(settings),
                  "dataset": kind, "throughput": throughput(settings, values, work)}
        if args.reuse_curve is not None:
            earlier = json.loads(args.reuse_curve.read_text(encoding="utf-8"))
            report.update(dataset=earlier["dataset"], curve={**earlier["curve"], "measured": earlier["machine"]["date"]})
        else:
            report["curve"] = fine_tune_curve(settings, values, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(report, indent=2))
    return write_outputs(report, args)


def write_outputs(report: dict, args) -> int:
    """The figure and BENCHMARKS.md's "training" section of ``report``."""
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    curve_figure(report, args.figure)
    replace_section(args.out, "training", section(report, args.figure, args.out))
    print(f"benchmark_training: wrote {args.figure} and the 'training' section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
