"""How each dataset layout lists its cases (the :class:`Case` records of :mod:`crossmodalmas.data`).

Four layouts, each read from names only (a manifest, file and folder names; never an image,
which is :meth:`crossmodalmas.data.Dataset.load`'s job), and nothing is ever written:

- ``csv``: a manifest with columns ``image,labels[,modality,subject,split]``.
- ``msd``: the Medical Segmentation Decathlon (``dataset.json`` with a ``training`` list).
- ``mmwhs``: MM-WHS (``ct_train/``, ``mr_train/`` with ``<subject>_image`` + ``<subject>_label``).
- ``folder``: ``X<image_suffix>.nii.gz`` paired with ``X<label_suffix>.nii.gz`` in one folder.

A case is identified by its ``(subject, modality)`` pair: a multi-channel Decathlon image
(Task05 prostate: T2 and ADC) gives one case per channel, all with the patient's id as
subject, so the channels of one patient stay recognisable as the same anatomy.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from crossmodalmas.atlases import IMAGE_SUFFIXES, file_stem
from crossmodalmas.errors import InputError

SPLITS = ("train", "val", "test", "")
UNKNOWN_MODALITY = "unknown"
CSV_COLUMNS = ("image", "labels", "modality", "subject", "split")
# MM-WHS folders: (name, modality, split); test folders count only where they hold labels.
MMWHS_FOLDERS = (("ct_train", "ct", "train"), ("mr_train", "mr", "train"),
                 ("ct_test", "ct", "test"), ("mr_test", "mr", "test"))


@dataclass(frozen=True)
class Case:
    """One labelled image of a dataset.

    Attributes:
        subject: the case's id; unique within the dataset together with ``modality`` (the
            channels of a multi-channel image share their patient's id).
        image: absolute path of the image file.
        labels: absolute path of its label map (on the image's grid).
        modality: lower-case tag ("ct", "mr", "t2", "adc", ...); "unknown" where the layout
            gives none.
        split: "train", "val", "test", or "" where none is given.
        channel: the channel to take from a multi-channel (4-D or vector) image; None for
            a 3-D image.
    """

    subject: str
    image: Path
    labels: Path
    modality: str
    split: str = ""
    channel: Optional[int] = None


def modality_tag(text: str) -> str:
    """A modality as a tag: stripped, lower-case, "unknown" where empty."""
    return text.strip().lower() or UNKNOWN_MODALITY


def _absolute(base: Path, text: str) -> Path:
    """``text`` (absolute, or relative to ``base``) as a normalised absolute path."""
    return Path(os.path.abspath(base / text.strip()))


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The stripped header and rows of a CSV file (``utf-8-sig``: a spreadsheet's BOM is fine)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = [name.strip() for name in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot be read as a CSV manifest ({error})") from error
    cleaned = [{key.strip(): (value or "").strip() for key, value in row.items() if isinstance(key, str)}
               for row in rows]
    return header, cleaned


def csv_cases(path: Path, default_modality: str) -> list[Case]:
    """Cases of a CSV manifest, in its row order.

    Args:
        path: the CSV file; relative paths in it are relative to its folder.
        default_modality: the modality of rows without one.

    Raises:
        InputError: unreadable file, a missing ``image``/``labels`` column (the message lists
            the columns the file has), an empty path cell, or an unknown split.
    """
    header, rows = _read_rows(path)
    if "image" not in header or "labels" not in header:
        raise InputError(f"{path}: a dataset CSV needs columns 'image' and 'labels' (optional: modality, "
                         f"subject, split); it has {', '.join(repr(h) for h in header) or 'no header'}")
    cases = []
    for line, row in enumerate(rows, start=2):
        for column in ("image", "labels"):
            if not row.get(column):
                raise InputError(f"{path}: line {line}: the '{column}' cell is empty")
        split = row.get("split", "").lower()
        if split not in SPLITS:
            raise InputError(f"{path}: line {line}: split '{row['split']}' is not train, val, test or empty")
        image = _absolute(path.parent, row["image"])
        cases.append(Case(row.get("subject") or file_stem(image), image, _absolute(path.parent, row["labels"]),
                          modality_tag(row.get("modality", "") or default_modality), split))
    return cases


def _msd_modalities(manifest: Path, modality) -> list[str]:
    """The channel tags of a Decathlon ``modality`` entry ({"0": "T2", "1": "ADC"}), in channel order."""
    if modality is None:
        return [UNKNOWN_MODALITY]
    keys = [str(n) for n in range(len(modality))] if isinstance(modality, dict) else []
    if not keys or set(modality) != set(keys) or not all(isinstance(v, str) and v.strip() for v in modality.values()):
        raise InputError(f"{manifest}: 'modality' must map channel numbers 0..n-1 to names, "
                         f"like {{\"0\": \"T2\", \"1\": \"ADC\"}}; got {json.dumps(modality)[:80]}")
    return [modality_tag(modality[key]) for key in keys]


def msd_cases(root: Path) -> list[Case]:
    """Cases of a Medical Segmentation Decathlon folder: its ``training`` list (the ``test``
    list has no labels and is skipped), every case in split "train", sorted by subject.

    A multi-channel image gives one case per channel (``channel`` set, modality the channel's
    name); a single-channel one gives one case with ``channel`` None.

    Raises:
        InputError: ``dataset.json`` unreadable, without a ``training`` list, with a bad
            entry or a bad ``modality`` entry.
    """
    manifest = root / "dataset.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{manifest}: cannot be read as JSON ({error})") from error
    training = data.get("training") if isinstance(data, dict) else None
    if not isinstance(training, list):
        raise InputError(f"{manifest}: needs a 'training' list of {{\"image\": ..., \"label\": ...}} entries")
    names = _msd_modalities(manifest, data.get("modality"))
    cases = []
    for index, entry in enumerate(training):
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str)
                and isinstance(entry.get("label"), str)):
            raise InputError(f"{manifest}: training entry {index} needs 'image' and 'label' paths, "
                             f"got {json.dumps(entry)[:80]}")
        image, labels = _absolute(root, entry["image"]), _absolute(root, entry["label"])
        channels = [None] if len(names) == 1 else range(len(names))
        cases += [Case(file_stem(image), image, labels, names[channel or 0], "train", channel)
                  for channel in channels]
    return sorted(cases, key=lambda case: (case.subject, case.channel or 0))


def _image_files(folder: Path) -> dict[str, Path]:
    """The image files of ``folder`` by stem (any suffix SimpleITK reads), sorted by name."""
    return {file_stem(p): p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)}


def mmwhs_cases(root: Path) -> list[Case]:
    """Cases of an MM-WHS folder: ``ct_train/``, ``mr_train/`` (and ``ct_test/``,
    ``mr_test/`` pairs that have labels), subject the file prefix (``ct_train_1001``).

    A training image without its ``_label`` file is still listed (with the label path it
    should have), so that :meth:`~crossmodalmas.data.Dataset.validate` reports it.
    """
    cases = []
    for name, modality, split in MMWHS_FOLDERS:
        folder = root / name
        if not folder.is_dir():
            continue
        files = _image_files(folder)
        for stem, image in files.items():
            if not stem.endswith("_image"):
                continue
            subject = stem[: -len("_image")]
            labels = files.get(f"{subject}_label")
            if labels is None and split == "test":
                continue
            labels = labels or image.with_name(f"{subject}_label{image.name[len(stem):]}")
            cases.append(Case(subject, _absolute(folder, image.name), _absolute(folder, labels.name), modality, split))
    return cases


def folder_cases(root: Path, image_suffix: str, label_suffix: str, modality: str) -> list[Case]:
    """Cases of a plain folder: ``X<image_suffix>.<ext>`` with labels ``X<label_suffix>.<ext>``
    (.nii.gz, .nii, .nrrd, .mha, ...), subject ``X``; images without labels are ignored.

    Raises:
        InputError: ``label_suffix`` is empty or equals ``image_suffix``.
    """
    if not label_suffix or label_suffix == image_suffix:
        raise InputError(f"label suffix '{label_suffix}': must be non-empty and differ from the image "
                         f"suffix '{image_suffix}'")
    files = _image_files(root)
    cases = []
    for stem, labels in files.items():
        subject = stem[: -len(label_suffix)]
        image = files.get(subject + image_suffix)
        if stem.endswith(label_suffix) and subject and image is not None:
            cases.append(Case(subject, _absolute(root, image.name), _absolute(root, labels.name),
                              modality_tag(modality)))
    return cases
