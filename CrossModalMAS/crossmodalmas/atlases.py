"""Atlas collections: (image, labels) pairs from the command line, a CSV manifest or a folder."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from crossmodalmas.errors import InputError
from crossmodalmas.volume import LabelMap, Volume, read_labels, read_volume

_LABEL_PATTERN = re.compile(r"(_seg|_label|_labels|_mask|_gt|-seg|-label|-labels)$", re.IGNORECASE)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Atlas:
    """One labelled atlas: an intensity volume, its label map on the same grid, a name."""

    name: str
    image: Volume
    labels: LabelMap


@dataclass(frozen=True)
class AtlasFiles:
    """Paths of one atlas on disk."""

    image: Path
    labels: Path

    @property
    def name(self) -> str:
        return file_stem(self.image)


def file_stem(path: Path) -> str:
    """The file name without its image suffix (``ct_1.nii.gz`` -> ``ct_1``)."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def from_csv(path: str | os.PathLike) -> list[AtlasFiles]:
    """Atlas files from a CSV with ``image`` and ``labels`` columns (relative paths are
    relative to the CSV's folder).

    Raises:
        InputError: the file is missing, has no such columns, or lists no atlas.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: atlas CSV does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"image", "labels"} <= set(rows[0]):
        raise InputError(f"{path}: atlas CSV needs a header with 'image' and 'labels' columns and one row per atlas")
    return [AtlasFiles(path.parent / row["image"].strip(), path.parent / row["labels"].strip()) for row in rows]


def from_folder(folder: str | os.PathLike) -> list[AtlasFiles]:
    """Atlas files from a folder where ``X.nii.gz`` has labels ``X_seg.nii.gz`` (or ``_label``,
    ``_labels``, ``_mask``, ``_gt``; any suffix SimpleITK reads).

    Raises:
        InputError: the folder is missing or holds no image with a label file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: atlas folder does not exist")
    files = {file_stem(p): p for p in sorted(folder.iterdir()) if p.name.lower().endswith(IMAGE_SUFFIXES)}
    pairs = []
    for stem, labels in files.items():
        match = _LABEL_PATTERN.search(stem)
        if match and stem[: match.start()] in files:
            pairs.append(AtlasFiles(files[stem[: match.start()]], labels))
    if not pairs:
        raise InputError(f"{folder}: no atlas found (expected pairs like X.nii.gz with X_seg.nii.gz)")
    return sorted(pairs, key=lambda p: p.name)


def load(files: AtlasFiles) -> Atlas:
    """Read one atlas (errors name the file)."""
    return Atlas(files.name, read_volume(files.image), read_labels(files.labels))


def voxel_count(source: Union[Atlas, AtlasFiles]) -> Optional[int]:
    """How many voxels an atlas's image has, from its file's header alone for one on disk (no
    voxel is read); None where the header cannot be read (what is wrong with the file is
    reported when it is read, by :func:`load`)."""
    if isinstance(source, Atlas):
        return int(source.image.array.size)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source.image))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return int(np.prod(reader.GetSize()))
