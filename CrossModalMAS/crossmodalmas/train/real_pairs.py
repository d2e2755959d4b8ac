"""Training pairs from a user's labelled images (seed 000's real CT-MR pairs), for both trainers.

Every usable case of the dataset (:mod:`crossmodalmas.data`) is read once, when the run starts,
and kept in memory on the training grid: a box around its labels ``crop_labels`` (all
foreground when empty) plus ``crop_margin_mm``, resampled into ``shape`` with isotropic voxels
in the image's own orientation, the box centred and whole along its longest side (the aspect
is kept: the other sides get more context). The image is resampled linearly and normalised as
the pipeline normalises (0.5-99.5 percentiles to [0, 1]), the labels by nearest neighbour.
Seed 000 crops 96³ sub-images around the LV myocardium.

A pair is two cases of different subjects and, where the cases have two or more modalities,
of different modalities (seed 000 trains CT-MR pairs), drawn uniformly; its label values are
renumbered 0..K-1 over both maps alike. ``augment`` deforms each image of a pair by its own
random affine and smooth deformation (:func:`crossmodalmas.synth.random_deformation` with the
``synth`` ranges), as seed 000 augments its real pairs. A real pair has no known true field:
its ``forward`` and ``backward`` are None.

Held out for validation: the dataset's "val" cases where it has any, else a fixed 20 % of its
subjects (all cases of a subject on one side; the choice never depends on the run's seed, so
every run on a dataset validates on the same cases). "test" cases are never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crossmodalmas.data import Case, Dataset, open_dataset
from crossmodalmas.errors import InputError
from crossmodalmas.preprocess import resample, robust_normalise
from crossmodalmas.synth import SynthConfig, SynthPair, random_deformation
from crossmodalmas.train.validation import ValidationPair
from crossmodalmas.transforms import warp
from crossmodalmas.volume import Grid, LabelMap, Volume

VALIDATION_SHARE = 0.2
_SPLIT_SEED = 0  # the held-out subjects are the same for every run on a dataset


@dataclass
class RealCase:
    """One case on the training grid.

    Attributes:
        subject, modality: as the dataset lists them.
        image: ``(D, H, W)`` float32 in [0, 1].
        labels: ``(D, H, W)`` int32 label values (after the dataset's label map).
    """

    subject: str
    modality: str
    image: torch.Tensor
    labels: torch.Tensor

    @property
    def name(self) -> str:
        return f"{self.subject} ({self.modality})"


def crop_grid(grid: Grid, mask: np.ndarray, margin_mm: float, shape) -> Grid:
    """The training grid of a case: ``shape`` (D, H, W) isotropic voxels in ``grid``'s
    orientation, centred on the box of ``mask`` and holding it plus ``margin_mm`` on each side
    along its longest extent.

    Args:
        grid: the image's grid.
        mask: ``grid.shape`` bool, the voxels to crop around (at least one True).
        margin_mm: margin around the box, mm.
        shape: (D, H, W) of the training grid.
    """
    kji = np.argwhere(mask)
    lo, hi = kji.min(0)[::-1].astype(float), kji.max(0)[::-1].astype(float)  # (i, j, k)
    extent_mm = (hi - lo) * grid.spacing + 2.0 * margin_mm
    size_ijk = np.array(shape[::-1], dtype=float)
    spacing = max(float(np.max(extent_mm / np.maximum(size_ijk - 1, 1))), 1e-3)
    direction = grid.ijk_to_ras[:3, :3] / grid.spacing
    centre = grid.ijk_to_points(((lo + hi) / 2)[None])[0]
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = direction * spacing
    ijk_to_ras[:3, 3] = centre - ijk_to_ras[:3, :3] @ ((size_ijk - 1) / 2)
    return Grid(tuple(int(s) for s in shape), ijk_to_ras)


def crop_case(image: Volume, labels: LabelMap, crop_labels, margin_mm: float, shape) -> tuple[np.ndarray, np.ndarray]:
    """A case's image and labels on its training grid (:func:`crop_grid`).

    Returns:
        ``(image, labels)``: ``shape`` float32 in [0, 1] and int32 label values.

    Raises:
        ValueError: none of ``crop_labels`` (none at all when empty) is in ``labels``.
    """
    mask = np.isin(labels.array, list(crop_labels)) if crop_labels else labels.array != 0
    if not mask.any():
        present = np.unique(labels.array[labels.array != 0]).tolist()[:10]
        raise ValueError(f"none of the crop labels {list(crop_labels)} is in its labels (it has {present})")
    grid = crop_grid(labels.grid, mask, margin_mm, shape)
    cropped = resample(image.array, image.ijk_to_ras, grid)
    return robust_normalise(cropped), resample(labels.array, labels.ijk_to_ras, grid, labels=True)


def held_out(cases: list[Case]) -> tuple[list[Case], list[Case]]:
    """``(train, val)`` cases: "test" left out; "val" held out, else a fixed share of subjects."""
    usable = [case for case in cases if case.split != "test"]
    val = [case for case in usable if case.split == "val"]
    if not val:
        subjects = sorted({case.subject for case in usable})
        count = max(2, round(VALIDATION_SHARE * len(subjects)))
        chosen = set(np.random.default_rng(_SPLIT_SEED).permutation(subjects)[:count].tolist())
        val = [case for case in usable if case.subject in chosen]
    return [case for case in usable if case not in val], val


def pair_labels(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Two label maps renumbered 0..K-1 over both alike (0 stays background); returns them and K."""
    values = torch.unique(torch.cat([a.new_zeros(1), a.flatten(), b.flatten()]))
    return (torch.searchsorted(values, a.contiguous()), torch.searchsorted(values, b.contiguous()),
            int(values.numel()))


def augment(pair: SynthPair, config: SynthConfig, generator: torch.Generator) -> SynthPair:
    """Each image of ``pair`` (and its labels) deformed by its own random affine + smooth
    deformation (:func:`crossmodalmas.synth.random_deformation`); outside the image is 0."""
    n, shape, device = pair.image_a.shape[0], tuple(pair.image_a.shape[2:]), pair.image_a.device
    out = []
    for image, labels in ((pair.image_a, pair.labels_a), (pair.image_b, pair.labels_b)):
        displacement = random_deformation(n, shape, config, generator, device).displacement()
        out += [warp(image, displacement, padding_mode="zeros"),
                warp(labels.float(), displacement, mode="nearest", padding_mode="zeros").long()]
    return SynthPair(*out, forward=None, backward=None)


class RealPairs:
    """The training and held-out cases of a dataset, and pairs drawn from them.

    Args:
        root: the dataset (for messages).
        train, val: the cases on the training grid.

    Raises:
        InputError: a side where no case has a partner (another subject, of another modality
            where that side has several).
    """

    def __init__(self, root: Path, train: list[RealCase], val: list[RealCase]):
        self.root, self.train, self.val = root, train, val
        self._partners = {side: self._pairable(cases, side) for side, cases in (("train", train), ("val", val))}

    def _pairable(self, cases: list[RealCase], side: str) -> list[tuple[int, list[int]]]:
        several = len({case.modality for case in cases}) > 1
        out = []
        for index, case in enumerate(cases):
            partners = [other for other, candidate in enumerate(cases) if candidate.subject != case.subject
                        and not (several and candidate.modality == case.modality)]
            if partners:
                out.append((index, partners))
        if not out:
            raise InputError(f"dataset {self.root}: its {side} cases ({len(cases)}) give no pair: a pair needs two "
                             "subjects (of two modalities where there are several)")
        return out

    def _pick(self, side: str, generator: torch.Generator) -> tuple[RealCase, RealCase]:
        cases, partners = (self.train, self._partners["train"]) if side == "train" else (self.val, self._partners["val"])

        def uniform(count: int) -> int:
            return int(torch.randint(count, (1,), generator=generator, device=generator.device))

        first, others = partners[uniform(len(partners))]
        return cases[first], cases[others[uniform(len(others))]]

    @staticmethod
    def _stack(pairs: list[tuple[RealCase, RealCase]], device) -> SynthPair:
        images_a, labels_a, images_b, labels_b = [], [], [], []
        for a, b in pairs:
            la, lb, _ = pair_labels(a.labels.long(), b.labels.long())
            images_a.append(a.image)
            images_b.append(b.image)
            labels_a.append(la)
            labels_b.append(lb)
        return SynthPair(*(torch.stack(t)[:, None].to(device) for t in (images_a, labels_a, images_b, labels_b)),
                         forward=None, backward=None)

    def draw(self, count: int, generator: torch.Generator) -> SynthPair:
        """``count`` random training pairs (not augmented), on the generator's device."""
        return self._stack([self._pick("train", generator) for _ in range(count)], generator.device)

    def validation_pairs(self, count: int, seed: int, device) -> list[ValidationPair]:
        """``count`` fixed held-out pairs, drawn with their own ``seed`` (the same at every
        validation of a run and of its resumes), not augmented."""
        generator = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(count):
            a, b = self._pick("val", generator)
            pair = self._stack([(a, b)], device)
            out.append(ValidationPair(f"{a.name} -> {b.name}", pair, pair_labels(a.labels, b.labels)[2]))
        return out


def _prepare(dataset: Dataset, cases: list[Case], config) -> list[RealCase]:
    """Every case on the training grid; all unusable cases reported in one error."""
    out, failures = [], []
    for case in cases:
        try:
            image, labels = dataset.load(case)
            array, label_array = crop_case(image, labels, config.crop_labels, config.crop_margin_mm, config.shape)
        except (InputError, ValueError) as error:
            failures.append(f"{case.subject} ({case.modality}): {error}")
            continue
        out.append(RealCase(case.subject, case.modality, torch.from_numpy(array), torch.from_numpy(label_array)))
    if failures:
        raise InputError(f"dataset {dataset.root}: {len(failures)} of {len(cases)} cases are unusable for "
                         f"training: {'; '.join(failures)}")
    return out


def open_real_pairs(config) -> RealPairs:
    """The real pairs of a run's config (``dataset``, ``dataset_layout``, ``label_map``,
    ``crop_labels``, ``crop_margin_mm``, ``shape``): every case read and cropped now.

    Raises:
        InputError: an unusable dataset, label map or case; too few subjects to hold some out.
    """
    dataset = open_dataset(config.dataset, config.dataset_layout, config.label_map)
    train, val = held_out(list(dataset.cases))
    subjects = [len({case.subject for case in side}) for side in (train, val)]
    if min(subjects) < 2:
        raise InputError(f"dataset {dataset.root}: real pairs need 2 or more subjects to train on and 2 or more held "
                         f"out (split 'val', else {VALIDATION_SHARE:.0%} of the subjects), outside the 'test' split; "
                         f"found {subjects[0]} and {subjects[1]}")
    return RealPairs(dataset.root, _prepare(dataset, train, config), _prepare(dataset, val, config))
