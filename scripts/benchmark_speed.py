"""The registration benchmark's speed section, measured in the same run as the accuracy tables.

One network pass (``net.predict`` under ``torch.inference_mode``, one warm-up, median of
:data:`REPEATS`) for one atlas at :data:`SPEED_SHAPE` on the CPU, for every network of the run;
SyN's seconds per atlas on the brain pairs (from the accuracy run); one ``synth_pair`` of a
:data:`SYNTH_SHAPE` random-shapes label map on the CPU; and, only where torch sees a GPU, the
same on CUDA plus :data:`GPU_ATLASES` atlases in one batch. Nothing is estimated: what was not
measured is None.

Where the accuracy run's machine has no GPU, the GPU columns are measured alone on one that has,
and ``benchmark_registration.py --gpu-from FILE`` puts them in the section, saying where they ran:

    python scripts/benchmark_speed.py --json gpu_speed.json [--diffeo-model M] [--paper-model M] [--noinv-model M]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from crossmodalmas.models import ModelEntry, load_network
from crossmodalmas.random_shapes import random_shapes
from crossmodalmas.synth import SynthConfig, synth_pair

SPEED_SHAPE = (160, 192, 224)  # (D, H, W) of one network pass
GPU_ATLASES = 10
SYNTH_SHAPE, SYNTH_LABELS = (128, 128, 128), 16
REPEATS = 3


def median_seconds(call: Callable[[], object], repeats: int = REPEATS, warmup: int = 1,
                   synchronise: Optional[Callable[[], None]] = None) -> float:
    """Median wall clock of ``call()`` over ``repeats`` runs after ``warmup`` untimed ones
    (``synchronise`` waits for queued GPU work before each clock read)."""
    wait = synchronise or (lambda: None)
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        wait()
        started = time.perf_counter()
        call()
        wait()
        times.append(time.perf_counter() - started)
    return float(statistics.median(times))


def _synchroniser(device: torch.device) -> Optional[Callable[[], None]]:
    return torch.cuda.synchronize if device.type == "cuda" else None


def network_seconds(net: torch.nn.Module, shape=SPEED_SHAPE, atlases: int = 1, device="cpu",
                    repeats: int = REPEATS) -> float:
    """Median seconds of one ``net.predict`` of ``atlases`` random atlases -> targets of ``shape``."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    atlas = torch.rand((atlases, 1, *shape), generator=generator, device=device)
    target = torch.rand((atlases, 1, *shape), generator=generator, device=device)
    net = net.to(device).eval()
    with torch.inference_mode():
        return median_seconds(lambda: net.predict(atlas, target), repeats, synchronise=_synchroniser(device))


def synth_seconds(device="cpu", shape=SYNTH_SHAPE, repeats: int = REPEATS) -> float:
    """Median seconds of one ``synth_pair`` (default :class:`SynthConfig`) of a random-shapes map."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    labels = random_shapes(tuple(shape), SYNTH_LABELS, generator, coarse_factor=12)[None]
    return median_seconds(lambda: synth_pair(labels, SYNTH_LABELS, SynthConfig(), generator), repeats,
                          synchronise=_synchroniser(device))


def syn_seconds_per_atlas(results: list[dict]) -> Optional[float]:
    """SyN's mean wall clock per pair on the brain pairs of the run (None: none ran)."""
    seconds = [e["methods"]["syn"]["seconds"] for e in results if e["case"] == "brain" and "syn" in e["methods"]]
    return sum(seconds) / len(seconds) if seconds else None


def _gpu_speed(entries: dict[str, ModelEntry]) -> dict:
    cuda = torch.device("cuda")
    out = {"device_name": torch.cuda.get_device_name(0), "networks": {}, "synth_s": synth_seconds(cuda)}
    for role, entry in entries.items():
        net = load_network(entry, device=cuda)
        out["networks"][role] = {"one_s": network_seconds(net, SPEED_SHAPE, 1, cuda),
                                 "batch_s": network_seconds(net, SPEED_SHAPE, GPU_ATLASES, cuda)}
        del net
        torch.cuda.empty_cache()
    return out


def measure_speed(entries: dict[str, ModelEntry], results: list[dict], names: dict[str, str]) -> dict:
    """The speed section's numbers.

    Returns:
        ``{"shape", "threads", "gpu_atlases", "models": names (every role, found or not),
        "networks": {role: {"name", "cpu_s"}} (the roles found, ``entries``),
        "syn_brain_s_per_atlas", "synth_shape", "synth_cpu_s", "gpu": None | {"device_name",
        "networks": {role: {"one_s", "batch_s"}}, "synth_s"}}``.
    """
    speed = {"shape": list(SPEED_SHAPE), "threads": torch.get_num_threads(), "gpu_atlases": GPU_ATLASES,
             "models": dict(names), "networks": {}, "syn_brain_s_per_atlas": syn_seconds_per_atlas(results),
             "synth_shape": list(SYNTH_SHAPE)}
    for role, entry in entries.items():
        print(f"timing one pass of {entry.name} at {SPEED_SHAPE} on the CPU ...")
        speed["networks"][role] = {"name": entry.name,
                                   "cpu_s": network_seconds(load_network(entry, device="cpu"), SPEED_SHAPE)}
    print(f"timing synth_pair at {SYNTH_SHAPE} on the CPU ...")
    speed["synth_cpu_s"] = synth_seconds("cpu")
    speed["gpu"] = _gpu_speed(entries) if torch.cuda.is_available() else None
    return speed


def main(argv=None) -> int:
    """The GPU columns alone, with the machine, date and code they were measured on."""
    # benchmark_registration imports this module: imported here, not at the top
    from benchmark_registration import add_model_arguments, chosen_models, machine
    from registration_methods import resolve_models

    parser = argparse.ArgumentParser(description="the registration benchmark's GPU columns, on a machine with a GPU")
    parser.add_argument("--json", type=Path, required=True, help="where to write them")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("torch sees no CUDA device on this machine: the GPU columns need one")
    entries = resolve_models(chosen_models(args))
    run = {**machine(), "date": datetime.date.today().isoformat(),
           "command": " ".join(["python", "scripts/benchmark_speed.py", *(sys.argv[1:] if argv is None else argv)])}
    gpu = {**_gpu_speed(entries), "run": run}
    args.json.write_text(json.dumps(gpu, indent=1), encoding="utf-8")
    print(json.dumps(gpu, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
