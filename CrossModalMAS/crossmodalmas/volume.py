"""The data contract: :class:`Volume` and :class:`LabelMap` on a :class:`Grid`, and file I/O.

A grid is a voxel array shape in **KJI** order (slowest axis first, the order
``slicer.util.arrayFromVolume`` and ``SimpleITK.GetArrayFromImage`` give) plus a 4x4
``ijk_to_ras`` matrix that maps a voxel index **(i, j, k)** (fastest axis first) to a point in
RAS millimetres. Files hold LPS geometry (ITK's convention); the LPS <-> RAS flip happens in
exactly one place, :func:`ijk_to_ras_from_sitk` / :func:`_sitk_geometry_from_ijk_to_ras`.

Files are read and written with SimpleITK: anything it reads (NIfTI, NRRD, MHA, a DICOM
folder). Writes go to a temporary file in the destination folder and are renamed into place,
so an interrupted write never leaves a partial output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from crossmodalmas.atomic import atomic_path
from crossmodalmas.dicom_series import read_dicom_series, split_series
from crossmodalmas.errors import InputError
from crossmodalmas.nifti_header import nifti_problem

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Grid:
    """A voxel grid in physical space.

    Attributes:
        shape: array shape (K, J, I), slowest axis first.
        ijk_to_ras: (4, 4) float64 matrix mapping homogeneous (i, j, k, 1) to RAS mm.
    """

    shape: tuple[int, int, int]
    ijk_to_ras: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "ijk_to_ras", np.asarray(self.ijk_to_ras, dtype=np.float64))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k (the column norms of the linear part)."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def spacing_kji(self) -> np.ndarray:
        """Voxel size in mm along the array axes (k, j, i)."""
        return self.spacing[::-1].copy()

    def ijk_to_points(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) voxel indices (i, j, k) to (N, 3) RAS points in mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def points_to_ijk(self, ras: np.ndarray) -> np.ndarray:
        """Map (N, 3) RAS points in mm to (N, 3) continuous voxel indices (i, j, k)."""
        ras_to_ijk = np.linalg.inv(self.ijk_to_ras)
        return np.asarray(ras, dtype=np.float64) @ ras_to_ijk[:3, :3].T + ras_to_ijk[:3, 3]

    def corners_ras(self) -> np.ndarray:
        """The 8 corner voxel centres of the grid in RAS mm, shape (8, 3)."""
        k, j, i = (s - 1 for s in self.shape)
        ijk = np.array([[a, b, c] for a in (0, i) for b in (0, j) for c in (0, k)], float)
        return self.ijk_to_points(ijk)

    def same_as(self, other: "Grid", tol_mm: float = 1e-3) -> bool:
        """True when both grids have the same shape and every voxel centre within ``tol_mm``."""
        if self.shape != other.shape:
            return False
        return bool(np.allclose(self.corners_ras(), other.corners_ras(), atol=tol_mm))


@dataclass
class _ArrayOnGrid:
    """A KJI array plus its IJK -> RAS matrix; subclasses fix the array's dtype."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    dtype: ClassVar[type] = np.float32

    def __post_init__(self):
        self.array = np.asarray(self.array, dtype=self.dtype)
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)

    @property
    def grid(self) -> Grid:
        return Grid(self.array.shape, self.ijk_to_ras)


@dataclass
class Volume(_ArrayOnGrid):
    """An intensity image: float32 array in KJI order plus its IJK -> RAS matrix."""

    dtype: ClassVar[type] = np.float32


@dataclass
class LabelMap(_ArrayOnGrid):
    """A label map: int32 array in KJI order (0 = background) plus its IJK -> RAS matrix."""

    dtype: ClassVar[type] = np.int32

    @property
    def labels(self) -> np.ndarray:
        """The foreground label values present, sorted (background 0 excluded)."""
        values = np.unique(self.array)
        return values[values != 0]


def ijk_to_ras_from_sitk(image: sitk.Image) -> np.ndarray:
    """ITK's LPS origin/spacing/direction -> our 4x4 IJK -> RAS matrix (the only LPS -> RAS flip)."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ ijk_to_lps


def _sitk_geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """Our IJK -> RAS matrix -> ITK's LPS (origin, spacing, direction) (the only RAS -> LPS flip)."""
    ijk_to_lps = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=np.float64)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing
    return tuple(ijk_to_lps[:3, 3]), tuple(spacing), tuple(direction.ravel())


def to_sitk(array: np.ndarray, ijk_to_ras: np.ndarray) -> sitk.Image:
    """A KJI array and its IJK -> RAS matrix as a SimpleITK image (LPS geometry)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    origin, spacing, direction = _sitk_geometry_from_ijk_to_ras(ijk_to_ras)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def from_sitk(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """A SimpleITK image as (KJI array, IJK -> RAS matrix)."""
    return sitk.GetArrayFromImage(image), ijk_to_ras_from_sitk(image)


def _itk_reason(error: RuntimeError) -> str:
    """The telling line of an ITK exception: its ``ITK ERROR:`` line without the class and
    address (the last line is often a stale ``Reason: No such file or directory``)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or ["unknown error"]
    reason = next((line for line in lines if line.startswith("ITK ERROR:")), lines[-1])
    reason = reason.removeprefix("ITK ERROR:").removeprefix("sitk::ERROR:").strip()
    if "): " in reason and reason.split("(", 1)[0].isidentifier():  # 'MetaImageIO(0x55...): text'
        reason = reason.split("): ", 1)[1]
    return reason[:160]


def read_any_image(path: str | os.PathLike) -> sitk.Image:
    """Read a file or DICOM folder with SimpleITK as it is (any dimension, any components).

    A DICOM folder that holds several series takes ``FOLDER::SERIES_UID``
    (:mod:`crossmodalmas.dicom_series`). A NIfTI file is checked for what ITK lets through
    (:mod:`crossmodalmas.nifti_header`: data cut short, a zero voxel size).

    Raises:
        InputError: the path does not exist or cannot be read as an image; a DICOM folder
            with several series and none chosen; a truncated NIfTI.
    """
    path = Path(path)
    source, series = split_series(path)
    if not source.exists():
        raise InputError(f"{path}: file does not exist")
    if series is not None and not source.is_dir():
        raise InputError(f"{path}: '::SERIES_UID' picks a series of a DICOM folder, and {source} is not a folder")
    problem = None if source.is_dir() else nifti_problem(source)
    if problem:
        raise InputError(f"{path}: {problem}")
    try:
        return read_dicom_series(source, series, str(path)) if source.is_dir() else sitk.ReadImage(str(source))
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be read as an image ({_itk_reason(error)})") from error


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a file or DICOM folder with SimpleITK, as a 3-D scalar image.

    Raises:
        InputError: the path does not exist, cannot be read as an image, is not 3-D
            (2-D, 4-D) or not scalar (RGB, vector).
    """
    path = Path(path)
    image = read_any_image(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: image has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(RGB or vector); a scalar image is needed"
        )
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
    elif image.GetDimension() != 3:
        raise InputError(f"{path}: image is {image.GetDimension()}-D with size {size}; a 3-D volume is needed")
    return image


def read_volume(path: str | os.PathLike) -> Volume:
    """Read an intensity volume; see :func:`read_image` for what is refused."""
    array, ijk_to_ras = from_sitk(read_image(path))
    return Volume(array.astype(np.float32, copy=False), ijk_to_ras)


def read_labels(path: str | os.PathLike) -> LabelMap:
    """Read a label map. A float file holding integer values is accepted.

    Raises:
        InputError: as :func:`read_image`, or the values are not integers, or do not fit int32.
    """
    array, ijk_to_ras = from_sitk(read_image(path))
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(f"{path}: label map holds non-integer values; labels must be integers")
    if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
        raise InputError(
            f"{path}: label values span [{array.min()}, {array.max()}], outside the int32 range"
        )
    return LabelMap(array.astype(np.int32), ijk_to_ras)


def _atomic_write(image: sitk.Image, path: Path) -> None:
    """Write next to ``path`` under a temporary name, then rename: never a partial output."""
    path = Path(path)
    suffix = "".join(path.suffixes) or ".nii.gz"
    if not path.parent.exists():
        raise InputError(f"{path}: output folder {path.parent} does not exist")
    try:
        with atomic_path(path, suffix) as temp:
            sitk.WriteImage(image, str(temp), useCompression=True)
            problem = nifti_problem(temp)  # ITK's NIfTI writer says nothing when the disk fills
            if problem:
                raise InputError(f"{path}: cannot write (the file came out incomplete: {problem}; "
                                 "is the disk full?)")
    except RuntimeError as error:
        raise InputError(f"{path}: cannot write ({_itk_reason(error)})") from error


def write_volume(volume: Volume, path: str | os.PathLike) -> None:
    """Write an intensity volume (float32) atomically."""
    _atomic_write(to_sitk(volume.array, volume.ijk_to_ras), Path(path))


def write_labels(labels: LabelMap, path: str | os.PathLike) -> None:
    """Write a label map atomically, in the smallest integer type that holds its values."""
    array = labels.array
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            array = array.astype(dtype)
            break
    _atomic_write(to_sitk(array, labels.ijk_to_ras), Path(path))
