"""Benchmark: label fusion of warped atlases, side by side, on one machine (a section of BENCHMARKS.md).

    python scripts/benchmark_fusion.py [--sources brain,prostate,heart,abdomen] [--tasks N] [--no-oasis]
        [--no-jlf] [--quick] [--out BENCHMARKS.md] [--json FILE] [--figure FILE]

Each multi-atlas task (a target of one contrast and 8 atlases of other random contrasts, from
held-out label maps no training run saw; and the real OASIS pair) is registered once by
:func:`crossmodalmas.pipeline.segment` (the default network + refinement); every fusion method
then fuses the *same* warped atlases: ours through :func:`crossmodalmas.refusion.refuse` (mv,
nlwv, loa, loa-local, plf), SimpleITK's multi-label STAPLE, and antspyx joint label fusion.
Scored on the target's own grid: mean Dice and HD95 over its labels, and seconds. Also: Dice
against the number of atlases (1..8, seed 004 Fig. 3) with atlas selection on (the best n by
the pipeline's selection score) and off (random n, mean of three draws); the Spearman rho of
the similarity network's weights against the label Dice of the 15³ patches they weight
(seed 000 Fig. 5); and the fusion time of 10 atlases at 160x192x224.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
from scipy.stats import spearmanr

from benchmark_registration import hd95_cropped, machine
from fusion_cases import Task, load_tasks
from markdown_sections import replace_section
from registration_cases import ROOT
from registration_methods import import_ants
from crossmodalmas import metrics
from crossmodalmas.features import mind_ssc
from crossmodalmas.fusion import fuse
from crossmodalmas.options import FusionMethod, SegmentOptions
from crossmodalmas.phantoms import heart_tissue_map, make_grid, random_heart_anatomy, tissue_to_labels
from crossmodalmas.pipeline import segment
from crossmodalmas.preprocess import resample, resample_probabilities
from crossmodalmas.refusion import refuse
from crossmodalmas.result import AtlasQC, Result
from crossmodalmas.volume import Grid, LabelMap
from crossmodalmas.train.patches import patch_dice, sample_queries

OURS = ("mv", "nlwv", "loa", "loa-local", "plf")
CURVE_METHODS = ("mv", "loa", "plf")
RANDOM_DRAWS = 3
# antspyx's default search radius (3: 7³ shifts, each with 5³ patches, per voxel and atlas) took
# minutes per task on this CPU; 1 keeps JLF's patch model with a 3³ search, as our NLWV.
JLF_PATCH_RADIUS, JLF_SEARCH_RADIUS = 2, 1
SPEED_SHAPE, SPEED_ATLASES, SPEED_SPACING_MM, SPEED_SHIFT = (160, 192, 224), 10, 0.6, 3


def on_target_grid(result: Result, classes: np.ndarray) -> np.ndarray:
    """Working-grid class indices -> label values on the target's grid, as the pipeline resamples."""
    probabilities = np.eye(len(result.label_values), dtype=np.float32)[classes].transpose(3, 0, 1, 2)
    return result.label_values[resample_probabilities(probabilities, result.working_grid, result.labels.grid)]


def run_staple(result: Result) -> np.ndarray:
    """SimpleITK's multi-label STAPLE (Warfield 2004) on the warped atlas classes."""
    images = [sitk.GetImageFromArray(c.astype(np.uint16)) for c in result.warped_classes]
    staple = sitk.MultiLabelSTAPLEImageFilter()
    staple.SetLabelForUndecidedPixels(0)
    fused = staple.Execute(images)
    return on_target_grid(result, sitk.GetArrayFromImage(fused).astype(np.int64))


def make_jlf(ants) -> Callable[[Result], np.ndarray]:
    """antspyx joint label fusion (Wang et al. 2013) on the warped atlas images and labels."""
    def run_jlf(result: Result) -> np.ndarray:
        def image(array):
            return ants.from_numpy(np.ascontiguousarray(array.T, dtype=np.float32))
        mask = image((result.warped_classes > 0).any(0).astype(np.float32))
        mask = ants.iMath(mask, "MD", 2)  # JLF works inside the mask: the atlases' labels plus a margin
        out = ants.joint_label_fusion(image(result.target_image), mask,
                                      [image(a) for a in result.warped_images],
                                      label_list=[image(c) for c in result.warped_classes.astype(np.float32)],
                                      rad=JLF_PATCH_RADIUS, r_search=JLF_SEARCH_RADIUS)
        return on_target_grid(result, np.rint(out["segmentation"].numpy().T).astype(np.int64))
    return run_jlf


def score(task: Task, predicted: np.ndarray) -> dict:
    dice = metrics.dice(predicted, task.truth.array, list(task.labels))
    spacing = task.truth.grid.spacing_kji
    hd = [hd95_cropped(predicted, task.truth.array, label, spacing) for label in task.labels]
    finite = [h for h in hd if np.isfinite(h)]
    return {"mean_dice": float(np.mean(list(dice.values()))), "hd95_mm": float(np.mean(finite)) if finite else None}


def _timed(call):
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


def fuse_all(task: Task, result: Result, peers: dict) -> dict:
    """Every method on the same warped atlases: ``{method: {mean_dice, hd95_mm, seconds}}``."""
    rows = {}
    for method in OURS:
        fused, seconds = _timed(lambda: refuse(result, method=method))
        if method == "plf":
            result.similarity, result.similarity_model = fused.similarity, fused.similarity_model  # computed once
        rows[method] = {**score(task, fused.labels.array), "seconds": seconds}
    for name, run in peers.items():
        labels, seconds = _timed(lambda: run(result))
        rows[name] = {**score(task, labels), "seconds": seconds}
    return rows


def curve(task: Task, result: Result, seed: int) -> dict:
    """Mean Dice against the number of atlases, with selection (best n by score) and without (random n)."""
    count = len(result.atlas_names)
    ranked = list(np.argsort([-q.selection_score for q in result.qc], kind="stable"))
    rng = np.random.default_rng(seed)
    draws = [rng.permutation(count) for _ in range(RANDOM_DRAWS)]
    out = {}
    for method in CURVE_METHODS:
        selected = [score(task, refuse(result, ranked[:n], method).labels.array)["mean_dice"]
                    for n in range(1, count + 1)]
        random = [float(np.mean([score(task, refuse(result, list(d[:n]), method).labels.array)["mean_dice"]
                                 for d in draws])) for n in range(1, count + 1)]
        out[method] = {"selected": selected, "random": random}
    return out


def similarity_rank(task: Task, result: Result, seed: int, queries: int = 2000) -> dict:
    """PLF weights against the centre-structure Dice of the 15³ label patches they weight, at the
    target's label boundaries on the working grid (where the atlases disagree)."""
    weights = refuse(result, method="plf").weights
    truth = resample(task.truth.array, task.truth.ijk_to_ras, result.working_grid, labels=True)
    truth = torch.from_numpy(np.searchsorted(result.label_values, truth))
    generator = torch.Generator().manual_seed(seed)
    points = sample_queries(truth, queries, 7, generator)
    disagree = (result.warped_classes != result.warped_classes[:1]).any(0)
    points = points[torch.from_numpy(disagree[tuple(points.T.numpy())])]
    offsets = torch.zeros((points.shape[0], 1, 3), dtype=torch.long)
    dice = np.stack([patch_dice(truth, torch.from_numpy(c.astype(np.int64)), points, offsets)[:, 0].numpy()
                     for c in result.warped_classes], axis=1)  # (Q, N)
    sim = weights[(slice(None), *points.T.numpy())].T  # (Q, N)
    rho = spearmanr(sim.ravel(), dice.ravel()).statistic if len(points) else float("nan")
    return {"spearman": float(rho), "points": int(len(points))}


def _large_result(labels: torch.Tensor, logits: torch.Tensor) -> Result:
    """A result whose working grid is the target's grid: what re-fusion of a large case reads."""
    n, shape = labels.shape[0], tuple(labels.shape[2:])
    grid = Grid(shape, np.eye(4))
    classes = labels[:, 0].numpy().astype(np.uint8)
    qc = [AtlasQC(f"atlas-{i}", 0.0, 0.0, 0.0, 1.0, 1.0, 1.0) for i in range(n)]
    return Result(labels=LabelMap(classes[0].astype(np.int32), grid.ijk_to_ras), working_grid=grid,
                  label_values=np.arange(int(labels.max()) + 1), atlas_names=[q.name for q in qc],
                  target_image=np.zeros(shape, np.float32), warped_images=np.zeros((n, *shape), np.float32),
                  warped_classes=classes, weights=np.zeros((n, *shape), np.float32),
                  uncertainty=np.zeros(shape, np.float32), qc=qc, fusion=FusionMethod.MAJORITY_VOTE,
                  device="cpu", similarity=logits.numpy(), similarity_model="given")


def _nlwv_seconds(base, shifts, labels, classes, generator) -> float:
    """NLWV's vote alone: its MIND-SSC descriptors come with the registration step."""
    image = base.float() / classes + 0.05 * torch.randn(base.shape, generator=generator)
    target_features = mind_ssc(image)
    atlas_features = mind_ssc(torch.cat([torch.roll(image, tuple(s.tolist()), dims=(2, 3, 4)) for s in shifts]))
    return _timed(lambda: fuse("nlwv", labels, classes, target_features, atlas_features))[1]


def speed_at_scale(seed: int = 0) -> dict:
    """Seconds to fuse, and to fuse again with one atlas left out (:func:`refuse`, labels on the
    target grid included), 10 atlases on a 160x192x224 grid: the heart phantom's MM-WHS labels at
    0.6 mm (the heart fills the grid), each atlas shifted by up to 3 voxels along each axis (they disagree at the boundaries)."""
    generator = torch.Generator().manual_seed(seed)
    anatomy = random_heart_anatomy(np.random.default_rng(seed))
    grid = make_grid(SPEED_SHAPE, (SPEED_SPACING_MM,) * 3, centre_ras=(0.0, 0.0, anatomy.heart_shift_mm[2]))
    codes = tissue_to_labels(heart_tissue_map(anatomy, grid), grid).array
    base = torch.from_numpy(np.unique(codes, return_inverse=True)[1].reshape(codes.shape))[None, None]
    shifts = torch.randint(-SPEED_SHIFT, SPEED_SHIFT + 1, (SPEED_ATLASES, 3), generator=generator)
    labels = torch.cat([torch.roll(base, tuple(s.tolist()), dims=(2, 3, 4)) for s in shifts]).to(torch.uint8)
    classes = int(labels.max()) + 1  # uint8 class indices, as the pipeline keeps them
    logits = torch.randn((SPEED_ATLASES, *SPEED_SHAPE), generator=generator)
    disagree = float((labels != labels[:1]).any(0).float().mean())
    out = {"shape": list(SPEED_SHAPE), "atlases": SPEED_ATLASES, "disagreeing_fraction": round(disagree, 3),
           "fuse_s": {}, "refuse_s": {}}
    large = _large_result(labels, logits)
    keep = list(range(1, SPEED_ATLASES))
    out["fuse_s"]["nlwv"] = _nlwv_seconds(base, shifts, labels, classes, generator)
    for method in ("mv", "loa", "plf"):
        fuse(method, labels, classes, similarity=logits)  # warm-up
        out["fuse_s"][method] = min(_timed(lambda: fuse(method, labels, classes, similarity=logits))[1]
                                    for _ in range(2))
        out["refuse_s"][method] = min(_timed(lambda: refuse(large, keep, method))[1] for _ in range(2))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", default="brain,prostate,heart,abdomen")
    p.add_argument("--tasks", type=int, default=1, help="tasks per synthetic source")
    p.add_argument("--no-oasis", action="store_true")
    p.add_argument("--no-jlf", action="store_true")
    p.add_argument("--similarity-model", metavar="NAME|PATH", help="default: the bundled default")
    p.add_argument("--quick", action="store_true", help="one small task, no curve, no JLF (a smoke test)")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmark_fusion.json")
    p.add_argument("--figure", type=Path, default=ROOT / "docs" / "fusion_atlases.png")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from fusion_report import fusion_markdown, plot_curves

    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ants = None if (args.no_jlf or args.quick) else import_ants()
    peers = {"staple": run_staple, **({"jlf": make_jlf(ants)} if ants is not None else {})}
    tasks = load_tasks(args.sources.split(","), 1 if args.quick else args.tasks,
                       oasis=not (args.no_oasis or args.quick), quick=args.quick)
    results = []
    for index, task in enumerate(tasks):
        print(f"[{index + 1}/{len(tasks)}] {task.name}: registering {len(task.atlases)} atlases ...", flush=True)
        options = SegmentOptions(fusion="mv", similarity_model=args.similarity_model)
        result, seconds = _timed(lambda: segment(task.target, task.atlases, options))
        result.similarity_model = args.similarity_model
        entry = {"task": task.name, "group": task.group, "atlases": len(result.atlas_names),
                 "registration_s": seconds, "methods": fuse_all(task, result, peers)}
        if len(result.atlas_names) > 2 and not args.quick:
            entry["curve"] = curve(task, result, seed=index)
        entry["similarity"] = similarity_rank(task, result, seed=index)
        print(json.dumps({k: v for k, v in entry.items() if k != "curve"}, default=float), flush=True)
        results.append(entry)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report = {"machine": {**machine(), "date": datetime.date.today().isoformat(), "gpu": gpu}, "argv": sys.argv[1:],
              "tasks": results, "speed": speed_at_scale()}
    args.json.write_text(json.dumps(report, indent=2, default=float))
    figure = plot_curves(results, args.figure) if any("curve" in r for r in results) else None
    replace_section(args.out, "fusion", fusion_markdown(report, figure, args.out.parent))
    print(f"wrote {args.out} (fusion section), {args.json}" + (f", {figure}" if figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
