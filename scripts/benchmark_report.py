"""The registration benchmark's markdown report (``BENCHMARKS.md``, regenerated whole on every run).

Pure functions of the run's results, speed figures, target verdicts and machine info: nothing here
measures anything, and every verdict comes from :mod:`benchmark_targets`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from benchmark_targets import Target, ablation, coarse_grid_cost, group_means
from markdown_sections import replace_section
from crossmodalmas.synth import SynthConfig
from registration_cases import (INVERT_FRACTION, PHANTOM_SEEDS, SYNTHETIC_CONFIG, SYNTHETIC_MAPS, SYNTHETIC_SEED,
                                SYNTHETIC_SHAPE, SYNTHETIC_SOURCES, SYNTHETIC_SPACING_MM, SYNTHSEG_BLUR_VOX,
                                SYNTHSEG_GROUPS, SYNTHSEG_MARGIN_MM, SYNTHSEG_NOISE, SYNTHSEG_PAIRS,
                                SYNTHSEG_SPACING_MM, TRAINED_SOURCES)
from registration_methods import ANTS_SEED

PUBLISHED = [  # (method, data, figure, source): published by others, quoted as context only
    ("VoxelMorph", "brain MR (atlas-based)", "Dice 0.753; 0.45 s per pair on a GPU, 57 s on a CPU",
     "Balakrishnan et al., IEEE TMI 2019"),
    ("ANTs SyN", "brain MR (same study)", "Dice 0.749", "Balakrishnan et al., IEEE TMI 2019"),
    ("best Learn2Reg OASIS entries", "inter-subject brain MR", "Dice about 0.82 at SDlogJ about 0.07",
     "Learn2Reg challenge (Hering et al., IEEE TMI 2022)"),
    ("best Learn2Reg abdomen MR-CT entries", "abdomen MR -> CT", "Dice about 0.79",
     "Learn2Reg challenge (Hering et al., IEEE TMI 2022)"),
]


def fmt(value, digits: int = 3) -> str:
    """A number with ``digits`` decimals; "n/a" for None."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def verdict(met: Optional[bool]) -> str:
    return "not measured" if met is None else ("met" if met else "**missed**")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def targets_section(checked: list[Target]) -> list[str]:
    """The targets: requirement, method, measured figure, verdict; then the counts."""
    rows = [[t.requirement, t.subject, t.measured, verdict(t.met)] for t in checked]
    met = sum(t.met is True for t in checked)
    missed = sum(t.met is False for t in checked)
    return ["## Targets", "", *_table(["target", "method / network", "measured", "verdict"], rows), "",
            f"{met} met, {missed} missed, {len(checked) - met - missed} not measured in this run.", ""]


def results_table(results: list[dict]) -> list[str]:
    """Every pair and method: Dice, HD95, % non-positive Jacobian, SDlogJ, ICE, seconds, device."""
    rows = []
    for entry in results:
        for method, r in entry["methods"].items():
            hd95 = fmt(r["mean_hd95_mm"], 2) + (f" ({r['hd95_missing']} missing)" if r.get("hd95_missing") else "")
            name = f"{method} (failed: {r['error'].replace('|', '/')})" if r.get("error") else method
            rows.append([entry["case"], entry["pair"], "yes" if entry["cross"] else "no", name, fmt(r["mean_dice"]),
                         hd95, fmt(r.get("folding_percent"), 4), fmt(r.get("sd_log_jacobian"), 3),
                         fmt(r.get("inverse_consistency_mm"), 3), fmt(r["seconds"], 1), r.get("device", "cpu")])
    header = ["case", "pair", "cross-modality", "method", "mean Dice", "mean HD95 (mm)", "% non-positive J",
              "SDlogJ", "ICE (mm)", "seconds", "device"]
    return ["## All pairs and methods", "", *_table(header, rows), ""]


def groups_section(results: list[dict]) -> list[str]:
    """Mean Dice of every method per group of pairs."""
    means = group_means(results)
    groups = list(dict.fromkeys(g for row in means.values() for g in row))
    rows = [[method, *(fmt(row.get(g)) for g in groups)] for method, row in means.items()]
    return ["## Mean Dice by group of pairs", "", *_table(["method", *groups], rows), ""]


def ablation_section(results: list[dict]) -> list[str]:
    """Paper mode with and without the invertibility loss (the paper's ablation)."""
    found = ablation(results)
    if not found["pairs"]:
        return ["## Ablation: the invertibility loss", "", "Not measured: net-paper and net-paper-noinv did not "
                "both run on the synthetic pairs.", ""]
    names = {"inverse_consistency_mm": "mean ICE (mm)", "folding_percent": "mean % non-positive J",
             "mean_dice": "mean Dice"}
    rows = [[names[k], fmt(v["net-paper"], 4), fmt(v["net-paper-noinv"], 4), fmt(v["ratio"], 2)]
            for k, v in found.items() if k != "pairs"]
    return ["## Ablation: the invertibility loss", "",
            f"Paper mode trained with (net-paper) and without (net-paper-noinv) the invertibility loss, over the "
            f"{found['pairs']} synthetic pairs both ran on.", "",
            *_table(["figure", "net-paper", "net-paper-noinv", "ratio"], rows), ""]


def coarse_grid_section(results: list[dict]) -> list[str]:
    """What predicting the fields at the training scale costs (or gains) against the full working grid."""
    found = coarse_grid_cost(results)
    head = ["## What the coarse grid costs", "",
            "The diffeomorphic network at its training scale (net-diffeo: the grid of its entry's `working_grid`, "
            "fields upsampled to the working grid) vs the same weights on the full working grid "
            "(net-diffeo@working-grid). Cost = working grid - training scale (positive: the coarse grid loses Dice).",
            ""]
    if not found:
        return head + ["Not measured: the two methods did not both run.", ""]
    rows = [[g, str(v["pairs"]), fmt(v["training scale"]), fmt(v["working grid"]), f"{v['cost']:+.3f}"]
            for g, v in found.items()]
    return head + _table(["group", "pairs", "training scale", "working grid", "cost"], rows) + [""]


def speed_section(speed: dict) -> list[str]:
    """One network pass on the CPU, SyN per atlas, synth_pair, and the GPU where one was lent."""
    shape = "x".join(map(str, speed["shape"]))
    syn = speed["syn_brain_s_per_atlas"]
    rows = [[n["name"], fmt(n["cpu_s"], 2), fmt(None if syn is None else syn / n["cpu_s"], 1)]
            for n in speed["networks"].values()]
    lines = ["## Speed", "", f"One network pass (`net.predict`, `torch.inference_mode`, one warm-up, median of 3) "
             f"for one atlas at {shape} (D x H x W) on the CPU (torch threads: {speed['threads']}). SyN: "
             f"{fmt(syn, 1)} s per atlas (mean wall clock on the brain pairs of this run).", "",
             *_table(["network", "CPU s per pass", "SyN / network"], rows), "",
             f"`synth_pair` (default `SynthConfig`) of a {'x'.join(map(str, speed['synth_shape']))} random-shapes "
             f"map on the CPU: {fmt(speed['synth_cpu_s'], 2)} s (median of 3 after a warm-up).", ""]
    gpu = speed["gpu"]
    if gpu is None:
        return lines + ["GPU: no GPU was lent to this run (nothing is estimated).", ""]
    rows = [[speed["networks"][r]["name"], fmt(g["one_s"], 3), fmt(g["batch_s"], 3)]
            for r, g in gpu["networks"].items()]
    synth = "x".join(map(str, speed["synth_shape"]))
    return lines + [f"GPU: {gpu['device_name']}{gpu_run_sentence(gpu)}.", "",
                    *_table(["network", "1 atlas s", f"{speed['gpu_atlases']} atlases in one batch s"], rows), "",
                    f"`synth_pair` at {synth} on the GPU: {fmt(gpu['synth_s'], 3)} s (median of 3 after a warm-up).",
                    ""]


def gpu_run_sentence(gpu: dict) -> str:
    """Where GPU columns measured in a separate run ran ("" when they are of this run)."""
    run = gpu.get("run")
    if run is None:
        return ""
    return (f", measured in a separate run on {run['date']} with `{run['command']}`, code at `{run['commit']}` "
            f"({run['cpu']}, {run['cores']} cores, torch {run['torch']}, Python {run['python']})")


def published_section() -> list[str]:
    """Figures published by others, for scale; not measured here."""
    rows = [list(row) for row in PUBLISHED]
    return ["## Published figures (others' papers, not measured here)", "",
            "For scale only: other data, other preprocessing, other machines.", "",
            *_table(["method", "data", "published figure", "source"], rows), ""]


def notes(info: dict, results: list[dict]) -> list[str]:
    """The notes section: what each case, method and number is."""
    groups = "; ".join(f"{name} = {ids}" for name, ids in SYNTHSEG_GROUPS.items())
    fit = next((e["seg_head_dice"] for e in results if "seg_head_dice" in e), {})
    fit = ", ".join(f"{n} {f['own header']:.3f} vs {f['image geometry']:.3f}" for n, f in fit.items()) or "n/a"
    models = ", ".join(f"{role}: `{name}`" for role, name in info["models"].items())
    return [
        "## Notes", "",
        "- brain: OASIS T1 `image_A/B_160x192x144` and their `_seg` maps (scored: every label of B's map), each "
        "resampled (nearest) from its own header onto its image's grid: the data README says to use the image's "
        "geometry, but the seg's own header fits the head (voxels above "
        f"{INVERT_FRACTION:.0%} of the max) better (Dice with the seg's foreground, own header vs image geometry: "
        f"{fit}). `A(inverted)`: inside the head each value becomes max - value, background stays 0: a "
        "contrast-reversed stand-in for another modality. `A->B` is the same-modality reference.",
        f"- phantom: `crossmodalmas.phantoms.demo_case(seed=s, n_atlases=1)`, s in {list(PHANTOM_SEEDS)}: MR-like "
        "atlas -> CT-like target of another anatomy, scored on the MM-WHS structures present in the target.",
        f"- synthseg: SynthSeg label maps, (atlas, target) subjects {list(SYNTHSEG_PAIRS)}, cropped to the labelled "
        f"box + {SYNTHSEG_MARGIN_MM} mm, rendered at 1 mm with a random mean per label (uniform in [0, 1], background "
        f"0), Gaussian blur sigma {SYNTHSEG_BLUR_VOX} voxel, noise std {SYNTHSEG_NOISE}, then resampled (labels: "
        f"nearest) to {SYNTHSEG_SPACING_MM} mm isotropic. All labels are registered and fused; Dice and HD95 are over "
        f"merged structures (FreeSurfer ids): {groups}.",
        f"- synthetic: for each source in {list(SYNTHETIC_SOURCES)}, the maps of "
        f"`LabelMapBank([source], Split.EVAL, {SYNTHETIC_SHAPE}).fixed({1 if info.get('quick') else SYNTHETIC_MAPS})` "
        "(the fixed EVAL split: no "
        f"training run ever sees them), each through `synth_pair` (seed {SYNTHETIC_SEED}, `SynthConfig` "
        f"{'defaults: the training ranges' if SYNTHETIC_CONFIG == SynthConfig() else SYNTHETIC_CONFIG.to_dict()}; "
        f"`dark_background` {SYNTHETIC_CONFIG.dark_background:g}: label 0, air, is dark in that fraction of the "
        "images and of a random, often bright, intensity in the others, unlike real scans): two "
        "random deformations and two random contrasts; atlas = a, target = b, on an isotropic "
        f"{SYNTHETIC_SPACING_MM:g} mm grid (identity direction, centred at 0). Scored on every label of the map "
        "present in the target (contiguous indices; background-texture shapes included). The bundled general models "
        f"train on {', '.join(TRAINED_SOURCES)}: the abdomen is an anatomy they never trained on.",
        "- identity: the atlas translated so its image centre lies on the target's. affine: `affine_align` alone. "
        "Ours: `crossmodalmas.pipeline.segment` with one atlas and `fusion=\"mv\"`, so the numbers are pairwise "
        f"registration (device `{info['ours_device']}`): instance-opt = `model=\"instance-opt\"`; net-* = the "
        f"network alone (`refine_iterations=0`); net-diffeo+refine = {info['refine']} refinement iterations. "
        f"Networks: {models}. net-diffeo@working-grid: a temporary copy of the diffeomorphic entry whose "
        "`working_grid` is `{spacing_mm: 0.001, max_voxels: 1e12}`, so the network runs on the pipeline's working "
        "grid itself. A network that could not be found is skipped, with a message in the run's log.",
        "- syn: `ants.registration(type_of_transform=\"SyN\", aff_metric=\"mattes\", syn_metric=\"mattes\")` (its "
        "own centre-of-mass start and affine stage; multi-threaded, seeded with "
        f"`--random-seed {ANTS_SEED}`), labels warped with `genericLabel`.",
        "- % non-positive J: % of voxels where the forward field's Jacobian determinant is <= 0. SDlogJ (Learn2Reg): "
        "std of log(clip(J + 3, 1e-9, 1e9)). Ours: `result.qc[0]` over the working region, of the deformable field "
        "(after the affine); SyN: of its warp field (`ants.create_jacobian_determinant_image`) over the target's "
        "domain. ICE: mean |U(x) + V(x + U(x))| in mm over the working region (ours only; n/a for identity, affine, "
        "SyN).",
        "- seconds: wall clock of the pair, from the images in memory to the atlas labels on the target grid "
        "(identity/affine: with label resampling; syn: registration + label warp; ours: the whole `segment()` call), "
        f"on the device in the last column, on a shared machine: the highest 1-min load average just before a timed "
        f"method was {info['peak_load']:.2f} (per method in the JSON). Dice and HD95 (95th-percentile symmetric "
        "surface distance) are means over labels; HD95 leaves out labels missing from the prediction (counted). A "
        "method that raised on a pair mapped no label there: Dice 0 on that pair, its error in the table.",
    ]


def _gpu_named(gpu: Optional[dict]) -> str:
    if gpu is None:
        return "no GPU was lent to this run"
    return gpu["device_name"] + (" (its columns of a separate run, see Speed)" if gpu.get("run") else "")


def write_markdown(path: Path, results: list[dict], speed: dict, checked: list[Target], info: dict) -> None:
    """Write the registration section of the report (the other benchmarks keep theirs)."""
    gpu = speed.get("gpu")
    lines = ["# Benchmarks: pairwise atlas -> target registration", "",
             f"Run on {info['date']} with `{info['command']}`, code at `{info['commit']}` (git describe).", "",
             f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']} "
             f"(torch threads: {info['threads']}), "
             f"antspyx {info['antspyx']}, SimpleITK {info['simpleitk']}, Python {info['python']}; GPU: "
             f"{_gpu_named(gpu)}.", "",
             *targets_section(checked), *groups_section(results), *results_table(results),
             *ablation_section(results), *coarse_grid_section(results), *speed_section(speed),
             *published_section(), *notes(info, results), ""]
    replace_section(Path(path), "registration", lines)
