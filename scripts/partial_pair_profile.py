"""Where the evidence of a partial pair points: along the slab's thin axis, offsets from the
pose the pair was made with (:func:`robustness_cases.true_transform`), the affine step's score
(``N * MI`` on its 3.5 mm grid, bins split by the atlas's labels) beside the organ Dice of the
atlas's labels placed by that pose alone (no deformable step).

Where the score peaks at another offset than the Dice, no image-driven rigid placement finds
the pose the benchmark scores against: the two phantom subjects' images agree best elsewhere.
``--same-anatomy`` profiles the pairs' controls (the atlas painted from the target's abdomen):
there the score should peak within a few millimetres of 0, and where it does, an offset of the
two-subject pair is the subjects' difference, not the score's.

``--deformed`` adds what :func:`crossmodalmas.pipeline.segment` makes of each placement (its
affine step replaced by it): the organ Dice after the deformable step, and the MIND-SSC
similarity to the target after it (the run's QC figure). Where the Dice after the deformable
step is high at 0 but both image measures peak elsewhere, the pair is lost to its pose alone:
neither the affine measure nor the deformable step's own similarity tells that pose apart.

``--section`` writes, for every pair given, where the score peaks along the axis between the
two subjects and on the pair's control, and what the pose at the two-subject peak overlaps, as
the "partial-evidence" section of BENCHMARKS.md: which of the benchmark's pairs the image
evidence itself places elsewhere than the layout.

    python scripts/partial_pair_profile.py --pairs 16 18 20 [--reach 30] [--step 3] [--same-anatomy] [--deformed]
    python scripts/partial_pair_profile.py --pairs $(seq 0 23) --section
"""

from __future__ import annotations

import argparse
import datetime
import warnings
from contextlib import contextmanager
from typing import Optional

import numpy as np
import SimpleITK as sitk

from benchmark_registration import machine
from markdown_sections import replace_section
from registration_cases import ROOT
from robustness_cases import mean_dice, partial_pair, true_transform
from crossmodalmas.affine import _POLISH_SPACING_MM, AffineAligner, slab_axis
from crossmodalmas.global_search import GlobalSearch
from crossmodalmas.options import SegmentOptions
from crossmodalmas.pipeline import segment
from crossmodalmas.preprocess import resample
from crossmodalmas.search_grid import translated


def placed_labels(pair, transform: sitk.Transform) -> np.ndarray:
    """The atlas's labels on the target's grid through ``transform`` (nearest neighbour)."""
    return resample(pair.atlas.labels.array, pair.atlas.labels.ijk_to_ras, pair.target.grid, transform, labels=True)


@contextmanager
def _aligned_by(transform: sitk.Transform):
    """The pipeline's affine step gives ``transform`` for every atlas while inside (a
    diagnostic's way to start the deformable step from a chosen placement)."""
    real = AffineAligner.align
    AffineAligner.align = lambda self, atlas, seed=0, labels=None: transform
    try:
        yield
    finally:
        AffineAligner.align = real


def deformed(pair, transform: sitk.Transform, options: SegmentOptions) -> tuple[float, float]:
    """Organ Dice of :func:`segment` started from ``transform``, and its MIND-SSC similarity to
    the target after the deformable step (:attr:`AtlasQC.similarity_after`)."""
    with _aligned_by(transform), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the slab's unknown voxels, said on every run
        result = segment(pair.target, [pair.atlas], options)
    return mean_dice(result.labels.array, pair.truth.array, pair.labels), result.qc[0].similarity_after


def profile(seed: int, reach_mm: float, step_mm: float, same_anatomy: bool = False,
            deform: Optional[SegmentOptions] = None) -> list[tuple[float, ...]]:
    """(offset mm, score, affine-only organ Dice) along the slab axis of pair ``seed`` (or of its
    same-anatomy control); with ``deform``, each row adds :func:`deformed`'s Dice and similarity
    of a run with those options."""
    return _profile_of(partial_pair(seed, same_anatomy), reach_mm, step_mm, deform)


def _profile_of(pair, reach_mm: float, step_mm: float, deform: Optional[SegmentOptions] = None):
    """:func:`profile` of a pair already made."""
    truth = true_transform(pair)
    search = GlobalSearch(pair.target, spacing_mm=_POLISH_SPACING_MM)
    ready = search.moving(pair.atlas.image, pair.atlas.labels)
    axis = slab_axis(pair.target, pair.atlas.image, truth, search.shares(ready, truth))
    rows = []
    for offset in np.arange(-reach_mm, reach_mm + 1e-9, step_mm):
        placed = translated(truth, offset * axis)
        dice = mean_dice(placed_labels(pair, placed), pair.truth.array, pair.labels)
        after = deformed(pair, placed, deform) if deform is not None else ()
        rows.append((float(offset), search.scores(ready, [placed])[0], dice, *after))
    return rows


def _peak(rows, column: int) -> float:
    return max(rows, key=lambda row: row[column])[0]


SECTION = "partial-evidence"
NEAR_MM = 6.0  # a score peak this close to the layout's pose: within the deformable step's easy reach


def evidence(seed: int, reach_mm: float, step_mm: float) -> dict:
    """Where pair ``seed``'s score peaks along its slab axis (mm from the layout's pose), between
    the two subjects and on its same-anatomy control, with the affine-only organ Dice of the
    layout's pose and of the two-subject peak's."""
    pair = partial_pair(seed)
    rows = _profile_of(pair, reach_mm, step_mm)
    peak = max(rows, key=lambda row: row[1])
    at_layout = min(rows, key=lambda row: abs(row[0]))
    return {"pair": pair.name, "kind": pair.kind, "mix_up": pair.mix_up, "peak_mm": peak[0],
            "dice_layout": at_layout[2], "dice_peak": peak[2],
            "control_peak_mm": _peak(profile(seed, reach_mm, step_mm, same_anatomy=True), 1)}


def evidence_lines(rows: list[dict], reach_mm: float, step_mm: float) -> list[str]:
    """The section's table and its count of peaks beyond :data:`NEAR_MM`, per kind of pair."""
    lines = [f"Along each phantom pair's slab axis, offsets up to {reach_mm:g} mm either way in {step_mm:g} mm "
             "steps from the pose the pair was laid out with: where the affine step's score (`N * MI` on its "
             "3.5 mm grid, bins split by the atlas's labels) peaks between the two subjects, and on the pair's "
             "same-anatomy control; and the organ Dice of the atlas's labels placed by the layout's pose and by "
             "the two-subject peak alone (no deformable step).", "",
             "| pair | kind | mix-up | score peak (mm) | control's score peak (mm) | affine-only Dice at the layout "
             "| affine-only Dice at the peak |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['pair']} | {r['kind']} | {r['mix_up']} | {r['peak_mm']:+.0f} | {r['control_peak_mm']:+.0f} | "
              f"{r['dice_layout']:.3f} | {r['dice_peak']:.3f} |" for r in rows]
    lines.append("")
    for kind in sorted({r["kind"] for r in rows}):
        of_kind = [r for r in rows if r["kind"] == kind]
        far = [r["pair"] for r in of_kind if abs(r["peak_mm"]) > NEAR_MM]
        far_control = [r["pair"] for r in of_kind if abs(r["control_peak_mm"]) > NEAR_MM]
        lines.append(f"{kind.capitalize()}s: the score peaks more than {NEAR_MM:g} mm from the layout on "
                     f"{len(far)} of {len(of_kind)} between the two subjects ({', '.join(far) or 'none'}), "
                     f"on {len(far_control)} of {len(of_kind)} controls ({', '.join(far_control) or 'none'}).")
    return lines


def _pairs_argument(seeds: list[int]) -> str:
    """``--pairs``'s words for ``seeds``: ``$(seq 0 N)`` for the first N + 1 pairs, else each."""
    return f"$(seq 0 {len(seeds) - 1})" if list(seeds) == list(range(len(seeds))) else " ".join(map(str, seeds))


def _write_evidence(seeds: list[int], rows: list[dict], reach_mm: float, step_mm: float) -> None:
    info = machine()
    header = (f"## Partial field of view: where the image evidence places each slab\n\nRun "
              f"{datetime.date.today().isoformat()} on {info['cpu']} ({info['cores']} cores), commit {info['commit']}. "
              f"`python scripts/partial_pair_profile.py --pairs {_pairs_argument(seeds)} --section` re-runs it. "
              "It measures nothing of the pipeline's own search: it asks where the measure that search maximises "
              "would put each slab if it started at the layout's pose.\n")
    replace_section(ROOT / "BENCHMARKS.md", SECTION, [header, *evidence_lines(rows, reach_mm, step_mm)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", required=True, help="pair seeds (as in the benchmark)")
    parser.add_argument("--reach", type=float, default=30.0, help="largest offset either way, mm")
    parser.add_argument("--step", type=float, default=3.0, help="offset step, mm")
    parser.add_argument("--same-anatomy", action="store_true", help="profile each pair's same-anatomy control")
    parser.add_argument("--deformed", action="store_true",
                        help="also segment from each placement (the benchmark's options): Dice and similarity after")
    parser.add_argument("--section", action="store_true",
                        help=f"write each pair's score peaks, two subjects and control, to BENCHMARKS.md ({SECTION})")
    args = parser.parse_args(argv)
    if args.section:
        rows = [evidence(seed, args.reach, args.step) for seed in args.pairs]
        print("\n".join(evidence_lines(rows, args.reach, args.step)))
        _write_evidence(args.pairs, rows, args.reach, args.step)
        return 0
    deform = SegmentOptions(fusion="mv") if args.deformed else None
    for seed in args.pairs:
        rows = profile(seed, args.reach, args.step, args.same_anatomy, deform)
        name = f"pair{seed}" + (" (same anatomy)" if args.same_anatomy else "")
        print(f"{name}: score peaks at {_peak(rows, 1):+.0f} mm, organ Dice at {_peak(rows, 2):+.0f} mm")
        if deform is None:
            print("| offset (mm) | score | affine-only Dice |\n|---|---|---|")
        else:
            print(f"{name}, after the deformable step: organ Dice peaks at {_peak(rows, 3):+.0f} mm, "
                  f"similarity at {_peak(rows, 4):+.0f} mm")
            print("| offset (mm) | score | affine-only Dice | Dice after the deformable step | similarity after |"
                  "\n|---|---|---|---|---|")
        for offset, score, dice, *after in rows:
            print(f"| {offset:+.0f} | {score:.0f} | {dice:.3f} |" + "".join(f" {value:.3f} |" for value in after))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
