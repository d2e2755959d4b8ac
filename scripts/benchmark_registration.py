"""Benchmark: pairwise atlas -> target registration, side by side, on one machine (writes BENCHMARKS.md).

Methods: ``identity`` (centre alignment), ``affine`` (:func:`crossmodalmas.preprocess.affine_align`), ``syn``
(antspyx SyN, Mattes MI), ``ours`` (:func:`crossmodalmas.pipeline.segment`, one atlas): atlas labels on the target
grid scored against its truth (Dice, HD95), with % folding and wall clock. Cases: ``brain`` (OASIS T1, also with
inverted contrast), ``phantom`` (MR-like -> CT-like), ``synthseg`` (label maps with random contrasts).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from crossmodalmas import metrics
from crossmodalmas.atlases import Atlas
from crossmodalmas.options import SegmentOptions
from crossmodalmas.phantoms import demo_case
from crossmodalmas.pipeline import segment
from crossmodalmas.preprocess import affine_align, isotropic_grid, resample
from crossmodalmas.volume import LPS_TO_RAS, LabelMap, Volume, read_labels, read_volume, to_sitk

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CASES = ("brain", "phantom", "synthseg")
INVERT_FRACTION = 0.02  # contrast inversion: voxels above this fraction of the max are "head"
SYNTHSEG_SPACING_MM, SYNTHSEG_MARGIN_MM = 1.5, 8
SYNTHSEG_BLUR_VOX, SYNTHSEG_NOISE = 1.0, 0.03  # blur sigma at 1 mm, noise std (mean range [0, 1])
SYNTHSEG_PAIRS = ((1, 2), (3, 4), (5, 6))  # (atlas, target) subject numbers
PHANTOM_SEEDS = (1, 2, 3)
SYNTHSEG_GROUPS = {  # scored group -> FreeSurfer ids merged into it
    "cerebral white matter": (2, 41), "cerebral cortex": (3, 42), "lateral ventricles": (4, 43),
    "cerebellum": (7, 8, 46, 47), "thalamus": (10, 49), "basal ganglia": (11, 12, 13, 50, 51, 52), "brainstem": (16,)}
TIME_FACTOR, FOLDING_LIMIT_PERCENT = 5, 0.5  # targets: <= 1/TIME_FACTOR of SyN's time, folding below
TARGETS_TEXT = f"ours' mean Dice >= SyN's, in <= 1/{TIME_FACTOR} of its time, folding < {FOLDING_LIMIT_PERCENT} %"


@dataclass
class Mapped:
    """A method's output: atlas labels on the target grid, % folding (or a callable for it, untimed), extras."""

    labels: np.ndarray
    folding_percent: Optional[float] = None
    folding_later: Optional[Callable[[], float]] = None
    extra: dict = field(default_factory=dict)


@dataclass
class Pair:
    """One atlas -> target problem: images and labels, label values scored, optional {group: ids} merge."""

    case: str
    name: str
    cross: bool
    atlas: Volume
    atlas_labels: LabelMap
    target: Volume
    truth: LabelMap
    labels: tuple[int, ...]
    groups: Optional[dict[int, tuple[int, ...]]] = None
    extra: dict = field(default_factory=dict)


def invert_contrast(array: np.ndarray, fraction: float = INVERT_FRACTION) -> np.ndarray:
    """Invert intensities inside the head: ``max - value`` above ``fraction * max``, 0 elsewhere."""
    top = float(array.max())
    return np.where(array > fraction * top, top - array, 0.0).astype(np.float32)


def group_labels(array: np.ndarray, groups: dict[int, tuple[int, ...]]) -> np.ndarray:
    """Map each value listed in ``groups[g]`` to ``g``; every other value to 0."""
    out = np.zeros(np.shape(array), dtype=np.int32)
    for value, members in groups.items():
        out[np.isin(array, members)] = value
    return out


def render_contrast(labels: np.ndarray, rng: np.random.Generator, blur_vox: float = SYNTHSEG_BLUR_VOX,
                    noise: float = SYNTHSEG_NOISE) -> np.ndarray:
    """A random contrast: a uniform [0, 1] mean per label (background 0), Gaussian blur, noise."""
    values, index = np.unique(labels, return_inverse=True)
    means = np.where(values == 0, 0.0, rng.uniform(0.0, 1.0, size=len(values)))
    image = ndimage.gaussian_filter(means[index.reshape(labels.shape)], blur_vox)
    return (image + rng.normal(0.0, noise, size=image.shape)).astype(np.float32)


def _oasis(name: str) -> tuple[Volume, LabelMap, dict]:
    """An OASIS image, its seg resampled from its own header onto the image grid, and both geometries' head fit."""
    folder = DATA / "images" / "oasis_brain"
    image = read_volume(folder / f"image_{name}_160x192x144.nii.gz")
    seg = read_labels(folder / f"image_{name}_160x192x144_seg.nii.gz")
    own = resample(seg.array, seg.ijk_to_ras, image.grid, labels=True)
    head = (image.array > INVERT_FRACTION * image.array.max()).astype(np.int32)
    fit = {geometry: metrics.dice(head, (labels != 0).astype(np.int32), [1])[1]
           for geometry, labels in (("own header", own), ("image geometry", seg.array))}
    return image, LabelMap(own, image.ijk_to_ras), fit


def brain_pairs() -> list[Pair]:
    """A (contrast-inverted) -> B, then A -> B, of the real OASIS pair."""
    (a, a_seg, a_fit), (b, b_seg, b_fit) = _oasis("A"), _oasis("B")
    labels, fit = tuple(int(v) for v in b_seg.labels), {"seg_head_dice": {"A": a_fit, "B": b_fit}}
    inverted = Volume(invert_contrast(a.array), a.ijk_to_ras)
    return [Pair("brain", "oasis A(inverted)->B", True, inverted, a_seg, b, b_seg, labels, extra=fit),
            Pair("brain", "oasis A->B", False, a, a_seg, b, b_seg, labels, extra=fit)]


def phantom_pairs() -> list[Pair]:
    """MR-like heart phantom atlas -> CT-like target (another anatomy), one per seed."""
    cases = [(seed, demo_case(seed=seed, n_atlases=1)) for seed in PHANTOM_SEEDS]
    return [Pair("phantom", f"phantom seed {seed} MR->CT", True, *case.atlases[0][1:], case.target,
                 case.target_truth, tuple(int(v) for v in case.target_truth.labels)) for seed, case in cases]


def _cropped(labels: LabelMap, margin: int) -> LabelMap:
    """The labelled bounding box plus ``margin`` voxels, with its shifted geometry."""
    found = np.argwhere(labels.array != 0)
    lo = np.maximum(found.min(0) - margin, 0)
    hi = np.minimum(found.max(0) + margin + 1, labels.array.shape)
    shift = np.eye(4)
    shift[:3, 3] = lo[::-1]  # (k, j, i) -> (i, j, k)
    return LabelMap(labels.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], labels.ijk_to_ras @ shift)


def synthseg_subject(number: int, seed: int) -> tuple[Volume, LabelMap]:
    """A SynthSeg label map cropped, rendered with its own contrast at 1 mm, resampled to the bench spacing."""
    full = read_labels(DATA / "labelmaps" / "synthseg_brain" / f"training_seg_{number:02d}.nii.gz")
    crop = _cropped(full, int(round(SYNTHSEG_MARGIN_MM / float(full.grid.spacing.min()))))
    rng = np.random.default_rng(np.random.SeedSequence([seed, number]))
    image = render_contrast(crop.array, rng)
    grid = isotropic_grid(crop.grid, SYNTHSEG_SPACING_MM)
    return (Volume(resample(image, crop.ijk_to_ras, grid), grid.ijk_to_ras),
            LabelMap(resample(crop.array, crop.ijk_to_ras, grid, labels=True), grid.ijk_to_ras))


def synthseg_pairs() -> list[Pair]:
    """Inter-subject pairs, each subject with its own random contrast; scored on merged structures."""
    groups = {i + 1: ids for i, ids in enumerate(SYNTHSEG_GROUPS.values())}
    subjects = {number: synthseg_subject(number, seed=0) for pair in SYNTHSEG_PAIRS for number in pair}
    return [Pair("synthseg", f"synthseg {a:02d}->{t:02d}", True, *subjects[a], *subjects[t], tuple(groups), groups)
            for a, t in SYNTHSEG_PAIRS]


def _labels_through(pair: Pair, transform: sitk.Transform) -> np.ndarray:
    return resample(pair.atlas_labels.array, pair.atlas_labels.ijk_to_ras, pair.truth.grid, transform, labels=True)


def run_identity(pair: Pair) -> Mapped:
    """Translate the atlas so its image centre lies on the target's (no folding: rigid)."""
    centre = [g.corners_ras().mean(0) for g in (pair.target.grid, pair.atlas.grid)]
    offset_lps = (centre[1] - centre[0]) * LPS_TO_RAS.diagonal()[:3]  # fixed -> moving, LPS
    return Mapped(_labels_through(pair, sitk.TranslationTransform(3, offset_lps.tolist())))


def run_affine(pair: Pair) -> Mapped:
    """The package's affine pre-alignment alone."""
    return Mapped(_labels_through(pair, affine_align(pair.target, pair.atlas)))


def run_ours(pair: Pair) -> Mapped:
    """Affine + instance optimisation, exactly as the pipeline runs it (one atlas, majority vote)."""
    result = segment(pair.target, [Atlas("atlas", pair.atlas, pair.atlas_labels)], SegmentOptions(fusion="mv"))
    return Mapped(result.labels.array, result.qc[0].folding_percent,
                  extra={"device": result.device, "steps_s": result.timings,
                         "working_grid_kji": list(result.working_grid.shape)})


def _to_ants(ants, array: np.ndarray, ijk_to_ras: np.ndarray):
    image = to_sitk(array.astype(np.float32), ijk_to_ras)  # LPS geometry, as ANTs wants it
    return ants.from_numpy(sitk.GetArrayFromImage(image).T.copy(), origin=image.GetOrigin(),
                           spacing=image.GetSpacing(), direction=np.array(image.GetDirection()).reshape(3, 3))


def make_syn(ants) -> Callable[[Pair], Mapped]:
    """``run_syn(pair)``: ANTs affine + SyN (Mattes MI), labels warped with ``genericLabel``."""
    def run_syn(pair: Pair) -> Mapped:
        fixed = _to_ants(ants, pair.target.array, pair.target.ijk_to_ras)
        moving = _to_ants(ants, pair.atlas.array, pair.atlas.ijk_to_ras)
        labels = _to_ants(ants, pair.atlas_labels.array, pair.atlas_labels.ijk_to_ras)
        reg = ants.registration(fixed, moving, type_of_transform="SyN", aff_metric="mattes", syn_metric="mattes")
        warped = ants.apply_transforms(fixed, labels, reg["fwdtransforms"], interpolator="genericLabel")
        return Mapped(np.rint(warped.numpy().T).astype(np.int32),
                      folding_later=lambda: _syn_folding(ants, fixed, reg))
    return run_syn


def _syn_folding(ants, fixed, reg: dict) -> float:
    """% of ``fixed``'s domain where the SyN warp's Jacobian determinant is <= 0; removes ANTs' files."""
    determinant = ants.create_jacobian_determinant_image(fixed, reg["fwdtransforms"][0], do_log=False).numpy()
    for path in filter(os.path.isfile, {*reg["fwdtransforms"], *reg["invtransforms"]}):
        os.remove(path)
    return float((determinant <= 0).mean() * 100.0)


def score(pair: Pair, predicted: np.ndarray) -> dict:
    """Dice and HD95 (mm) per scored label and their means."""
    truth = pair.truth.array
    if pair.groups:
        predicted, truth = group_labels(predicted, pair.groups), group_labels(truth, pair.groups)
    report = metrics.segmentation_report(predicted, truth, pair.truth.grid.spacing_kji, pair.labels)
    return {"dice": {k: v["dice"] for k, v in report.items()}, "hd95_mm": {k: v["hd95_mm"] for k, v in report.items()},
            "mean_dice": float(np.mean([v["dice"] for v in report.values()])),
            "mean_hd95_mm": float(np.mean([v["hd95_mm"] for v in report.values()]))}


def run_pair(pair: Pair, methods: dict[str, Callable[[Pair], Mapped]]) -> dict:
    """Every method on one pair: scores, folding, seconds (the wall clock of the method call)."""
    out = {}
    for name, method in methods.items():
        print(f"  {pair.name}: {name} ...")
        load, started = os.getloadavg()[0], time.perf_counter()
        mapped = method(pair)
        seconds = time.perf_counter() - started
        folding = mapped.folding_later() if mapped.folding_later else mapped.folding_percent
        out[name] = {**score(pair, mapped.labels), "folding_percent": folding, "seconds": seconds,
                     "load_1min_before": load, **mapped.extra}
        print(f"    Dice {out[name]['mean_dice']:.3f}  HD95 {out[name]['mean_hd95_mm']:.2f} mm  {seconds:.1f} s")
    return out


def load_pairs(cases: list[str], quick: bool) -> list[Pair]:
    """The pairs of the chosen sets (first of each with ``quick``); skipped with a message without ../shared/data."""
    loaders = {"brain": brain_pairs, "phantom": phantom_pairs, "synthseg": synthseg_pairs}
    pairs = []
    for case in cases:
        if case != "phantom" and not DATA.is_dir():
            print(f"skipping the {case} cases: {DATA} is absent (a fresh checkout has no shared data)")
            continue
        print(f"loading the {case} cases ...")
        pairs += loaders[case]()[:1 if quick else None]
    return pairs


def import_ants():
    """antspyx, or None with a printed message (the SyN column is then skipped)."""
    try:
        import ants  # deferred: an optional benchmark dependency
    except ImportError:
        print("antspyx is not installed (pip install antspyx): the SyN column is skipped")
        return None
    return ants


def machine() -> dict:
    """CPU model, cores and library versions of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor())
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip() if shutil.which("git") else ""
    return {"cpu": model, "cores": os.cpu_count(), "commit": commit or "unknown", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "antspyx": getattr(sys.modules.get("ants"), "__version__", "absent"),
            "simpleitk": sitk.Version.VersionString(), "python": platform.python_version()}


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdict(ours: dict, syn: Optional[dict]) -> dict:
    return {"dice": None if syn is None else ours["mean_dice"] >= syn["mean_dice"],
            "time": None if syn is None else ours["seconds"] * TIME_FACTOR <= syn["seconds"],
            "folding": ours["folding_percent"] < FOLDING_LIMIT_PERCENT}


def _yes(flag: Optional[bool]) -> str:
    return "n/a" if flag is None else ("yes" if flag else "**no**")


def results_table(results: list[dict]) -> list[str]:
    """Markdown rows: every pair and method."""
    lines = ["| case | pair | cross-modality | method | mean Dice | mean HD95 (mm) | folding % | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in results:
        for method, r in entry["methods"].items():
            lines.append(f"| {entry['case']} | {entry['pair']} | {'yes' if entry['cross'] else 'no'} | {method} | "
                         f"{_fmt(r['mean_dice'])} | {_fmt(r['mean_hd95_mm'], 2)} | "
                         f"{_fmt(r['folding_percent'], 3)} | {_fmt(r['seconds'], 1)} |")
    return lines


def summary_table(results: list[dict]) -> tuple[list[str], list[Optional[bool]]]:
    """Markdown rows of the cross-modality pairs: ours vs SyN and whether each target held."""
    lines = ["| pair | ours Dice | SyN Dice | ours s | SyN s | SyN/ours time | ours folding % | "
             f"Dice >= SyN | time <= 1/{TIME_FACTOR} | folding < {FOLDING_LIMIT_PERCENT} % | all held |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    held = []
    for entry in (e for e in results if e["cross"]):
        ours, syn = entry["methods"]["ours"], entry["methods"].get("syn")
        verdict = _verdict(ours, syn)
        ok = None if None in verdict.values() else all(verdict.values())
        held.append(ok)
        entry["targets"] = {**verdict, "all": ok}
        ratio = None if syn is None else syn["seconds"] / ours["seconds"]
        lines.append(f"| {entry['pair']} | {_fmt(ours['mean_dice'])} | {_fmt(syn and syn['mean_dice'])} | "
                     f"{_fmt(ours['seconds'], 1)} | {_fmt(syn and syn['seconds'], 1)} | {_fmt(ratio, 2)} | "
                     f"{_fmt(ours['folding_percent'], 3)} | {_yes(verdict['dice'])} | {_yes(verdict['time'])} | "
                     f"{_yes(verdict['folding'])} | {_yes(ok)} |")
    return lines, held


def notes(info: dict, results: list[dict]) -> list[str]:
    """The notes section: what each case and number is."""
    groups = "; ".join(f"{name} = {ids}" for name, ids in SYNTHSEG_GROUPS.items())
    fit = next((e["seg_head_dice"] for e in results if "seg_head_dice" in e), {})
    fit = ", ".join(f"{n} {f['own header']:.3f} vs {f['image geometry']:.3f}" for n, f in fit.items())
    return [
        "## Notes", "", f"- Targets (every cross-modality pair): {TARGETS_TEXT}.",
        "- brain: OASIS T1 `image_A/B_160x192x144` and their `_seg` maps (scored: every label of B's map), each "
        "resampled (nearest) from its own header onto its image's grid: the data README says to use the image's "
        "geometry, but the seg's own header fits the head (voxels above "
        f"{INVERT_FRACTION:.0%} of the max) better (Dice with the seg's foreground, own header vs image geometry: "
        f"{fit}). `A(inverted)`: inside the head each value becomes max - value, background stays 0: a "
        "contrast-reversed stand-in for another modality. `A->B` is the same-modality reference, outside the targets.",
        f"- phantom: `crossmodalmas.phantoms.demo_case(seed=s, n_atlases=1)`, s in {list(PHANTOM_SEEDS)}: MR-like "
        "atlas -> CT-like target of another anatomy, scored on the MM-WHS structures present in the target.",
        f"- synthseg: SynthSeg label maps, (atlas, target) subjects {list(SYNTHSEG_PAIRS)}, cropped to the labelled "
        f"box + {SYNTHSEG_MARGIN_MM} mm, rendered at 1 mm with a random mean per label (uniform in [0, 1], background "
        f"0), Gaussian blur sigma {SYNTHSEG_BLUR_VOX} voxel, noise std {SYNTHSEG_NOISE}, then resampled (labels: "
        f"nearest) to {SYNTHSEG_SPACING_MM} mm isotropic to keep SyN and ours affordable. All labels are registered "
        f"and fused; Dice and HD95 are over merged structures (FreeSurfer ids): {groups}.",
        "- identity: the atlas translated so its image centre lies on the target's. affine: `affine_align` alone. "
        "ours: `crossmodalmas.pipeline.segment` with one atlas, `SegmentOptions(fusion=\"mv\")` (defaults otherwise; "
        f"device `{info['ours_device']}`); folding: `result.qc[0].folding_percent`, over its working region.",
        "- syn: `ants.registration(type_of_transform=\"SyN\", aff_metric=\"mattes\", syn_metric=\"mattes\")` (its "
        "own centre-of-mass start and affine stage; multi-threaded, unseeded), labels warped with `genericLabel`; "
        "folding: % of the target's domain where the SyN warp's `ants.create_jacobian_determinant_image` is <= 0.",
        "- seconds: wall clock of the pair, from the images in memory to the atlas labels on the target grid "
        "(identity/affine: with label resampling; syn: registration + label warp; ours: the whole `segment()` call), "
        f"on a shared machine: the highest 1-min load average just before a timed method was {info['peak_load']:.2f} "
        "(per method in the JSON). Dice and HD95 (95th-percentile symmetric surface distance) are means over labels.",
    ]


def write_markdown(path: Path, results: list[dict], info: dict) -> list[Optional[bool]]:
    """BENCHMARKS.md: machine, command, the tables, notes. Returns per-pair target verdicts."""
    summary, held = summary_table(results)
    lines = ["# Benchmarks: pairwise atlas -> target registration", "",
             f"Run on {info['date']} with `{info['command']}`, code at `{info['commit']}` (git describe).", "",
             f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']} ({info['threads']} threads), "
             f"antspyx {info['antspyx']}, SimpleITK {info['simpleitk']}, Python {info['python']}.", "",
             "## Cross-modality summary: ours vs ANTs SyN", "", *summary, "",
             f"Targets held on {held.count(True)} of {len(held) - held.count(None)} cross-modality pairs checked.", "",
             "## All pairs and methods", "", *results_table(results), "", *notes(info, results), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return held


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    parser.add_argument("--quick", action="store_true", help="one pair per set (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown report")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmark_out" / "registration.json", help="raw numbers")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if set(args.cases) - set(CASES):
        parser.error(f"--cases: unknown {sorted(set(args.cases) - set(CASES))}; choose from {list(CASES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up when piped to a log
    ants = import_ants()
    methods = {"identity": run_identity, "affine": run_affine, **({"syn": make_syn(ants)} if ants else {}),
               "ours": run_ours}
    pairs = load_pairs(args.cases, args.quick)
    if not pairs:
        print("no case to run")
        return 0
    results = [{"case": p.case, "pair": p.name, "cross": p.cross, **p.extra, "methods": run_pair(p, methods)}
               for p in pairs]
    info = {**machine(), "date": datetime.date.today().isoformat(),
            "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
            "ours_device": results[0]["methods"]["ours"]["device"],
            "peak_load": max(m["load_1min_before"] for r in results for m in r["methods"].values())}
    held = write_markdown(args.out, results, info)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1, default=str), encoding="utf-8")
    print(f"wrote {args.out} and {args.json}; targets held on {held.count(True)} of {len(held)} cross-modality pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
