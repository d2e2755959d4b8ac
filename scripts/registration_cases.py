"""The registration benchmark's cases: atlas -> target pairs with the target's true labels.

``brain`` (the real OASIS pair, also with inverted contrast), ``phantom`` (MR-like heart phantom
-> CT-like one of another anatomy), ``synthseg`` (SynthSeg label maps with random contrasts) and
``synthetic`` (held-out cross-contrast pairs from :func:`crossmodalmas.synth.synth_pair` on the
EVAL maps of every label source). Everything but the parametric sources reads ``../shared/data``
and is skipped, with a message, where it is absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from crossmodalmas import metrics
from crossmodalmas.label_sources import LabelMapBank, LabelSource, Split
from crossmodalmas.phantoms import demo_case
from crossmodalmas.preprocess import isotropic_grid, resample
from crossmodalmas.synth import SynthConfig, synth_pair
from crossmodalmas.volume import LabelMap, Volume, read_labels, read_volume

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CASES = ("brain", "phantom", "synthseg", "synthetic")
INVERT_FRACTION = 0.02  # contrast inversion: voxels above this fraction of the max are "head"
SYNTHSEG_SPACING_MM, SYNTHSEG_MARGIN_MM = 1.5, 8
SYNTHSEG_BLUR_VOX, SYNTHSEG_NOISE = 1.0, 0.03  # blur sigma at 1 mm, noise std (mean range [0, 1])
SYNTHSEG_PAIRS = ((1, 2), (3, 4), (5, 6))  # (atlas, target) subject numbers
PHANTOM_SEEDS = (1, 2, 3)
SYNTHSEG_GROUPS = {  # scored group -> FreeSurfer ids merged into it
    "cerebral white matter": (2, 41), "cerebral cortex": (3, 42), "lateral ventricles": (4, 43),
    "cerebellum": (7, 8, 46, 47), "thalamus": (10, 49), "basal ganglia": (11, 12, 13, 50, 51, 52), "brainstem": (16,)}
SYNTHETIC_SOURCES = ("brain", "prostate", "heart", "abdomen")
SYNTHETIC_SHAPE, SYNTHETIC_SPACING_MM = (96, 96, 96), 2.0
SYNTHETIC_MAPS, SYNTHETIC_SEED = 2, 0  # EVAL maps per source; seed of the pair draws
# The training ranges, but air (label 0) always dark, as in real CT and MR.
SYNTHETIC_CONFIG = SynthConfig(dark_background=1.0)
TRAINED_SOURCES = ("brain", "prostate", "heart", "shapes")  # what the bundled general models train on


@dataclass
class Pair:
    """One atlas -> target problem: images and labels, label values scored, optional {group: ids} merge.

    ``group`` names the row group of the summaries (the case, or ``synthetic <source>``).
    """

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
    group: str = ""

    def __post_init__(self):
        self.group = self.group or self.case


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


def oasis_subject(name: str) -> tuple[Volume, LabelMap, dict]:
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
    (a, a_seg, a_fit), (b, b_seg, b_fit) = oasis_subject("A"), oasis_subject("B")
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


def centred_grid(shape: Sequence[int], spacing_mm: float) -> np.ndarray:
    """IJK -> RAS of an isotropic grid of ``shape`` (K, J, I), identity direction, centred at 0."""
    ijk_to_ras = np.diag([spacing_mm] * 3 + [1.0])
    ijk_to_ras[:3, 3] = -spacing_mm * (np.asarray(shape[::-1], dtype=float) - 1) / 2
    return ijk_to_ras


def _synthetic_pair(source: str, name: str, labels: torch.Tensor, index: int, seed: int,
                    spacing_mm: float, config: SynthConfig) -> Pair:
    """(image_a, labels_a) -> (image_b, labels_b) of one EVAL map, wrapped on a centred grid."""
    generator = torch.Generator().manual_seed(seed * 1000 + index)
    drawn = synth_pair(labels[None], int(labels.max()) + 1, config, generator)
    ijk_to_ras = centred_grid(tuple(labels.shape), spacing_mm)
    image_a, image_b = (Volume(t[0, 0].numpy(), ijk_to_ras) for t in (drawn.image_a, drawn.image_b))
    labels_a, labels_b = (LabelMap(t[0, 0].numpy(), ijk_to_ras) for t in (drawn.labels_a, drawn.labels_b))
    return Pair("synthetic", f"synthetic {name}", True, image_a, labels_a, image_b, labels_b,
                tuple(int(v) for v in labels_b.labels), extra={"map": name, "trained_on": source in TRAINED_SOURCES},
                group=f"synthetic {source}")


def synthetic_pairs(sources: Sequence[str] = SYNTHETIC_SOURCES, shape: Sequence[int] = SYNTHETIC_SHAPE,
                    count: int = SYNTHETIC_MAPS, seed: int = SYNTHETIC_SEED, data_root: Path = DATA,
                    spacing_mm: float = SYNTHETIC_SPACING_MM, config: SynthConfig = SYNTHETIC_CONFIG) -> list[Pair]:
    """Held-out cross-contrast pairs: ``count`` EVAL maps of each source through ``synth_pair``.

    Each map (``LabelMapBank([source], Split.EVAL, shape, data_root).fixed(count)``: maps no
    training run ever sees) gives two random deformations and two random contrasts (``config``,
    default the training ranges; generator seeded with ``seed * 1000 + index``); atlas = a, target = b,
    on an isotropic ``spacing_mm`` grid (identity direction, centred at 0), scored on every
    label of the map present in the target. A file source without its folder is skipped.
    """
    pairs = []
    for source in sources:
        try:
            bank = LabelMapBank([LabelSource(source)], Split.EVAL, tuple(shape), data_root=data_root)
        except ValueError as error:  # a file source without ../shared/data
            print(f"skipping the synthetic {source} pairs: {error}")
            continue
        for index, (name, labels) in enumerate(bank.fixed(count)):
            pairs.append(_synthetic_pair(source, name, labels, index, seed, spacing_mm, config))
    return pairs


def load_pairs(cases: Sequence[str], quick: bool, data_root: Path = DATA) -> list[Pair]:
    """The pairs of the chosen sets (one of each set, one map per synthetic source, with ``quick``).

    Sets that need ``data_root`` are skipped with a message where it is absent."""
    loaders = {"brain": brain_pairs, "phantom": phantom_pairs, "synthseg": synthseg_pairs}
    pairs = []
    for case in cases:
        print(f"loading the {case} cases ...")
        if case == "synthetic":
            pairs += synthetic_pairs(count=1 if quick else SYNTHETIC_MAPS, data_root=data_root)
        elif case != "phantom" and not Path(data_root).is_dir():
            print(f"skipping the {case} cases: {data_root} is absent (a fresh checkout has no shared data)")
        else:
            pairs += loaders[case]()[:1 if quick else None]
    return pairs
