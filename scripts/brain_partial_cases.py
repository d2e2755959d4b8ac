"""Partial-field-of-view pairs of two real brains: OASIS subject A as the atlas, B as the target.

The robustness benchmark's phantom pairs (:mod:`robustness_cases`) are one anatomy the project
never trained on, drawn by one generator. These pairs put the same search on real anatomy and
texture: the two OASIS T1 images (``../shared/data/images/oasis_brain``, both on one 1 mm grid in
a common space, so the pose they are laid out in is the truth), cut into a slab of 1/5 to 1/2 of
the labelled S-I extent ("atlas slab": A's slab for all of B; "target slab": all of A for B's
slab), A put in a scanner frame of its own as the phantom pairs' atlases are (origin up to a
metre away, tilts up to 10 degrees, LPS/RAS or head/feet mix-ups), and in half the pairs A's
contrast inverted (:func:`registration_cases.invert_contrast`, the registration benchmark's
stand-in for another modality). Pair ``seed`` draws its kind, mix-up and contrast from
``seed % 2``, ``(seed // 2) % 3`` and ``(seed // 6) % 2``, so 12 pairs cover every combination.

Scored as the phantom pairs are: the truth is B's labels where the atlas has data.
"""

from __future__ import annotations

import functools

import numpy as np

from registration_cases import DATA, invert_contrast, oasis_subject
from robustness_cases import FRACTIONS, MIX_UPS, PartialPair, scanner_frame
from crossmodalmas.atlases import Atlas
from crossmodalmas.search_grid import sub_grid
from crossmodalmas.volume import LabelMap, Volume

BRAIN_PAIRS = 12  # every kind x mix-up x contrast once
OASIS = DATA / "images" / "oasis_brain"  # arrays (k, j, i), identity direction: axis 0 runs along S


def brain_data_missing() -> str:
    """Why the brain pairs cannot be made here ("" where they can)."""
    return "" if OASIS.is_dir() else f"{OASIS} is absent (a fresh checkout has no shared data)"


@functools.lru_cache(maxsize=1)
def _subjects():
    (a, a_labels, _), (b, b_labels, _) = oasis_subject("A"), oasis_subject("B")
    return a, a_labels, b, b_labels


def _slab(volume, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices ``first:stop`` along S of ``volume`` (a Volume or LabelMap) and their index -> RAS matrix."""
    box = (slice(first, stop), slice(0, volume.array.shape[1]), slice(0, volume.array.shape[2]))
    return np.ascontiguousarray(volume.array[box]), sub_grid(volume.grid, box).ijk_to_ras


def _slab_range(labelled: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[int, int]:
    """A run of ``fraction`` of the labelled slices along S, at a random level inside them."""
    rows = np.flatnonzero(labelled.any(axis=(1, 2)))
    count = int(round(fraction * (rows[-1] + 1 - rows[0])))
    first = int(rng.integers(rows[0], rows[-1] + 2 - count))
    return first, first + count


def brain_partial_pair(seed: int) -> PartialPair:
    """The ``seed``-th brain pair (deterministic; needs the shared data, see :func:`brain_data_missing`)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 9]))
    kind = ("atlas slab", "target slab")[seed % 2]
    mix_up = list(MIX_UPS)[(seed // 2) % 3]
    inverted = (seed // 6) % 2 == 1
    fraction = float(rng.uniform(*FRACTIONS))
    a, a_labels, b, b_labels = _subjects()
    first, stop = _slab_range((a_labels.array != 0) | (b_labels.array != 0), fraction, rng)
    a_image = Volume(invert_contrast(a.array), a.ijk_to_ras) if inverted else a
    if kind == "atlas slab":
        image, layout = _slab(a_image, first, stop)
        labels, _ = _slab(a_labels, first, stop)
        target = b
        truth = np.zeros_like(b_labels.array)
        truth[first:stop] = b_labels.array[first:stop]
    else:
        image, layout, labels = a_image.array, a.ijk_to_ras, a_labels.array
        target = Volume(*_slab(b, first, stop))
        truth, _ = _slab(b_labels, first, stop)
    scanner = scanner_frame(rng, mix_up)
    frame = scanner @ layout
    atlas = Atlas(f"oasisA{seed}", Volume(image, frame), LabelMap(labels, frame))
    scored = tuple(int(v) for v in np.unique(truth) if v != 0)
    name = f"brain{seed}" + (" (A inverted)" if inverted else "")
    return PartialPair(name, kind, fraction, mix_up, target, LabelMap(truth.astype(np.int32), target.ijk_to_ras),
                       atlas, scored, scanner)
