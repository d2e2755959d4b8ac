"""A small labelled CT/MR dataset of heart phantoms in the CSV layout (:mod:`crossmodalmas.data`).

Something to train on where no labelled images are at hand: to try ``train-registration --set
dataset=...`` end to end, and what the tests and the training benchmark use. Each subject is
its own random anatomy (:func:`crossmodalmas.phantoms.random_heart_anatomy`) on a grid centred
on its heart, rendered CT-like (odd subjects) or MR-like (even ones), labels in MM-WHS codes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from crossmodalmas.errors import InputError
from crossmodalmas.phantoms import heart_tissue_map, make_grid, random_heart_anatomy, render, tissue_to_labels
from crossmodalmas.volume import write_labels, write_volume

MANIFEST = "cases.csv"


def write_phantom_dataset(folder: Path, subjects: int = 6, val: int = 2, shape=(24, 24, 24),
                          spacing_mm=(4.0, 4.0, 4.0), seed: int = 0) -> Path:
    """Write ``subjects`` phantom cases and their manifest into ``folder``.

    Args:
        folder: where ``cases.csv`` and ``images/`` go (created; must not hold a manifest yet).
        subjects: how many subjects ``s1``..``sN``; odd ones CT, even ones MR.
        val: the last ``val`` subjects are in split "val", the others in "train".
        shape: (K, J, I) of every image; spacing_mm: its voxel size along (i, j, k).
        seed: seeds every anatomy, contrast and noise (subject ``n`` from ``(seed, n)``).

    Returns:
        The manifest's path (columns image, labels, modality, subject, split).

    Raises:
        InputError: ``folder`` already holds a manifest (nothing is overwritten).
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.exists():
        raise InputError(f"{manifest}: already exists; choose an empty folder (nothing was overwritten)")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = [["image", "labels", "modality", "subject", "split"]]
    for number in range(1, subjects + 1):
        rng = np.random.default_rng([seed, number])
        modality = "ct" if number % 2 else "mr"
        anatomy = random_heart_anatomy(rng)
        grid = make_grid(shape, spacing_mm, centre_ras=anatomy.heart_centre_ras)
        tissue = heart_tissue_map(anatomy, grid)
        image, labels = folder / "images" / f"s{number}_{modality}.nii.gz", folder / "images" / f"s{number}_seg.nii.gz"
        write_volume(render(tissue, grid, modality, rng), image)
        write_labels(tissue_to_labels(tissue, grid), labels)
        split = "val" if number > subjects - val else "train"
        rows.append([str(image.resolve()), str(labels.resolve()), modality, f"s{number}", split])
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return manifest
