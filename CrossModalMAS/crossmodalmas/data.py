"""Dataset adapters: a user's labelled images (CSV manifest, Medical Segmentation Decathlon,
MM-WHS, a plain folder) as one :class:`Dataset` of :class:`Case` records.

``open_dataset`` lists the cases from names alone (see :mod:`crossmodalmas.data_layouts`);
``Dataset.load`` reads one case (the channel of a multi-channel image extracted), checks it
with :mod:`crossmodalmas.validate` and remaps its labels; ``Dataset.validate`` reads every case
and reports every unusable one in one error, so a long run never stops on case 37.
Nothing is ever written into the dataset's folder, and no input is modified.

Label maps (``label_map``) remap label values: a JSON object ``{"205": 1, "420": 2, ...}``
or the bundled name ``"mmwhs"`` (the seven MM-WHS codes 205, 420, 500, 550, 600, 820, 850 ->
1..7 in that order).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from crossmodalmas.data_layouts import (Case, csv_cases, folder_cases, mmwhs_cases, MMWHS_FOLDERS,
                                        modality_tag, msd_cases)
from crossmodalmas.errors import InputError
from crossmodalmas.label_names import MMWHS_NAMES
from crossmodalmas.validate import check_labels, check_volume
from crossmodalmas.volume import LabelMap, Volume, from_sitk, read_any_image, read_labels, read_volume

__all__ = ["Case", "Dataset", "LAYOUTS", "BUNDLED_LABEL_MAPS", "open_dataset", "read_label_map"]

LAYOUTS = ("auto", "csv", "msd", "mmwhs", "folder")
BUNDLED_LABEL_MAPS: dict[str, dict[int, int]] = {
    "mmwhs": {code: index + 1 for index, code in enumerate(sorted(MMWHS_NAMES))},
}


def _read_channel(path: Path, channel: int) -> Volume:
    """Channel ``channel`` of a multi-channel image: a vector image (components) or a 4-D
    scalar image (4th axis), as NIfTI stores them either way; the 3-D geometry is kept.

    Raises:
        InputError: unreadable file, or no such channel.
    """
    image = read_any_image(path)
    components, size = image.GetNumberOfComponentsPerPixel(), image.GetSize()
    count = components if components > 1 else (size[3] if image.GetDimension() == 4 else 1)
    if channel >= count:
        raise InputError(f"{path}: image has {count} channel(s) (size {size}, {components} component(s) per voxel); "
                         f"channel {channel} is needed")
    try:
        extracted = sitk.VectorIndexSelectionCast(image, channel) if components > 1 else image[:, :, :, channel]
    except RuntimeError as error:
        raise InputError(f"{path}: cannot extract channel {channel} ({str(error).strip().splitlines()[-1][:160]})") from error
    if extracted.GetDimension() != 3:
        raise InputError(f"{path}: channel {channel} is {extracted.GetDimension()}-D; a 3-D volume is needed")
    array, ijk_to_ras = from_sitk(extracted)
    return Volume(array.astype(np.float32, copy=False), ijk_to_ras)


def _remap(labels: LabelMap, label_map: dict[int, int], path: Path) -> LabelMap:
    """Labels with every value replaced through ``label_map`` (values not listed -> 0).

    Raises:
        InputError: naming ``path``, when no foreground voxel is left.
    """
    values, inverse = np.unique(labels.array, return_inverse=True)
    new_values = np.array([label_map.get(int(v), 0) for v in values], dtype=np.int32)
    array = new_values[inverse].reshape(labels.array.shape)
    if not array.any():
        raise InputError(f"{path}: label map is empty after remapping (its labels "
                         f"{values[values != 0].tolist()[:10]} are not mapped to a non-zero value)")
    return LabelMap(array, labels.ijk_to_ras)


@dataclass(frozen=True)
class Dataset:
    """The labelled cases of one dataset.

    Attributes:
        root: the source as an absolute path (the CSV file for the ``csv`` layout, else the folder).
        layout: "csv", "msd", "mmwhs" or "folder".
        cases: the cases, unique by (subject, modality).
        label_map: source label value -> new value, applied by :meth:`load` (values not listed
            become 0); None keeps the labels as they are.
    """

    root: Path
    layout: str
    cases: tuple[Case, ...]
    label_map: Optional[dict[int, int]] = None

    def load(self, case: Case) -> tuple[Volume, LabelMap]:
        """Read and check one case.

        Returns:
            (image, labels): the image (the case's channel for a multi-channel file) and its
            remapped labels on the image's exact grid.

        Raises:
            InputError: a file is missing or unreadable, the image is not a usable 3-D volume,
                the labels are empty (before or after remapping) or on another grid.
        """
        if case.channel is None:
            image, name = read_volume(case.image), str(case.image)
        else:
            image, name = _read_channel(case.image, case.channel), f"{case.image} (channel {case.channel})"
        check_volume(image, name)
        labels = check_labels(read_labels(case.labels), image, str(case.labels))
        if self.label_map is not None:
            labels = _remap(labels, self.label_map, case.labels)
        return image, labels

    def validate(self) -> None:
        """Read every case (:meth:`load`); report all unusable ones at once.

        Raises:
            InputError: ``dataset <root>: N of M cases are unusable:`` followed by one line
                per bad case, ``  <subject> (<modality>): <reason>``.
        """
        failures = []
        for case in self.cases:
            try:
                self.load(case)
            except InputError as error:
                failures.append(f"  {case.subject} ({case.modality}): {error}")
        if failures:
            header = f"dataset {self.root}: {len(failures)} of {len(self.cases)} cases are unusable:"
            raise InputError("\n".join([header, *failures]))

    def modalities(self) -> list[str]:
        """The distinct modality tags, sorted."""
        return sorted({case.modality for case in self.cases})

    def subset(self, *, modality: Optional[str] = None, split: Optional[str] = None) -> "Dataset":
        """The cases of one modality and/or split (None: any), as a dataset of their own.

        Raises:
            InputError: no case matches (the message lists the modalities and splits there are).
        """
        kept = tuple(case for case in self.cases
                     if (modality is None or case.modality == modality_tag(modality))
                     and (split is None or case.split == split))
        if not kept:
            splits = sorted({case.split or "''" for case in self.cases})
            raise InputError(f"dataset {self.root}: no case with modality {modality!r} and split {split!r} "
                             f"(modalities: {', '.join(self.modalities())}; splits: {', '.join(splits)})")
        return replace(self, cases=kept)


def read_label_map(path: Union[str, os.PathLike]) -> dict[int, int]:
    """A label remap from a JSON object ``{"205": 1, "420": 2, ...}`` (source value -> new value).

    Label values the map does not list become 0 (background) when it is applied.

    Args:
        path: the JSON file.

    Returns:
        {source value: new value}, both non-negative integers.

    Raises:
        InputError: naming the file: missing, not JSON, not a non-empty object, a key that is
            not a non-negative integer or a value that is not one.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: label map file does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: label map is not valid JSON ({error})") from error
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: label map must be a non-empty JSON object like {{\"205\": 1, \"420\": 2}}")
    mapping = {}
    for key, value in data.items():
        if not key.strip().isdigit():
            raise InputError(f"{path}: label map key {key!r} is not a label value (a non-negative integer)")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{path}: label map value {value!r} of key {key!r} is not a non-negative integer")
        mapping[int(key)] = value
    return mapping


def _resolve_label_map(label_map: Union[str, os.PathLike, None]) -> Optional[dict[int, int]]:
    """A label map from a bundled name (:data:`BUNDLED_LABEL_MAPS`) or a JSON file; None stays None."""
    if label_map is None:
        return None
    if str(label_map) in BUNDLED_LABEL_MAPS and not Path(label_map).exists():
        return dict(BUNDLED_LABEL_MAPS[str(label_map)])
    if not Path(label_map).is_file():
        raise InputError(f"label map {label_map}: no such file and not a bundled map "
                         f"({', '.join(BUNDLED_LABEL_MAPS)})")
    return read_label_map(label_map)


def _detect_layout(source: Path) -> str:
    """The layout of ``source``: a .csv file, a Decathlon folder, an MM-WHS folder or a plain folder."""
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return "csv"
        raise InputError(f"{source}: not a dataset (give a CSV manifest or a dataset folder)")
    if (source / "dataset.json").is_file():
        return "msd"
    if any((source / name).is_dir() for name, _, _ in MMWHS_FOLDERS[:2]):
        return "mmwhs"
    return "folder"


def _list_cases(source: Path, layout: str, image_suffix: str, label_suffix: str, modality: str) -> list[Case]:
    """The cases of ``source`` read as ``layout``; refuses a source of the wrong kind."""
    if (layout == "csv") != source.is_file():
        kind = "a CSV file" if layout == "csv" else "a folder"
        raise InputError(f"{source}: the {layout} layout needs {kind}")
    if layout == "csv":
        return csv_cases(source, modality)
    if layout == "msd":
        return msd_cases(source)
    if layout == "mmwhs":
        return mmwhs_cases(source)
    return folder_cases(source, image_suffix, label_suffix, modality)


def _check_unique(source: Path, cases: list[Case]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for case in cases:
        seen[case.subject, case.modality] = seen.get((case.subject, case.modality), 0) + 1
    repeated = [f"'{subject}' ({modality}) {count} times" for (subject, modality), count in seen.items() if count > 1]
    if repeated:
        raise InputError(f"{source}: each subject may appear once per modality; listed {', '.join(repeated)}")


def open_dataset(source: Union[str, os.PathLike], layout: str = "auto",
                 label_map: Union[str, os.PathLike, None] = None, image_suffix: str = "",
                 label_suffix: str = "_seg", modality: str = "unknown") -> Dataset:
    """Open a labelled dataset (reads names only; :meth:`Dataset.validate` reads the images).

    Args:
        source: a CSV manifest, or a Decathlon, MM-WHS or plain folder.
        layout: "auto" (a .csv file -> csv; a folder with dataset.json -> msd; with ct_train/
            or mr_train/ -> mmwhs; another folder -> folder), or one of those four.
        label_map: remap of label values: a JSON file (:func:`read_label_map`) or a bundled
            name ("mmwhs"); None keeps the labels.
        image_suffix: folder layout: the image of subject X is ``X<image_suffix>.<ext>``.
        label_suffix: folder layout: its labels are ``X<label_suffix>.<ext>``.
        modality: the modality of the folder layout's cases and of CSV rows without one.

    Returns:
        The dataset, its cases in listing order (CSV row order; sorted by subject otherwise).

    Raises:
        InputError: the source is missing, of the wrong kind for ``layout``, holds no case,
            lists a (subject, modality) twice, or the label map is unusable.
    """
    source = Path(source)
    if layout not in LAYOUTS:
        raise InputError(f"layout '{layout}': must be one of {', '.join(LAYOUTS)}")
    if not source.exists():
        raise InputError(f"{source}: dataset does not exist")
    layout = _detect_layout(source) if layout == "auto" else layout
    cases = _list_cases(source, layout, image_suffix, label_suffix, modality)
    if not cases:
        hint = {"csv": "the CSV has no row", "msd": "dataset.json lists no training case",
                "mmwhs": "expected ct_train/<subject>_image.nii.gz with <subject>_label.nii.gz",
                "folder": f"expected pairs like X{image_suffix}.nii.gz with X{label_suffix}.nii.gz"}[layout]
        raise InputError(f"{source}: dataset ({layout} layout) holds no case; {hint}")
    _check_unique(source, cases)
    return Dataset(Path(os.path.abspath(source)), layout, tuple(cases), _resolve_label_map(label_map))
