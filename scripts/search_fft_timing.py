"""The global search's FFTs trimmed to the translations it scores, against full-size FFTs:
the same poses, and the seconds of each (the "search-fft" section of BENCHMARKS.md).

For each robustness pair (:mod:`robustness_cases`), :meth:`GlobalSearch.poses` runs twice on
the pair's atlas, keeping as many poses as the affine step asks for: with the correlations
trimmed (:mod:`crossmodalmas.fft_shifts`, the default) and at full size (target + atlas - 1
along each axis). The poses must agree; the FFT sizes and seconds are printed side by side.
A thin target slab gets a search grid finer than 7 mm (so that it spans 12 voxels), and there
the correlations were most of the affine step's time.

    python scripts/search_fft_timing.py [--pairs 13 9 3 1 16 0] [--threads 1] [--section]
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch

from benchmark_registration import machine
from crossmodalmas import global_search
from crossmodalmas.affine import _RERANKED, GLOBAL_STARTS
from markdown_sections import replace_section
from registration_cases import ROOT
from robustness_cases import partial_pair

SECTION = "search-fft"


@contextmanager
def _full_size():
    """Inside, the search's correlations are not trimmed (no translation needs fewer slices than one)."""
    trimmed = global_search.least_shared_slices
    global_search.least_shared_slices = lambda *args: np.ones(3, int)
    try:
        yield
    finally:
        global_search.least_shared_slices = trimmed


@contextmanager
def _recorded_sizes(sizes: list):
    """Inside, every correlation size the search picks is appended to ``sizes``."""
    pick = global_search.correlation_size
    global_search.correlation_size = lambda *args: sizes.append(pick(*args)) or sizes[-1]
    try:
        yield
    finally:
        global_search.correlation_size = pick


def _timed(pair, keep: int) -> tuple[list, float, tuple[int, ...]]:
    search = global_search.GlobalSearch(pair.target)
    ready = search.moving(pair.atlas.image, pair.atlas.labels)
    sizes: list = []
    with _recorded_sizes(sizes):
        started = time.perf_counter()
        poses = search.poses(ready, keep=keep)
        seconds = time.perf_counter() - started
    return poses, seconds, sizes[0]


def same_poses(a: Sequence, b: Sequence) -> bool:
    """Whether two lists of poses hold the same placements, scores and overlaps, in one order."""
    return len(a) == len(b) and all(
        np.array_equal(p.rotation, q.rotation) and np.allclose(p.translation, q.translation, atol=1e-6)
        and np.isclose(p.score, q.score, rtol=1e-9) and p.overlap == q.overlap for p, q in zip(a, b))


def row(seed: int, keep: int = _RERANKED * GLOBAL_STARTS) -> dict:
    """Pair ``seed``'s search, trimmed and at full size."""
    pair = partial_pair(seed)
    load = os.getloadavg()[0]  # the machine's 1-min load just before the timing: others' work inflates it
    trimmed, trimmed_seconds, trimmed_size = _timed(pair, keep)
    with _full_size():
        full, full_seconds, full_size = _timed(pair, keep)
    return {"pair": pair.name, "kind": pair.kind, "spacing_mm": round(global_search.GlobalSearch(pair.target).spacing_mm, 2),
            "size_trimmed": list(trimmed_size), "size_full": list(full_size),
            "seconds_trimmed": round(trimmed_seconds, 1), "seconds_full": round(full_seconds, 1),
            "same_poses": same_poses(trimmed, full), "load_before": round(load, 2)}


def table(rows: Sequence[dict]) -> list[str]:
    lines = ["| pair | kind | grid (mm) | FFT size, full | FFT size, trimmed | seconds, full | seconds, trimmed | "
             "speed-up | same poses |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sizes = [" x ".join(map(str, r[key])) for key in ("size_full", "size_trimmed")]
        lines.append(f"| {r['pair']} | {r['kind']} | {r['spacing_mm']} | {sizes[0]} | {sizes[1]} | {r['seconds_full']} | "
                     f"{r['seconds_trimmed']} | {r['seconds_full'] / max(r['seconds_trimmed'], 1e-9):.1f}x | "
                     f"{'yes' if r['same_poses'] else '**no**'} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[13, 9, 3, 1, 16, 0],
                        help="robustness pair seeds (the first four are target slabs of a finer grid)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--section", action="store_true", help=f"write the table to BENCHMARKS.md ({SECTION})")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.pairs:
        rows.append(row(seed))
        print(rows[-1], flush=True)
    lines = table(rows)
    print("\n".join(lines))
    if args.section:
        info = machine()
        header = (f"## Global search: FFTs trimmed to the translations scored\n\nRun {datetime.date.today().isoformat()} "
                  f"on {info['cpu']} ({info['cores']} cores), torch {info['torch']}, {args.threads} torch thread(s), "
                  f"commit {info['commit']}; the highest 1-min load average just before a pair was "
                  f"{max(r['load_before'] for r in rows):.2f}. `python scripts/search_fft_timing.py --section` "
                  "re-runs it. Seconds of `GlobalSearch.poses` (28 orientations, the affine step's 15 poses kept) "
                  "on robustness pairs; the full size is target + atlas - 1 along each axis.\n")
        replace_section(ROOT / "BENCHMARKS.md", SECTION, [header, *lines])
    return 0 if all(r["same_poses"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
