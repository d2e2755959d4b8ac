"""The robustness benchmark's partial-field-of-view pairs (abdomen phantom, never trained on).

Each pair: a CT-like target of one random abdomen over the phantom's whole field of view, and
an atlas of *another* random abdomen with another random contrast that shows only a slab of
1/5 to 1/2 of the target's S-I extent at a random level ("atlas slab"), or the reverse: the
whole atlas and a target slab ("target slab"). The atlas is then put in a scanner frame of
its own: origin up to a metre away, a tilt of up to 10 degrees, and in one pair of three a
LPS/RAS mix-up (180 degrees about S) or head-first/feet-first mix-up (180 degrees about A).

A *same-anatomy* pair (``partial_pair(seed, same_anatomy=True)``) is the control: the atlas
is painted from the target's own anatomy, everything else (contrast, slab, frame, mix-up) as in
the pair of that seed. What it still misses, the search and registration miss; what only the
two-subject pair misses comes from the two abdomens' differences (each organ shifted up to 8 mm
and scaled by up to 15 %, which move the best image match of a thin slab off the layout's
pose, see ``scripts/partial_pair_profile.py``).

Scoring: the truth is the target's labels where the atlas has data (the slab), so an output
label outside what the atlas shows counts against the method; the scored labels are the organs
present in that truth (body wall and the rest of the cavity are not scored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from crossmodalmas.abdomen_phantom import ABDOMEN_FOV_MM, AbdomenLabel, abdomen_label_map, random_abdomen_anatomy
from crossmodalmas.atlases import Atlas
from crossmodalmas.global_search import rotation_about
from crossmodalmas.phantoms import make_grid
from crossmodalmas.search_grid import ras_to_lps_affine
from crossmodalmas.volume import LabelMap, Volume
from registration_cases import render_contrast

SPACING_MM = 2.5
FRACTIONS = (0.2, 0.5)  # the slab's share of the other image's S-I extent, drawn uniformly
_NOT_SCORED = (AbdomenLabel.BODY_WALL, AbdomenLabel.OTHER_SOFT_TISSUE)
MIX_UPS = {"none": np.eye(3), "LPS/RAS": rotation_about(2, 180.0), "head/feet": rotation_about(1, 180.0)}


@dataclass
class PartialPair:
    name: str
    kind: str  # "atlas slab" or "target slab"
    fraction: float
    mix_up: str
    target: Volume
    truth: LabelMap  # the target's labels where the atlas has data, 0 elsewhere
    atlas: Atlas
    labels: tuple[int, ...]
    frame: np.ndarray  # 4x4 RAS -> RAS: the atlas's scanner frame (see true_transform)


def _grid(extent_si: float, centre_s: float):
    s, a, r = ABDOMEN_FOV_MM
    shape = tuple(int(round(e / SPACING_MM)) for e in (extent_si, a, r))
    return make_grid(shape, (SPACING_MM,) * 3, centre_ras=(0.0, 0.0, centre_s), axes="LPS")


def scanner_frame(rng: np.random.Generator, mix_up: str) -> np.ndarray:
    """A 4x4 RAS -> RAS of the atlas's own scanner: a mix-up, a tilt, and an origin far away."""
    tilt = rotation_about(0, rng.uniform(-10, 10)) @ rotation_about(1, rng.uniform(-10, 10)) @ rotation_about(2, rng.uniform(-10, 10))
    frame = np.eye(4)
    frame[:3, :3] = MIX_UPS[mix_up] @ tilt
    frame[:3, 3] = rng.uniform(-1000.0, 1000.0, 3)
    return frame


def partial_pair(seed: int, same_anatomy: bool = False) -> PartialPair:
    """The ``seed``-th pair (deterministic); with ``same_anatomy``, its control (the atlas drawn
    from the target's anatomy, every other draw the same)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 8]))
    kind = ("atlas slab", "target slab")[seed % 2]
    mix_up = list(MIX_UPS)[(seed // 2) % 3]
    fraction = float(rng.uniform(*FRACTIONS))
    full = ABDOMEN_FOV_MM[0]
    slab_centre = float(rng.uniform(-(1 - fraction) * full / 2, (1 - fraction) * full / 2))
    slab, whole = _grid(fraction * full, slab_centre), _grid(full, 0.0)
    target_grid, atlas_grid = (whole, slab) if kind == "atlas slab" else (slab, whole)
    target_anatomy, atlas_anatomy = random_abdomen_anatomy(rng), random_abdomen_anatomy(rng)
    target_labels = abdomen_label_map(target_anatomy, target_grid).array
    atlas_labels = abdomen_label_map(target_anatomy if same_anatomy else atlas_anatomy, atlas_grid).array
    target = Volume(render_contrast(target_labels, rng), target_grid.ijk_to_ras)
    scanner = scanner_frame(rng, mix_up)
    frame = scanner @ atlas_grid.ijk_to_ras
    atlas = Atlas(f"atlas{seed}", Volume(render_contrast(atlas_labels, rng), frame), LabelMap(atlas_labels, frame))
    covered = _inside_slab(target_grid, slab) if kind == "atlas slab" else np.ones(target_grid.shape, bool)
    truth = np.where(covered, target_labels, 0).astype(np.int32)
    scored = tuple(int(v) for v in np.unique(truth) if v != 0 and v not in _NOT_SCORED)
    return PartialPair(f"pair{seed}", kind, fraction, mix_up, target, LabelMap(truth, target_grid.ijk_to_ras),
                       atlas, scored, scanner)


def true_transform(pair: PartialPair) -> sitk.AffineTransform:
    """The pose the pair was made with, as the pipeline's affine steps give theirs: target LPS
    -> atlas LPS (both abdomens were laid out in one anatomical frame; the atlas's scanner frame
    moved it). Between two subjects it is the truth of the layout, not necessarily the pose
    that best overlaps their organs."""
    return ras_to_lps_affine(pair.frame[:3, :3], pair.frame[:3, 3])


def _inside_slab(grid, slab) -> np.ndarray:
    """Voxels of ``grid`` whose centres lie in ``slab``'s S-I range (both grids axis-aligned)."""
    s = grid.ijk_to_points(np.array([[0, 0, k] for k in range(grid.shape[0])]))[:, 2]
    corners = slab.corners_ras()[:, 2]
    half = SPACING_MM / 2
    inside = (s >= corners.min() - half) & (s <= corners.max() + half)
    return np.broadcast_to(inside[:, None, None], grid.shape).copy()


def mean_dice(pred: np.ndarray, truth: np.ndarray, labels) -> float:
    """Mean Dice over ``labels`` (a label absent from both counts 1, absent from one 0)."""
    from crossmodalmas import metrics

    scores = metrics.dice(pred, truth, labels)
    return float(np.mean([1.0 if scores[label] is None else scores[label] for label in labels])) if labels else float("nan")
