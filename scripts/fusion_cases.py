"""The fusion benchmark's multi-atlas tasks: a target (one contrast), its true labels, and 8
labelled atlases of other subjects and other random contrasts.

* ``brain``: SynthSeg label maps (target: a held-out EVAL map), each rendered with its own random
  contrast at 1.5 mm, scored on seven merged structures (as the registration benchmark).
* ``prostate``: MSD prostate label maps (peripheral and transition zones) rendered alike.
* ``heart``: the heart phantom: a CT-like target and MR-like atlases of other anatomies.
* ``abdomen``: the abdomen phantom (never trained on), each subject posed and contrasted at random.
* ``oasis``: the real OASIS pair, each image the target of the other and its contrast-inverted copy.

Targets of the file sources are EVAL maps no training run saw; atlases may be any other map (a
user's atlases are labelled data they have anyway).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from crossmodalmas.abdomen_phantom import AbdomenLabel, abdomen_label_map, random_abdomen_anatomy, ABDOMEN_FOV_MM
from crossmodalmas.atlases import Atlas
from crossmodalmas.label_sources import EVAL_EVERY
from crossmodalmas.phantoms import demo_case, make_grid
from crossmodalmas.preprocess import isotropic_grid, resample
from crossmodalmas.volume import LabelMap, Volume, read_labels
from registration_cases import (DATA, SYNTHSEG_GROUPS, _cropped, group_labels, invert_contrast, oasis_subject,
                                render_contrast)

ATLASES = 8
SOURCES = ("brain", "prostate", "heart", "abdomen")
_FILE_SPEC = {"brain": ("synthseg_brain", 1.5, 8.0), "prostate": ("msd_prostate", 1.5, 20.0)}  # folder, mm, margin
_ABDOMEN_SHAPE, _ABDOMEN_TILT_DEG = (64, 80, 100), 8.0  # (K, J, I): about 3.5 mm
_NOT_SCORED = (AbdomenLabel.BODY_WALL, AbdomenLabel.OTHER_SOFT_TISSUE)


@dataclass
class Task:
    name: str
    group: str
    target: Volume
    truth: LabelMap
    atlases: list[Atlas]
    labels: tuple[int, ...]


def _file_subject(path: Path, spacing_mm: float, margin_mm: float, seed: int, groups=None):
    """A label file cropped, rendered with its own random contrast, on an isotropic grid."""
    full = read_labels(path)
    crop = _cropped(full, int(round(margin_mm / float(full.grid.spacing.min()))))
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(path.name.encode())]))
    image = render_contrast(crop.array, rng)
    grid = isotropic_grid(crop.grid, spacing_mm)
    labels = resample(crop.array, crop.ijk_to_ras, grid, labels=True)
    if groups is not None:
        labels = group_labels(labels, groups)
    return Volume(resample(image, crop.ijk_to_ras, grid), grid.ijk_to_ras), LabelMap(labels, grid.ijk_to_ras)


def file_tasks(source: str, count: int, seed: int = 0) -> list[Task]:
    folder, spacing, margin = _FILE_SPEC[source]
    files = sorted((DATA / "labelmaps" / folder).glob("*.nii.gz"), key=lambda p: p.name)
    groups = {i + 1: ids for i, ids in enumerate(SYNTHSEG_GROUPS.values())} if source == "brain" else None
    targets = [f for i, f in enumerate(files) if i % EVAL_EVERY == EVAL_EVERY - 1][:count]
    tasks = []
    for t, target_file in enumerate(targets):
        others = [f for f in files if f != target_file]
        chosen = [others[(t * ATLASES + k) % len(others)] for k in range(ATLASES)]
        target, truth = _file_subject(target_file, spacing, margin, seed, groups)
        atlases = [Atlas(f.name.split(".")[0], *_file_subject(f, spacing, margin, seed + 1 + k, groups))
                   for k, f in enumerate(chosen)]
        tasks.append(Task(f"{source} {target_file.name.split('.')[0]}", source, target, truth, atlases,
                          tuple(int(v) for v in truth.labels)))
    return tasks


def heart_tasks(count: int, seed: int = 0) -> list[Task]:
    tasks = []
    for t in range(count):
        case = demo_case(seed=1000 + seed + t, n_atlases=ATLASES)
        atlases = [Atlas(name, image, labels) for name, image, labels in case.atlases]
        tasks.append(Task(f"heart phantom {1000 + seed + t}", "heart", case.target, case.target_truth, atlases,
                          tuple(int(v) for v in case.target_truth.labels)))
    return tasks


def _abdomen_subject(seed: int) -> tuple[Volume, LabelMap]:
    rng = np.random.default_rng(seed)
    anatomy = random_abdomen_anatomy(rng)
    spacing = float(np.max(np.asarray(ABDOMEN_FOV_MM) / np.asarray(_ABDOMEN_SHAPE)))
    grid = make_grid(_ABDOMEN_SHAPE, (spacing,) * 3, rng.uniform(-_ABDOMEN_TILT_DEG, _ABDOMEN_TILT_DEG, 3))
    labels = abdomen_label_map(anatomy, grid).array
    image = render_contrast(labels, rng, blur_vox=0.7)
    scored = np.where(np.isin(labels, [int(c) for c in _NOT_SCORED]), 0, labels)
    return Volume(image, grid.ijk_to_ras), LabelMap(scored, grid.ijk_to_ras)


def abdomen_tasks(count: int, seed: int = 0) -> list[Task]:
    tasks = []
    for t in range(count):
        first = 2_000_000 + (seed + t) * (ATLASES + 1)  # EVAL seeds (>= 1,000,000), never trained on
        target, truth = _abdomen_subject(first)
        atlases = [Atlas(f"abdomen-{first + k}", *_abdomen_subject(first + k)) for k in range(1, ATLASES + 1)]
        tasks.append(Task(f"abdomen phantom {first}", "abdomen", target, truth, atlases,
                          tuple(int(v) for v in truth.labels)))
    return tasks


def oasis_tasks() -> list[Task]:
    (a, a_seg, _), (b, b_seg, _) = oasis_subject("A"), oasis_subject("B")
    tasks = []
    for name, (target, truth), (atlas, labels), other in (("B", (b, b_seg), (a, a_seg), "A"),
                                                          ("A", (a, a_seg), (b, b_seg), "B")):
        atlases = [Atlas(f"oasis-{other}", atlas, labels),
                   Atlas(f"oasis-{other}-inverted", Volume(invert_contrast(atlas.array), atlas.ijk_to_ras), labels)]
        tasks.append(Task(f"oasis {name} from {other} and inverted {other}", "oasis", target, truth, atlases,
                          tuple(int(v) for v in truth.labels)))
    return tasks


def load_tasks(sources: Sequence[str], count: int, oasis: bool, quick: bool) -> list[Task]:
    """The tasks of ``sources`` (``count`` each) and, with ``oasis``, the two OASIS tasks; with
    ``quick`` only the first heart task with three atlases. File sources without
    ``../shared/data`` are skipped with a message."""
    if quick:
        task = heart_tasks(1)[0]
        task.atlases = task.atlases[:3]
        return [task]
    tasks = []
    for source in sources:
        if source in _FILE_SPEC and not (DATA / "labelmaps" / _FILE_SPEC[source][0]).is_dir():
            print(f"skipping the {source} tasks: {DATA / 'labelmaps'} is absent")
            continue
        tasks += {"heart": heart_tasks, "abdomen": abdomen_tasks}.get(source, lambda n: file_tasks(source, n))(count)
    if oasis and (DATA / "images" / "oasis_brain").is_dir():
        tasks += oasis_tasks()
    return tasks
