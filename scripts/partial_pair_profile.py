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

    python scripts/partial_pair_profile.py --pairs 16 18 20 [--reach 30] [--step 3] [--same-anatomy] [--deformed]
"""

from __future__ import annotations

import argparse
import warnings
from contextlib import contextmanager
from typing import Optional

import numpy as np
import SimpleITK as sitk

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
    pair = partial_pair(seed, same_anatomy)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", required=True, help="pair seeds (as in the benchmark)")
    parser.add_argument("--reach", type=float, default=30.0, help="largest offset either way, mm")
    parser.add_argument("--step", type=float, default=3.0, help="offset step, mm")
    parser.add_argument("--same-anatomy", action="store_true", help="profile each pair's same-anatomy control")
    parser.add_argument("--deformed", action="store_true",
                        help="also segment from each placement (the benchmark's options): Dice and similarity after")
    args = parser.parse_args(argv)
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
