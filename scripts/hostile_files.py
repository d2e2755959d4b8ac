"""Makers of hostile input files for the catalogue in :mod:`hostile_cases`.

A tiny phantom case to spoil (a CT-like target and two MR-like atlases, 40^3 voxels at
2.5 mm, the seeds of the pytest suite's ``tiny_case``), and the ways to spoil it: files cut
short, NIfTI headers edited byte by byte, NRRD and MetaImage headers written by hand, DICOM
series written with SimpleITK's per-slice tags, label maps with odd values, copies of a bundled
model, and the child-process settings a case needs (a file-size limit, root without its
permission override).
"""

from __future__ import annotations

import ctypes
import functools
import gzip
import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from crossmodalmas.models import bundled_models_dir, read_manifest, sha256_of
from crossmodalmas.phantoms import heart_tissue_map, make_grid, random_heart_anatomy, render, tissue_to_labels
from crossmodalmas.volume import LabelMap, Volume, to_sitk, write_labels, write_volume

SHAPE, SPACING_MM = (40, 40, 40), (2.5, 2.5, 2.5)
TARGET_SEED, ATLAS_SEEDS = 1, (6, 9)  # atlases whose affine pre-alignment to this target is good
_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_SETPCAP = 24, 1, 8
# NIfTI-1 header fields (byte offset, struct format) that the cases edit.
NIFTI1 = {"dim": (40, "8h"), "pixdim": (76, "8f"), "qform_code": (252, "h"), "sform_code": (254, "h"),
          "srow_x": (280, "4f"), "srow_y": (296, "4f"), "srow_z": (312, "4f")}


@dataclass
class TinyFiles:
    """The tiny case on disk: target image and (image, labels) of each atlas."""

    target: Path
    atlases: list[tuple[Path, Path]]

    def atlas_args(self) -> list[str]:
        return [arg for image, labels in self.atlases for arg in ("--atlas", str(image), str(labels))]


def _phantom(seed: int, modality: str) -> tuple[Volume, LabelMap]:
    rng = np.random.default_rng(seed)
    anatomy = random_heart_anatomy(rng)
    grid = make_grid(SHAPE, SPACING_MM, centre_ras=anatomy.heart_centre_ras)
    tissue = heart_tissue_map(anatomy, grid)
    return render(tissue, grid, modality, rng), tissue_to_labels(tissue, grid)


@functools.lru_cache(maxsize=1)
def case_volumes() -> tuple[Volume, list[tuple[str, Volume, LabelMap]]]:
    """The tiny case in memory (rendered once per process): target, [(name, image, labels)]."""
    target, _ = _phantom(TARGET_SEED, "ct")
    return target, [(f"mr{seed}", *_phantom(seed, "mr")) for seed in ATLAS_SEEDS]


def write_tiny_case(folder: Path, target_name: str = "target.nii.gz") -> TinyFiles:
    """Write the tiny case into ``folder`` (atlases in ``folder / 'atlases'``)."""
    target, atlases = case_volumes()
    (folder / "atlases").mkdir(parents=True, exist_ok=True)
    write_volume(target, folder / target_name)
    pairs = []
    for name, image, labels in atlases:
        pair = (folder / "atlases" / f"{name}.nii.gz", folder / "atlases" / f"{name}_seg.nii.gz")
        write_volume(image, pair[0])
        write_labels(labels, pair[1])
        pairs.append(pair)
    return TinyFiles(folder / target_name, pairs)


def truncate(path: Path, keep: float = 0.6) -> Path:
    """Cut ``path`` to the first ``keep`` of its bytes (a copy that stopped half way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_image(path: Path, array: np.ndarray, volume: Volume) -> Path:
    """``array`` on ``volume``'s grid, written as SimpleITK writes it (its own pixel type)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_sitk(array, volume.ijk_to_ras), str(path))
    return path


def write_nifti_edited(path: Path, volume: Volume, **fields) -> Path:
    """``volume`` as NIfTI-1 with header ``fields`` (see :data:`NIFTI1`) overwritten; gzipped
    when ``path`` ends in ``.gz``."""
    plain = path.with_name(path.name.removesuffix(".gz"))
    sitk.WriteImage(to_sitk(volume.array, volume.ijk_to_ras), str(plain), useCompression=False)
    raw = bytearray(plain.read_bytes())
    for key, values in fields.items():
        offset, fmt = NIFTI1[key]
        struct.pack_into("<" + fmt, raw, offset, *np.atleast_1d(values))
    if path.name.endswith(".gz"):
        plain.unlink()
        path.write_bytes(gzip.compress(bytes(raw)))
    else:
        plain.write_bytes(bytes(raw))
    return path


def _raw_float32(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def write_nrrd(path: Path, array: np.ndarray, **fields: str) -> Path:
    """A float32 NRRD with a hand-written header (``sizes`` is filled in, i fastest)."""
    fields = {"sizes": " ".join(str(s) for s in array.shape[::-1]), **fields}
    head = "NRRD0004\ntype: float\ndimension: 3\nencoding: raw\nendian: little\n"
    head += "".join(f"{key.replace('_', ' ')}: {value}\n" for key, value in fields.items()) + "\n"
    path.write_bytes(head.encode("ascii") + _raw_float32(array))
    return path


def write_mha(path: Path, array: np.ndarray, **fields: str) -> Path:
    """A float32 MetaImage with a hand-written header (``DimSize`` is filled in, i fastest)."""
    fields = {"DimSize": " ".join(str(s) for s in array.shape[::-1]), **fields}
    head = "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
    head += "".join(f"{key} = {value}\n" for key, value in fields.items())
    head += "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    path.write_bytes(head.encode("ascii") + _raw_float32(array))
    return path


def write_dicom_series(folder: Path, volume: Volume, series_uid: str, description: str) -> Path:
    """``volume`` as a CT DICOM series (int16, one file per slice) in ``folder``, with the tags
    a scanner writes (the SimpleITK "DICOM series from array" recipe)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(to_sitk(np.round(volume.array), volume.ijk_to_ras), sitk.sitkInt16)
    d = image.GetDirection()
    shared = {"0008|0060": "CT", "0008|0008": "DERIVED\\SECONDARY", "0010|0010": "Phantom^Hostile",
              "0010|0020": "HOSTILE", "0020|000d": "1.2.826.0.1.3680043.2.1125.7.1", "0020|000e": series_uid,
              "0008|103e": description, "0018|0050": f"{image.GetSpacing()[2]:.6f}",
              "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        for tag, value in shared.items():
            piece.SetMetaData(tag, value)
        piece.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")  # SOP instance UID
        piece.SetMetaData("0020|0013", str(k + 1))
        piece.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        writer.SetFileName(str(folder / f"{series_uid.rsplit('.', 1)[-1]}_{k:03d}.dcm"))
        writer.Execute(piece)
    return folder


def parcellate(labels: LabelMap, count: int, everywhere: bool = False) -> np.ndarray:
    """A parcellation with ``count`` labels: the foreground of ``labels`` (or, ``everywhere``,
    the whole grid) cut in raster order into ``count`` runs of voxels numbered 1..count."""
    inside = np.ones(labels.array.shape, bool) if everywhere else labels.array > 0
    total = int(inside.sum())
    if total < count:
        raise ValueError(f"parcellate(): {total} voxels cannot hold {count} labels")
    rank = np.cumsum(inside.ravel()).reshape(inside.shape) - 1
    return np.where(inside, 1 + rank * count // total, 0).astype(np.int32)


def default_model(task: str) -> str:
    """The name of the bundled default model of ``task`` ('registration' or 'similarity')."""
    return next(e.name for e in read_manifest() if e.task.value == task and e.default)


def copy_model(folder: Path, name: str) -> tuple[Path, dict]:
    """A bundled model's weights copied into ``folder``; returns (the copy, its entry as JSON).
    Never touches the bundled files."""
    entry = next(e for e in read_manifest() if e.name == name)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(entry.path(), folder / entry.file)
    return folder / entry.file, entry.to_dict()


def write_manifest(folder: Path, entry: dict) -> Path:
    """A ``models.json`` in ``folder`` holding ``entry`` alone (written as given: it may be broken)."""
    path = folder / "models.json"
    path.write_text(json.dumps({"format": 1, "models": [entry]}, indent=1), encoding="utf-8")
    return path


def flip_byte(path: Path) -> None:
    """Invert one byte in the middle of ``path`` (a tampered or bit-rotted copy)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def bundled_models_intact() -> bool:
    """Whether every bundled weights file still has its manifest's sha256."""
    return all(sha256_of(entry.path()) == entry.sha256 for entry in read_manifest(bundled_models_dir()))


def sha256_files(paths) -> str:
    """One sha256 over the names and contents of ``paths``."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def file_size_limit(limit_bytes: int):
    """A child-process setup: files may not grow past ``limit_bytes`` (as a full disk), and
    writing past it fails with EFBIG instead of killing the process with SIGXFSZ."""
    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return setup


def read_only_unavailable() -> str | None:
    """Why a read-only folder cannot be made here, or None. Root ignores folder permissions
    unless the child drops CAP_DAC_OVERRIDE, which needs Linux and CAP_SETPCAP."""
    if os.geteuid() != 0:
        return None
    if sys.platform != "linux":
        return "running as root outside Linux: root can write into any folder"
    status = Path("/proc/self/status").read_text(encoding="utf-8")
    effective = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    if effective >> _CAP_SETPCAP & 1:
        return None
    return "running as root without CAP_SETPCAP: cannot drop CAP_DAC_OVERRIDE"


def without_permission_override() -> None:
    """A child-process setup: as root, drop CAP_DAC_OVERRIDE (from the bounding set, so the
    exec keeps it dropped) so that folder permissions apply; nothing for other users."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE) failed")
