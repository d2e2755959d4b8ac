"""The robustness benchmark's memory runs: ``crossmodalmas segment`` in a child process on a
512 x 512 x 600 CT-like target at 0.7 x 0.7 x 0.6 mm (an abdomen phantom) against the number of
atlases and the target's size, peak RSS from the kernel; and, on a GPU, the same with the child's
CUDA memory capped. :mod:`benchmark_robustness` runs them and tables them.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmark_registration import machine
from registration_cases import render_contrast
from crossmodalmas.abdomen_phantom import abdomen_label_map, random_abdomen_anatomy
from crossmodalmas.phantoms import make_grid
from crossmodalmas.preprocess import resample
from crossmodalmas.volume import LabelMap, Volume, write_labels, write_volume

BIG_SHAPE, BIG_SPACING = (600, 512, 512), (0.7, 0.7, 0.6)  # (K, J, I) and (i, j, k) mm
ATLAS_SPACING_MM = 1.5
TARGET_SCALES = (0.5, 0.75, 1.0, 1.25)  # voxels per axis against the big target's, over its field of view
SIZE_SWEEP_ATLASES = 1
CUDA_CAP_ATLASES = 10
# The child caps its own CUDA memory before the command runs, as a smaller card would (0: uncapped).
_CAPPED_CHILD = ("import sys, torch; cap = float(sys.argv[1]) * 1e9\n"
                 "if cap:\n    torch.cuda.set_per_process_memory_fraction("
                 "min(1.0, cap / torch.cuda.get_device_properties(0).total_memory))\n"
                 "from crossmodalmas.cli import main; sys.exit(main(sys.argv[2:]))")


def target_grid(scale: float):
    """The big target's grid with ``scale`` times its voxels per axis over the same field of view."""
    shape = tuple(round(n * scale) for n in BIG_SHAPE)
    spacing = tuple(round(mm * n / m, 4) for mm, n, m in zip(BIG_SPACING, BIG_SHAPE[::-1], shape[::-1]))
    return make_grid(shape, spacing, axes="LPS")


def _write_big_case(folder: Path, atlases: int, scales: list[float]) -> tuple[dict[float, Path], list[str]]:
    """One target per scale of :func:`target_grid` (each a .nii, uncompressed: I/O is not what is
    measured; one anatomy, rendered once) and ``atlases`` atlases, four distinct subjects repeated;
    returns the targets' paths and the segment command's atlas arguments."""
    rng = np.random.default_rng(0)
    coarse = make_grid((180, 180, 180), (2.0, 2.0, 2.0), axes="LPS")  # the big grid's 360 mm field of view
    labels = abdomen_label_map(random_abdomen_anatomy(rng), coarse)
    rendered = render_contrast(labels.array, rng)
    targets = {}
    for scale in scales:
        grid = target_grid(scale)
        targets[scale] = folder / f"target_{scale:g}.nii"
        write_volume(Volume(resample(rendered, coarse.ijk_to_ras, grid), grid.ijk_to_ras), targets[scale])
    args = []
    grid = make_grid((134, 174, 234), (ATLAS_SPACING_MM,) * 3, axes="LPS")
    for index in range(atlases):
        stem = folder / f"atlas{index}"
        if index < 4:
            atlas_labels = abdomen_label_map(random_abdomen_anatomy(rng), grid)
            write_volume(Volume(render_contrast(atlas_labels.array, rng), grid.ijk_to_ras), Path(f"{stem}.nii.gz"))
            write_labels(LabelMap(atlas_labels.array, grid.ijk_to_ras), Path(f"{stem}_seg.nii.gz"))
        else:  # a link to one of the four: a distinct file name, the same content
            for suffix in (".nii.gz", "_seg.nii.gz"):
                os.symlink(folder / f"atlas{index % 4}{suffix}", f"{stem}{suffix}")
        args += ["--atlas", f"{stem}.nii.gz", f"{stem}_seg.nii.gz"]
    return targets, args


def _peak_rss_run(argv: list[str]) -> tuple[int, float, float]:
    """Exit code, seconds and peak RSS (GB) of a child process, from the kernel's accounting; the
    end of its stderr printed when it failed. Its stderr goes to a file: a pipe nobody reads while
    waiting would stall a child that writes more than the pipe holds (its progress bar, warnings)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            stderr.seek(0)
            print(stderr.read().decode(errors="replace")[-2000:], file=sys.stderr)
    return code, time.perf_counter() - started, usage.ru_maxrss / 1024 ** 2  # kB -> GB


def _segment_row(target: Path, atlas_args: list[str], atlases: int, output: Path,
                 launcher: tuple[str, ...] = ("-m", "crossmodalmas"), options: tuple[str, ...] = ()) -> dict:
    """One ``segment`` run of the first ``atlases`` atlases in a child (``python <launcher> segment``)."""
    argv = [sys.executable, *launcher, "segment", "--target", str(target), *atlas_args[: 3 * atlases],
            *options, "--output", str(output)]
    code, seconds, peak = _peak_rss_run(argv)
    return {"atlases": atlases, "exit": code, "seconds": round(seconds, 1), "peak_rss_gb": round(peak, 2)}


def memory(counts: list[int], scales: list[float]) -> tuple[list[dict], list[dict]]:
    """Peak RSS and seconds of ``crossmodalmas segment`` against the atlas count (on the big target)
    and against the target's size (scales of :func:`target_grid`, with :data:`SIZE_SWEEP_ATLASES`)."""
    by_count, by_size = [], []
    with tempfile.TemporaryDirectory(prefix="robustness_") as folder:
        folder = Path(folder)
        targets, atlas_args = _write_big_case(folder, max([*counts, SIZE_SWEEP_ATLASES]),
                                              sorted({*scales, *([1.0] if counts else [])}))
        for count in counts:
            by_count.append(_segment_row(targets[1.0], atlas_args, count, folder / f"out{count}.nii.gz"))
            print(json.dumps(by_count[-1]), flush=True)
        for scale in scales:
            grid = target_grid(scale)
            row = _segment_row(targets[scale], atlas_args, SIZE_SWEEP_ATLASES, folder / f"out_{scale:g}.nii.gz")
            by_size.append({"scale": scale, "shape": list(grid.shape[::-1]),
                            "spacing_mm": [round(float(mm), 3) for mm in grid.spacing],
                            "megavoxels": round(float(np.prod(grid.shape)) / 1e6, 1), **row})
            print(json.dumps(by_size[-1]), flush=True)
    return by_count, by_size


def cuda_memory(caps_gb: list[float]) -> dict:
    """``crossmodalmas segment --device cuda`` of :data:`CUDA_CAP_ATLASES` atlases on the big target,
    the process's CUDA memory capped at each of ``caps_gb`` (0: the card's own): exit, seconds, peak
    RSS, the device the run ended on and the out-of-memory fallbacks its report names."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="robustness_cuda_") as folder:
        folder = Path(folder)
        targets, atlas_args = _write_big_case(folder, CUDA_CAP_ATLASES, [1.0])
        for cap in caps_gb:
            report = folder / f"report_{cap:g}.json"
            row = _segment_row(targets[1.0], atlas_args, CUDA_CAP_ATLASES, folder / f"cuda_{cap:g}.nii.gz",
                               launcher=("-c", _CAPPED_CHILD, str(cap)),
                               options=("--device", "cuda", "--report", str(report)))
            said = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
            rows.append({"cap_gb": cap, **row, "device": said.get("device"),
                         "fallbacks": [w for w in said.get("warnings", []) if "CUDA out of memory" in w]})
            print(json.dumps(rows[-1]), flush=True)
    run = {**machine(), "date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(0)}
    return {"rows": rows, "run": run}
