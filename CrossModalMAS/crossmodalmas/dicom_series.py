"""DICOM folders: the series they hold, and picking one as ``FOLDER::SERIES_UID``.

A folder that holds one series reads as that series. A folder that holds several (a CT with
its scout, an MR study's sequences) is refused with a message that lists them, each as
``UID (N files, description)``, and asks for one: ``crossmodalmas segment --target
FOLDER::1.2.840...`` (the SeriesInstanceUID, DICOM tag 0020|000e, as GDCM reports it). The
``::`` form works wherever an image path is taken (``--target``, ``--atlas``, a CSV row).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import SimpleITK as sitk

from crossmodalmas.errors import InputError

SERIES_SEPARATOR = "::"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DESCRIPTION_TAG = "0008|103e"


def split_series(path: Path) -> tuple[Path, Optional[str]]:
    """``FOLDER::SERIES_UID`` -> ``(FOLDER, SERIES_UID)``; any other path -> ``(path, None)``.

    A path that exists as it is is never split (a file may have ``::`` in its name).
    """
    text = str(path)
    folder, separator, uid = text.rpartition(SERIES_SEPARATOR)
    if separator and _UID.match(uid) and not Path(text).exists():
        return Path(folder), uid
    return Path(text), None


def _description(files: list[str]) -> str:
    """The series' description from its first file's header ('' where it has none)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData(_DESCRIPTION_TAG).strip() if reader.HasMetaDataKey(_DESCRIPTION_TAG) else ""


def describe_series(folder: Path, series: list[str]) -> str:
    """``UID (N files, description); ...`` for the listed series of ``folder``."""
    parts = []
    for uid in series:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        description = _description(files) if files else ""
        parts.append(f"{uid} ({len(files)} files{', ' + description if description else ''})")
    return "; ".join(parts)


def read_dicom_series(folder: Path, uid: Optional[str] = None, named: Optional[str] = None) -> sitk.Image:
    """Read the one DICOM series of ``folder``, or the series ``uid``.

    Args:
        folder: a folder of DICOM files.
        uid: the SeriesInstanceUID to read; None where the folder must hold one series.
        named: how the user wrote the path, for messages (default ``folder``).

    Returns:
        The series as a SimpleITK image (LPS geometry from the DICOM tags).

    Raises:
        InputError: no series in the folder; several and no ``uid`` (the message lists them);
            no series ``uid`` in the folder.
        RuntimeError: SimpleITK cannot read the series' files.
    """
    named = named or str(folder)
    series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not series:
        raise InputError(f"{named}: folder holds no DICOM series (give an image file or a DICOM folder)")
    if uid is None and len(series) > 1:
        raise InputError(f"{named}: folder holds {len(series)} DICOM series: {describe_series(folder, series)}; "
                         f"pick one as {folder}{SERIES_SEPARATOR}SERIES_UID")
    if uid is not None and uid not in series:
        raise InputError(f"{named}: folder holds no DICOM series {uid} (it holds {describe_series(folder, series)})")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid or series[0]))
    return reader.Execute()
