"""Atlases from the scene (volume + label map or segmentation node) and from a folder or CSV.

Scene atlases are written to files for the background process, each label map on its own
image's grid. Their label values must mean the same structure in every atlas, so:

- a label map node's values are used as they are; its colour table names them, unless it is one
  of Slicer's built-in tables (a singleton node, e.g. GenericAnatomyColors), which name values
  generically rather than for this atlas;
- a segmentation node's segments get values by name, shared by every segmentation atlas: a name
  a known label table has (see :mod:`CrossModalMASLib.label_tables`) takes that table's value, so
  a segment "Left atrium" lines up with MM-WHS label maps (420); other names get the next free
  value. Segment names, colours and terminology come along to the result.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from CrossModalMASLib import label_tables
from CrossModalMASLib.label_tables import LabelInfo
from CrossModalMASLib.segmentation_nodes import describe_segments, labels_from_segmentation
from CrossModalMASLib.volume_nodes import labels_from_labelmap_node, volume_from_node
from crossmodalmas import atlases as atlas_io
from crossmodalmas.preprocess import resample
from crossmodalmas.volume import LabelMap, write_labels, write_volume


@dataclass(frozen=True)
class SceneAtlas:
    """An atlas in the scene: an intensity volume node and its labels (label map or segmentation node)."""

    image: object
    labels: object

    @property
    def name(self) -> str:
        return self.image.GetName()

    @property
    def is_segmentation(self) -> bool:
        return self.labels.IsA("vtkMRMLSegmentationNode")


@dataclass
class PreparedAtlases:
    """Scene atlases written to files, and what their label values are called.

    Attributes:
        files: one (image, labels) file pair per atlas, in the given order.
        names: the atlas name each pair gets in the run (its file stem), in the same order.
        known: names, colours and terminology the atlases themselves give label values.
    """

    files: list[atlas_io.AtlasFiles]
    names: list[str]
    known: dict[int, LabelInfo]


def folder_atlases(path: os.PathLike) -> list[atlas_io.AtlasFiles]:
    """Atlas files from a folder (``X.nii.gz`` + ``X_seg.nii.gz`` pairs) or a CSV manifest.

    Raises:
        crossmodalmas.errors.InputError: the folder or CSV is missing or lists no atlas.
    """
    path = Path(path)
    return atlas_io.from_csv(path) if path.suffix.lower() == ".csv" else atlas_io.from_folder(path)


def safe_name(name: str, taken: set[str]) -> str:
    """A file stem from a node name: letters, digits, ``-`` and ``_`` only, unique among ``taken``."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "atlas"
    candidate, index = stem, 2
    while candidate.lower() in taken:
        candidate, index = f"{stem}_{index}", index + 1
    taken.add(candidate.lower())
    return candidate


def _color_table_infos(labelmap_node, values: np.ndarray) -> dict[int, LabelInfo]:
    display = labelmap_node.GetDisplayNode()
    colors = display.GetColorNode() if display is not None else None
    if colors is None or colors.GetSingletonTag():
        return {}
    out = {}
    for value in values:
        name = colors.GetColorName(int(value)) if int(value) < colors.GetNumberOfColors() else ""
        if name and name != "(none)":
            rgba = [0.0, 0.0, 0.0, 0.0]
            colors.GetColor(int(value), rgba)
            out[int(value)] = LabelInfo(int(value), name, tuple(rgba[:3]))
    return out


class _SegmentValues:
    """Label values for segment names, shared by all segmentation atlases of one run."""

    def __init__(self, table_choice: str, used: set[int]):
        self._tables = list(label_tables.TABLE_FILES) if table_choice == label_tables.AUTO else (
            [] if table_choice == label_tables.NONE else [table_choice])
        self._used, self._by_name = set(used), {}

    def value(self, name: str) -> int:
        key = "".join(ch for ch in name.lower() if ch.isalnum())
        if key not in self._by_name:
            known = (label_tables.value_for_name(name, t) for t in self._tables)
            value = next((v for v in known if v is not None and v not in self._used), None)
            if value is None:
                value = next(v for v in range(1, 2 ** 31) if v not in self._used)
            self._used.add(value)
            self._by_name[key] = value
        return self._by_name[key]


def _labels_of(atlas: SceneAtlas, image, frame, values: _SegmentValues, known: dict) -> LabelMap:
    role = f"atlas {atlas.name} labels"
    if atlas.is_segmentation:
        by_id = {}
        for segment in describe_segments(atlas.labels):
            by_id[segment.segment_id] = values.value(segment.name)
            known.setdefault(by_id[segment.segment_id], LabelInfo(by_id[segment.segment_id], segment.name,
                                                                  segment.color, segment.terminology))
        return labels_from_segmentation(atlas.labels, atlas.image, by_id, frame, role)
    labels = labels_from_labelmap_node(atlas.labels, frame, role)
    if not labels.grid.same_as(image.grid):
        labels = LabelMap(resample(labels.array, labels.ijk_to_ras, image.grid, labels=True), image.ijk_to_ras)
    for value, info in _color_table_infos(atlas.labels, labels.labels).items():
        known.setdefault(value, info)
    return labels


def prepare_scene_atlases(atlases: Sequence[SceneAtlas], folder: Path, frame=None,
                          table_choice: str = label_tables.AUTO, taken: Optional[set[str]] = None) -> PreparedAtlases:
    """Write scene atlases to ``folder`` as ``NAME.nii.gz`` + ``NAME_seg.nii.gz`` for the command line.

    Args:
        atlases: the atlases, in order.
        folder: where to write (created if needed).
        frame: the transform node whose coordinates the files are written in (the target's).
        table_choice: which known table names segments (``auto``, a table name or ``none``).
        taken: file stems already used in this run (updated).

    Raises:
        ValueError: a node is unusable (the message names it).
    """
    folder.mkdir(parents=True, exist_ok=True)
    taken = set() if taken is None else taken
    used = {int(v) for a in atlases if not a.is_segmentation
            for v in labels_from_labelmap_node(a.labels, frame).labels}
    values, known = _SegmentValues(table_choice, used), {}
    files, names = [], []
    for atlas in atlases:
        image = volume_from_node(atlas.image, frame, f"atlas {atlas.name} image")
        labels = _labels_of(atlas, image, frame, values, known)
        stem = safe_name(atlas.name, taken)
        pair = atlas_io.AtlasFiles(folder / f"{stem}.nii.gz", folder / f"{stem}_seg.nii.gz")
        write_volume(image, pair.image)
        write_labels(labels, pair.labels)
        files.append(pair)
        names.append(stem)
    return PreparedAtlases(files, names, known)
