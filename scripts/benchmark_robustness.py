"""Benchmark: robustness, side by side on one machine (the "robustness" section of BENCHMARKS.md).

1. Partial field of view (:mod:`robustness_cases`): atlas slabs of 1/5 to 1/2 of the target and
   target slabs of the atlas, origins a metre apart, tilts, LPS/RAS and head/feet mix-ups, cross
   contrast. The share of pairs whose mean organ Dice is >= 0.5, for this project (global
   search + affine + network), the same without the global search, and antspyx SyN as a user
   would run it (its default centre-of-mass start); and, as a control, this project on each
   pair's same-anatomy twin (the atlas painted from the target's own abdomen): a pair it finds
   there but not between two subjects is lost to the subjects' differences, not to the search.
   ``--more-seeds``: ours again at other seeds of the affine step's random sampling, the target
   then judged over every seed (one seed's share moved by a pair or two between seeds).
   The same on real anatomy (:mod:`brain_partial_cases`: slabs of two OASIS brains), where the
   shared data is present; not what the target is judged on.
2. Memory and time against atlas count (:mod:`memory_runs`): ``crossmodalmas segment`` in a child process on a
   512 x 512 x 600 CT-like target at 0.7 x 0.7 x 0.6 mm with 1, 5, 10 and 20 atlases; peak RSS
   from the kernel (``wait4``), against the 8 GB bound. And against the target's size: that
   target resampled to 1/2, 3/4, 1 and 5/4 of its voxels per axis, with one atlas.
   On a machine with a GPU, ``--cuda-caps``: 10 atlases on that target on CUDA, the process's
   CUDA memory capped as on smaller cards: where the run ended and the fallbacks its report names.
3. The hostile-input catalogue (:mod:`hostile_cases`): cases tried and answered as documented.

    python scripts/benchmark_robustness.py [--pairs 24] [--more-seeds 1 2] [--brain-pairs 12] [--jobs 1] [--no-ants]
                                           [--atlas-counts 1 5 10 20] [--target-scales 0.5 0.75 1 1.25]
                                           [--no-memory] [--no-hostile] [--quick] [--cuda-caps GB ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from benchmark_registration import machine
from brain_partial_cases import BRAIN_PAIRS, brain_data_missing, brain_partial_pair
from markdown_sections import replace_section
from memory_runs import (ATLAS_SPACING_MM, BIG_SHAPE, BIG_SPACING, CUDA_CAP_ATLASES, SIZE_SWEEP_ATLASES,
                         TARGET_SCALES, cuda_memory, memory)
from registration_cases import ROOT
from registration_methods import ANTS_SEED, _to_ants, import_ants, itk_threads
from robustness_cases import mean_dice, partial_pair
from crossmodalmas import affine
from crossmodalmas.options import SegmentOptions
from crossmodalmas.pipeline import segment

FOUND_DICE = 0.5
# SyN's ITK threads here: one, so that its seeded column repeats exactly (with more it does not,
# see registration_methods.itk_threads). Nothing here judges SyN's seconds, and --jobs runs
# pairs side by side on the cores instead.
SYN_ITK_THREADS = 1
MEMORY_BOUND_GB = 8.0
MEMORY_FIGURE = ROOT / "docs" / "robustness_memory.png"


def _ours(pair, global_search: bool, seed: int = 0) -> tuple[np.ndarray, float]:
    starts = affine.GLOBAL_STARTS
    affine.GLOBAL_STARTS = starts if global_search else 0  # the ablation: moments and centres only
    try:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = segment(pair.target, [pair.atlas], SegmentOptions(fusion="mv", seed=seed))
        return result.labels.array, time.perf_counter() - started
    finally:
        affine.GLOBAL_STARTS = starts


def _syn(ants, pair) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    with itk_threads(SYN_ITK_THREADS):
        fixed = _to_ants(ants, pair.target.array, pair.target.ijk_to_ras)
        moving = _to_ants(ants, pair.atlas.image.array, pair.atlas.image.ijk_to_ras)
        labels = _to_ants(ants, pair.atlas.labels.array, pair.atlas.labels.ijk_to_ras)
        reg = ants.registration(fixed, moving, type_of_transform="SyN", aff_metric="mattes", syn_metric="mattes")
        warped = ants.apply_transforms(fixed, labels, reg["fwdtransforms"], interpolator="genericLabel")
    for path in filter(os.path.isfile, {*reg["fwdtransforms"], *reg["invtransforms"]}):
        os.remove(path)
    return np.rint(warped.numpy().T).astype(np.int32), time.perf_counter() - started


CONTROL = "ours, same anatomy (control)"


def _scored(pair, labels: np.ndarray, seconds: float) -> dict:
    return {"dice": round(mean_dice(labels, pair.truth.array, pair.labels), 4), "seconds": round(seconds, 1)}


PAIR_SETS = {"phantom": partial_pair, "brain": brain_partial_pair}


_SEEDED = "ours, seed "


def seeded(seed: int) -> str:
    """The column of ours run with ``SegmentOptions(seed=seed)`` besides the default seed 0."""
    return f"{_SEEDED}{seed}"


def _pair_row(seed: int, with_ants: bool, pair_set: str = "phantom", more_seeds: Sequence[int] = ()) -> dict:
    """One partial pair's row: each method's Dice and seconds (SyN if ``with_ants``; ours also at
    each of ``more_seeds``, the seed of the affine step's sampling), and for a phantom pair its
    control's."""
    pair = PAIR_SETS[pair_set](seed)
    row = {"pair": pair.name, "kind": pair.kind, "fraction": round(pair.fraction, 3), "mix_up": pair.mix_up}
    methods = {"ours": lambda p: _ours(p, True),
               **{seeded(s): lambda p, s=s: _ours(p, True, s) for s in more_seeds},
               "ours without global search": lambda p: _ours(p, False)}
    if with_ants:
        ants = import_ants()
        methods["antspyx SyN"] = lambda p: _syn(ants, p)
    for name, run in methods.items():
        row[name] = _scored(pair, *run(pair))
    if pair_set == "phantom":
        twin = partial_pair(seed, same_anatomy=True)  # same target and truth: only the atlas's anatomy differs
        row[CONTROL] = _scored(twin, *_ours(twin, True))
    print(json.dumps(row), flush=True)
    return row


def partial_fov(pairs: int, with_ants: bool, jobs: int = 1, pair_set: str = "phantom",
                more_seeds: Sequence[int] = ()) -> list[dict]:
    """The rows of the first ``pairs`` pairs of ``pair_set`` (a key of :data:`PAIR_SETS`), in
    ``jobs`` processes side by side (their seconds then share the machine's cores; Dice does not
    depend on it); ours also at ``more_seeds`` (see :func:`_pair_row`)."""
    tasks = [(seed, with_ants, pair_set, tuple(more_seeds)) for seed in range(pairs)]
    if jobs <= 1:
        return [_pair_row(*task) for task in tasks]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return pool.starmap(_pair_row, tasks, chunksize=1)


def brain_partial_fov(pairs: int, with_ants: bool, jobs: int = 1) -> list[dict]:
    """:func:`partial_fov` of the real-brain pairs; none, with a message, without the shared data."""
    missing = brain_data_missing() if pairs else ""
    if missing:
        print(f"skipping the brain partial pairs: {missing}")
        return []
    return partial_fov(pairs, with_ants, jobs, "brain")


def hostile() -> dict:
    import hostile_cases  # the catalogue the tests run, one case per test (imported only to run it)
    return hostile_cases.run_catalogue()


def _found(rows: list[dict], method: str) -> tuple[int, int]:
    scored = [row[method]["dice"] for row in rows if method in row]
    return sum(d >= FOUND_DICE for d in scored), len(scored)


def _pairs_tables(rows: list[dict], methods: list[str]) -> list[str]:
    """Each pair's Dice and seconds per method, then the share each method found."""
    lines = ["| pair | kind | fraction | mix-up | " + " | ".join(f"{m} Dice (s)" for m in methods) + " |",
             "|---|---|---|---|" + "---|" * len(methods)]
    for row in rows:
        cells = [f"{row[m]['dice']:.3f} ({row[m]['seconds']:.0f})" for m in methods]
        lines.append(f"| {row['pair']} | {row['kind']} | {row['fraction']:.2f} | {row['mix_up']} | " + " | ".join(cells) + " |")
    lines += ["", "| method | found | share | mean Dice | median seconds |", "|---|---|---|---|---|"]
    for m in methods:
        found, total = _found(rows, m)
        dice = float(np.mean([row[m]["dice"] for row in rows]))
        seconds = float(np.median([row[m]["seconds"] for row in rows]))
        lines.append(f"| {m} | {found} / {total} | {found / total:.0%} | {dice:.3f} | {seconds:.0f} |")
    return lines


def _syn_sentence(ants_seed: Optional[int], itk_threads: Optional[int] = None) -> str:
    """How SyN ran; ``ants_seed`` None: unseeded, as runs before the seed were; ``itk_threads``
    None: with the run's own ITK threads, as runs before :data:`SYN_ITK_THREADS` were."""
    seeded = "unseeded (one random draw)" if ants_seed is None else f"seeded with `--random-seed {ants_seed}`"
    if itk_threads == 1:
        threads = " and one ITK thread (so that a run repeats exactly)" if ants_seed is not None else ", one ITK thread"
    elif itk_threads:
        threads = f", {itk_threads} ITK threads (a run may differ slightly from the next)"
    else:
        threads = ", the run's ITK threads (a run may differ slightly from the next)"
    return ("antspyx SyN: `ants.registration(type_of_transform=\"SyN\", aff_metric=\"mattes\", "
            f"syn_metric=\"mattes\")`, {seeded}{threads}; labels warped with `genericLabel`.")


def _seed_columns(rows: list[dict]) -> list[str]:
    """Ours and its runs at other seeds, in the rows' order."""
    return [m for m in rows[0] if m == "ours" or m.startswith(_SEEDED)] if rows else []


def _methods(rows: list[dict]) -> list[str]:
    return _seed_columns(rows) + [m for m in ("ours without global search", "antspyx SyN", CONTROL)
                                  if rows and m in rows[0]]


def _verdict(rows: list[dict], columns: list[str]) -> str:
    """The target's line: ours' share found, pooled over its ``columns`` (:func:`_seed_columns`)
    where it ran at several seeds (the affine step's sampling moved a pair or two across the
    line between seeds)."""
    counts = [_found(rows, m) for m in columns]
    found, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    verdict = "met" if found >= 0.9 * total else "**missed**"
    if len(columns) == 1:
        return f"Target >= 90 % found: {found / total:.0%}, {verdict}."
    each = ", ".join(f"{c[0] / c[1]:.0%}" for c in counts)
    return (f"Target >= 90 % found: {found / total:.0%} ({found} / {total}) over the {len(columns)} seeds of the "
            f"affine step's sampling (each: {each}), {verdict}.")


def _partial_lines(rows: list[dict], ants_seed: Optional[int] = None, ants_threads: Optional[int] = None) -> list[str]:
    """The phantom pairs' tables and the target; ``ants_seed``, ``ants_threads``: the run's SyN
    seed and ITK threads (see :func:`_syn_sentence`)."""
    methods = _methods(rows)
    lines = [f"### Partial field of view ({len(rows)} phantom pairs; found: mean organ Dice >= {FOUND_DICE})", "",
             *_pairs_tables(rows, methods)]
    seed_columns = _seed_columns(rows)
    lines += ["", _verdict(rows, seed_columns)]
    if len(seed_columns) > 1:
        lines += ["", f"\"{_SEEDED}N\" is ours with `SegmentOptions(seed=N)`: the seed of the affine step's random "
                  "sampling (its Mattes fits); \"ours\" is the default seed 0. Nothing else differs between them."]
    if "antspyx SyN" in methods:
        lines += ["", _syn_sentence(ants_seed, ants_threads)]
    if CONTROL in methods:
        lines += ["", f"The control is not a result: \"{CONTROL}\" segments each pair's twin whose atlas is painted "
                  "from the target's own abdomen (same target, truth, contrast, slab and frame). The target is "
                  "judged on ours (at every seed it ran at), between two subjects. " + _misses_by_cause(rows)]
    return lines


def _brain_lines(brain: dict) -> list[str]:
    """The real-brain pairs' tables (``brain``: rows, jobs and SyN seed of their run): not judged."""
    rows, methods = brain["rows"], _methods(brain["rows"])
    side_by_side = _jobs_note(brain.get("jobs", 1), "They")
    lines = [f"### Partial field of view on real brains ({len(rows)} OASIS pairs; found: mean Dice >= {FOUND_DICE})",
             "", "Slabs of two real T1 brains (OASIS A the atlas, B the target; `scripts/brain_partial_cases.py`) "
             "in the phantom pairs' scanner frames, tilts and mix-ups, A's contrast inverted in the pairs marked so; "
             "Dice over the labels of B's map. Not what the target is judged on: a check that the search "
             "finds real anatomy as it finds the phantom's. B's map has two tissue classes, found all through "
             "the brain, so a deformable step can overlap them by 0.5 or more from a wrong pose (a flipped one): "
             "compare the mean Dice more than the share found." + side_by_side, "", *_pairs_tables(rows, methods)]
    if "antspyx SyN" in methods:
        lines += ["", _syn_sentence(brain.get("ants_seed"), brain.get("ants_threads"))]
    return lines


def _misses_by_cause(rows: list[dict]) -> str:
    """Which of ours' misses (at the default seed) the control finds (lost to the subjects'
    differences) and which not."""
    missed = [row for row in rows if row["ours"]["dice"] < FOUND_DICE]
    twin_found = [row["pair"] for row in missed if row[CONTROL]["dice"] >= FOUND_DICE]
    neither = [row["pair"] for row in missed if row[CONTROL]["dice"] < FOUND_DICE]
    return (f"Of ours' {len(missed)} misses, found with the same anatomy: {', '.join(twin_found) or 'none'}; "
            f"missed with it too: {', '.join(neither) or 'none'}.")


def _memory_plot(by_count: list[dict], by_size: list[dict], path: Path) -> None:
    """Peak RSS and seconds against the number of atlases and against the target's megavoxels (one
    row of panels each, where there are rows), with the 8 GB bound."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sweeps = [(rows, key, label) for rows, key, label in ((by_count, "atlases", "atlases"),
              (by_size, "megavoxels", f"target megavoxels ({SIZE_SWEEP_ATLASES} atlas)")) if rows]
    figure = Figure(figsize=(8, 3.2 * len(sweeps)))
    FigureCanvasAgg(figure)
    for row, (rows, key, label) in enumerate(sweeps):
        x = [r[key] for r in rows]
        rss = figure.add_subplot(len(sweeps), 2, 2 * row + 1)
        seconds = figure.add_subplot(len(sweeps), 2, 2 * row + 2)
        rss.plot(x, [r["peak_rss_gb"] for r in rows], "o-")
        rss.axhline(MEMORY_BOUND_GB, color="red", linestyle="--", label=f"{MEMORY_BOUND_GB:.0f} GB bound")
        rss.set(xlabel=label, ylabel="peak RSS (GB)", title="memory")
        rss.legend()
        seconds.plot(x, [r["seconds"] for r in rows], "o-")
        seconds.set(xlabel=label, ylabel="seconds", title="time (CPU)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def _big_target_words() -> str:
    return (f"{BIG_SHAPE[2]} x {BIG_SHAPE[1]} x {BIG_SHAPE[0]} at {' x '.join(map(str, BIG_SPACING))} mm "
            "(CT-like, abdomen phantom)")


def _memory_lines(rows: list[dict]) -> list[str]:
    lines = ["### Memory and time against atlas count",
             f"Target {_big_target_words()}; atlases {ATLAS_SPACING_MM} mm, 234 x 174 x 134 (MR-like), passed as "
             f"files; peak RSS of the `crossmodalmas segment` process (defaults: network + PLF).", "",
             "| atlases | exit | seconds | peak RSS (GB) |", "|---|---|---|---|"]
    lines += [f"| {r['atlases']} | {r['exit']} | {r['seconds']:.0f} | {r['peak_rss_gb']:.2f} |" for r in rows]
    ten = [r for r in rows if r["atlases"] == 10]
    if ten:
        held = ten[0]["peak_rss_gb"] < MEMORY_BOUND_GB and ten[0]["exit"] == 0
        lines += ["", f"Bound: 10 atlases under {MEMORY_BOUND_GB:.0f} GB: {ten[0]['peak_rss_gb']:.2f} GB, "
                      f"{'met' if held else '**missed**'}."]
    return lines


def _size_lines(rows: list[dict]) -> list[str]:
    lines = ["### Memory and time against target size",
             f"The target of {_big_target_words()} resampled to other voxel counts over its field of view, "
             f"segmented with {SIZE_SWEEP_ATLASES} atlas (the first of those against atlas count) by the same "
             "command.", "",
             "| target (voxels) | spacing (mm) | megavoxels | exit | seconds | peak RSS (GB) |",
             "|---|---|---:|---|---:|---:|"]
    lines += [f"| {' x '.join(map(str, r['shape']))} | {' x '.join(f'{mm:g}' for mm in r['spacing_mm'])} | "
              f"{r['megavoxels']:.1f} | {r['exit']} | {r['seconds']:.0f} | {r['peak_rss_gb']:.2f} |" for r in rows]
    return lines


def _cuda_lines(block: dict) -> list[str]:
    """The capped-CUDA rows, with the machine they ran on (a GPU machine: not the section's)."""
    run = block["run"]
    lines = ["### CUDA memory: the big target on a GPU, its memory capped",
             f"{CUDA_CAP_ATLASES} atlases on {_big_target_words()}, `crossmodalmas segment --device cuda --report` "
             "with the process's CUDA memory capped (`torch.cuda.set_per_process_memory_fraction`) as on a smaller "
             "card; cap 0: the card's own. The fallbacks are the warnings of the run's report. Run "
             f"{run['date']} on {run['gpu']} with {run['cpu']} ({run['cores']} cores), torch {run['torch']}, commit "
             f"{run['commit']}: another machine than the rest of this section "
             "(`python scripts/benchmark_robustness.py --pairs 0 --brain-pairs 0 --no-ants --no-memory --no-hostile "
             "--cuda-caps ...` there, merged with `--from-json --cuda-from FILE`).", "",
             "| CUDA cap (GB) | exit | seconds | peak RSS (GB) | ended on | out-of-memory fallbacks |",
             "|---|---|---:|---:|---|---|"]
    lines += [f"| {r['cap_gb']:g} | {r['exit']} | {r['seconds']:.0f} | {r['peak_rss_gb']:.2f} | {r['device']} | "
              f"{'; '.join(r['fallbacks']) or 'none'} |" for r in block["rows"]]
    return lines


def _write_section(results: dict) -> None:
    info, note = results["machine"], _sources_note(results)
    lines = [f"Run {results['date']} on {info['cpu']} ({info['cores']} cores), torch {info['torch']}, "
             f"antspyx {info['antspyx']}, commit {info['commit']}, {info['threads']} torch thread(s); no GPU. "
             "`python scripts/benchmark_robustness.py` re-runs it." + _jobs_note(results.get("jobs", 1))
             + (f" {note}" if note else ""), ""]
    if results.get("partial_fov"):
        lines += _partial_lines(results["partial_fov"], results.get("ants_seed"), results.get("ants_threads")) + [""]
    if results.get("brain_partial_fov"):
        lines += _brain_lines(results["brain_partial_fov"]) + [""]
    by_count, by_size = results.get("memory") or [], results.get("memory_by_size") or []
    if by_count:
        lines += _memory_lines(by_count) + [""]
    if by_size:
        lines += _size_lines(by_size) + [""]
    if by_count or by_size:
        _memory_plot(by_count, by_size, MEMORY_FIGURE)
        figure = MEMORY_FIGURE.relative_to(ROOT).as_posix()
        lines += [f"![peak RSS and time against atlases and target size]({figure})", ""]
    if results.get("cuda_memory"):
        lines += _cuda_lines(results["cuda_memory"]) + [""]
    if results.get("hostile"):
        h = results["hostile"]
        failed = [c["case"] for c in h["cases"] if c["tried"] and not c["passed"]]
        skipped = [c["case"] for c in h["cases"] if not c["tried"]]
        lines += ["### Hostile inputs", f"{h['passed']} of {h['tried']} catalogue cases tried answered as documented"
                  + (f"; not: {', '.join(failed)}" if failed else "")
                  + (f"; not tried here: {', '.join(skipped)}" if skipped else "") + "."]
    replace_section(ROOT / "BENCHMARKS.md", "robustness", ["## Robustness", ""] + lines)


def _jobs_note(jobs: int, who: str = "The partial pairs") -> str:
    if jobs <= 1:
        return ""
    return f" {who} ran {jobs} processes side by side (`--jobs {jobs}`): their seconds share the cores."


_RUN_SETTINGS = ("commit", "threads")  # what may differ between the runs whose tables are merged
MERGED_TABLES = {"memory": "memory rows against atlas count", "memory_by_size": "memory rows against target size",
                 "brain_partial_fov": "brain pairs"}


def _with_tables_of(results: dict, other: dict, another_commit: bool = False) -> dict:
    """``results`` with ``other``'s tables of :data:`MERGED_TABLES` (each table ``other`` has rows
    of and ``results`` has none of: a table measured in this run is never replaced by an older
    one's; ``results`` keeps its own of the others): a run of one commit on one machine, or (with
    ``another_commit``) of another commit on this machine. Each table's run is kept, for the
    section to name (a table ``other`` took from a third run names that run): its commit, date
    and torch threads (a setting of the run, not of the machine: the section names it where it
    differs from the section's own)."""
    same_machine = {k: v for k, v in other["machine"].items() if k not in _RUN_SETTINGS} == \
        {k: v for k, v in results["machine"].items() if k not in _RUN_SETTINGS}
    same_commit = other["machine"].get("commit") == results["machine"].get("commit")
    if not same_machine or not (same_commit or another_commit):
        raise SystemExit(f"--tables-from: another machine or commit ({other['machine']} vs {results['machine']})")
    taken = {key: other[key] for key in MERGED_TABLES if other.get(key) and not results.get(key)}
    machine = other["machine"]
    run = {"commit": machine.get("commit"), "date": other.get("date"), "threads": machine.get("threads")}
    merged_into_other = _table_sources(other) or {}  # a table that ``other`` itself took from a third run keeps it
    sources = {**(_table_sources(results) or {}), **{key: dict(merged_into_other.get(key, run)) for key in taken}}
    kept = {k: v for k, v in results.items() if k != "memory_sources"}
    return {**kept, **taken, "table_sources": sources}


def _table_sources(results: dict) -> Optional[dict]:
    """Which run each merged table came from (``memory_sources`` in JSON written before the brain pairs)."""
    return results.get("table_sources", results.get("memory_sources"))


def _sources_note(results: dict) -> str:
    """Which tables ran in another run than the rest, and of which commit, one sentence per run
    (a run before table sources were kept has its own ``note``)."""
    sources = _table_sources(results)
    if sources is None:
        return results.get("note", "")
    runs: dict[tuple, list[str]] = {}  # tables of one run together, in their order
    for key, source in sources.items():
        runs.setdefault(tuple(source.get(field) for field in ("commit", "date", "threads")), []).append(key)
    notes = []
    for (commit, date, threads), keys in runs.items():
        tables = " and the ".join(MERGED_TABLES[key] for key in keys)
        with_threads = "" if threads in (None, results["machine"].get("threads")) else f" with {threads} torch threads"
        if commit == results["machine"].get("commit"):
            notes.append(f"The {tables} ran in a second run of this commit{with_threads}.")
        else:
            notes.append(f"The {tables} are of another commit: {commit}, run on {date}{with_threads}.")
    return " ".join(notes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24,
                        help="partial-FOV pairs (12 resolved no change smaller than one pair in 12)")
    parser.add_argument("--brain-pairs", type=int, default=BRAIN_PAIRS,
                        help="real-brain partial pairs (needs ../shared/data; 0: none)")
    parser.add_argument("--no-ants", action="store_true")
    parser.add_argument("--more-seeds", type=int, nargs="*", default=[],
                        help="also run ours on the phantom pairs with these seeds of the affine step's sampling "
                             "(the default is 0); the target is then judged over all of them")
    parser.add_argument("--jobs", type=int, default=1,
                        help="partial pairs run in this many processes side by side (their seconds share the cores)")
    parser.add_argument("--atlas-counts", type=int, nargs="*", default=[1, 5, 10, 20],
                        help="memory runs on the big target with these numbers of atlases (none: skip them)")
    parser.add_argument("--target-scales", type=float, nargs="*", default=list(TARGET_SCALES),
                        help=f"memory runs with {SIZE_SWEEP_ATLASES} atlas on the big target resampled to these "
                             "times its voxels per axis (none: skip them)")
    parser.add_argument("--no-memory", action="store_true", help="no memory runs at all")
    parser.add_argument("--no-hostile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 phantom pairs, no SyN, no memory runs (a smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark_robustness.json")
    parser.add_argument("--hostile-only", action="store_true",
                        help="run the catalogue and update an earlier run's --out JSON and section")
    parser.add_argument("--from-json", action="store_true",
                        help="redraw the section and figure from an earlier run's --out JSON, measuring nothing")
    parser.add_argument("--tables-from", type=Path,
                        help="with --from-json: take the memory rows and brain pairs that the --out JSON lacks from "
                             "another run's JSON of the same commit (the halves run side by side, e.g. one "
                             "--no-memory, one --pairs 0 --no-hostile)")
    parser.add_argument("--cuda-caps", type=float, nargs="*", default=[], metavar="GB",
                        help=f"runs of {CUDA_CAP_ATLASES} atlases on the big target on CUDA, its memory capped at "
                             "these GB (0: uncapped); needs a GPU")
    parser.add_argument("--cuda-from", type=Path, metavar="FILE",
                        help="with --from-json: take the capped-CUDA rows from a run on a GPU machine (its --out)")
    parser.add_argument("--tables-of-another-commit", action="store_true",
                        help="with --tables-from: accept a run of another commit on this machine (the section says so)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.brain_pairs, args.no_ants, args.no_memory = 2, 0, True, True
    if 0 in args.more_seeds or len(set(args.more_seeds)) < len(args.more_seeds):
        parser.error(f"--more-seeds: seeds besides the default 0, each once; got {args.more_seeds}")
    if args.hostile_only or args.from_json:
        results = json.loads(args.out.read_text(encoding="utf-8"))
        if args.hostile_only:
            results["hostile"] = hostile()
        if args.tables_from:
            results = _with_tables_of(results, json.loads(args.tables_from.read_text(encoding="utf-8")),
                                      args.tables_of_another_commit)
        if args.cuda_from:  # rows of another machine: they keep its description
            results["cuda_memory"] = json.loads(args.cuda_from.read_text(encoding="utf-8"))["cuda_memory"]
        args.out.write_text(json.dumps(results, indent=1))
        _write_section(results)
        return 0
    if args.cuda_caps and not torch.cuda.is_available():
        parser.error("--cuda-caps: torch sees no CUDA device on this machine")
    results = {"date": datetime.date.today().isoformat(), "machine": machine()}
    if not args.no_ants:
        import_ants()  # a missing antspyx fails here, before any pair
    results["jobs"] = args.jobs
    results["ants_seed"] = None if args.no_ants else ANTS_SEED
    results["ants_threads"] = None if args.no_ants else SYN_ITK_THREADS
    results["partial_fov"] = partial_fov(args.pairs, not args.no_ants, args.jobs, more_seeds=args.more_seeds) \
        if args.pairs else []
    brain_rows = brain_partial_fov(args.brain_pairs, not args.no_ants, args.jobs)
    results["brain_partial_fov"] = {"rows": brain_rows, "jobs": args.jobs, "ants_seed": results["ants_seed"],
                                    "ants_threads": results["ants_threads"]} if brain_rows else None
    results["memory"], results["memory_by_size"] = ([], []) if args.no_memory else \
        memory(args.atlas_counts, args.target_scales)
    results["cuda_memory"] = cuda_memory(args.cuda_caps) if args.cuda_caps else None
    results["hostile"] = None if args.no_hostile else hostile()
    args.out.write_text(json.dumps(results, indent=1))
    if not args.quick:
        _write_section(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
