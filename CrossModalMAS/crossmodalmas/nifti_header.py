"""NIfTI files that ITK reads or writes without a word although they are wrong.

* **Data cut short.** ITK's NIfTI reader fills the voxels missing from a truncated file (a
  copy cut short, a download that stopped) and reports nothing; its writer, when the disk
  fills or a file-size limit is hit, prints ``** ERROR: NWAD: wrote only ...`` on stderr and
  returns as if it had written the file. :func:`nifti_problem` compares the data length with
  what the header promises (for ``.nii.gz`` the gzip trailer's size field first, and only
  when that disagrees the whole stream, so an intact file costs a few bytes of reading).
* **Zero voxel size.** Where the geometry comes from ``pixdim`` (no sform), ITK reads a
  voxel size of 0 as 1 mm. A *negative* ``pixdim`` is read as its absolute value with that
  axis mirrored, which is a valid geometry (as :func:`crossmodalmas.validate.check_grid`
  treats a negative spacing: a flipped direction), so it is accepted.

Other formats need none of this: the NRRD and MetaImage readers and writers report short
data themselves. Only single-file NIfTI-1 and NIfTI-2 (``.nii``, ``.nii.gz``) are checked;
anything else is left to ITK, which then says what it cannot read.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_CHUNK, _READ = 1 << 20, 1 << 16  # most bytes inflated per call; compressed bytes read per call
# (header size, its struct layout): dim, bitpix, pixdim, vox_offset, sform_code offsets and types.
_LAYOUTS = {
    348: {"dim": (40, "8h"), "bitpix": (72, "h"), "pixdim": (76, "8f"), "vox_offset": (108, "f"),
          "sform_code": (254, "h"), "magic": (344, b"n+1\0")},
    540: {"dim": (16, "8q"), "bitpix": (14, "h"), "pixdim": (104, "8d"), "vox_offset": (168, "q"),
          "sform_code": (348, "i"), "magic": (4, b"n+2\0")},
}


@dataclass(frozen=True)
class NiftiHeader:
    """What the checks need from a single-file NIfTI header.

    Attributes:
        file_bytes: how long the (uncompressed) file must be: ``vox_offset`` plus the voxel
            data (all dimensions, ``bitpix`` bits per voxel).
        spatial_pixdim: ``pixdim[1..n]`` of the spatial axes (n = min(3, dim[0])), in mm.
        sform_code: 0 where the geometry comes from the qform or ``pixdim`` alone.
    """

    file_bytes: int
    spatial_pixdim: tuple[float, ...]
    sform_code: int


def is_nifti(path: Path) -> bool:
    """Whether ``path`` is named like a single-file NIfTI (``.nii`` or ``.nii.gz``, any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _gunzip(path: Path, limit: int, keep: int = 0) -> tuple[bytes, int, str]:
    """Decompress a gzip file (all its members) until ``limit`` bytes have come out.

    Unlike :mod:`gzip`, keeps what a truncated stream yields before it stops.

    Returns:
        (its first ``keep`` bytes, how many bytes came out (at most about ``limit``), '' or
        why the stream stopped before ``limit``).
    """
    head, total, between = b"", 0, False
    decompressor, pending = zlib.decompressobj(31), b""
    with open(path, "rb") as stream:
        while total < limit:
            raw = pending or stream.read(_READ)  # small pieces: an error loses only the last piece's output
            if not raw:
                return head, total, "" if between else "the compressed stream ends early"
            try:
                out = decompressor.decompress(raw, _CHUNK)  # bounded: a run of zeros inflates 1000-fold
            except zlib.error as error:
                return head, total, f"the compressed data is damaged ({error})"
            pending = decompressor.unconsumed_tail
            head += out[:max(keep - len(head), 0)]
            total, between = total + len(out), False
            if decompressor.eof:  # the next gzip member, if any
                pending, decompressor, between = decompressor.unused_data, zlib.decompressobj(31), True
    return head, total, ""


def _parse(raw: bytes) -> Optional[NiftiHeader]:
    for order in "<>":
        if len(raw) < 4:
            return None
        size = struct.unpack_from(order + "i", raw)[0]
        layout = _LAYOUTS.get(size)
        if layout is None or len(raw) < size:
            continue
        offset, magic = layout["magic"]
        if raw[offset:offset + len(magic)] != magic:
            return None  # a NIfTI pair header (ni1/ni2) or not NIfTI: left to ITK
        value = {key: struct.unpack_from(order + fmt, raw, at) for key, (at, fmt) in layout.items() if key != "magic"}
        dim, pixdim = value["dim"], value["pixdim"]
        count = min(max(int(dim[0]), 0), 7)
        voxels = 1
        for extent in dim[1:count + 1]:
            voxels *= max(int(extent), 1)
        data = voxels * max(int(value["bitpix"][0]), 0) // 8
        return NiftiHeader(int(value["vox_offset"][0]) + data, tuple(float(p) for p in pixdim[1:min(count, 3) + 1]),
                           int(value["sform_code"][0]))
    return None


def read_header(path: Path) -> Optional[NiftiHeader]:
    """The header of a single-file NIfTI-1/2, or None where the file is not one (or its header
    cannot be read: ITK then says what is wrong)."""
    try:
        if str(path).lower().endswith(".gz"):
            return _parse(_gunzip(path, 540, keep=540)[0])
        with open(path, "rb") as stream:
            return _parse(stream.read(540))
    except OSError:
        return None


def _gzip_trailer_size(path: Path) -> Optional[int]:
    """The uncompressed size mod 2**32 that a gzip file's last four bytes record."""
    size = os.path.getsize(path)
    if size < 18:  # a gzip member has at least a 10-byte header and an 8-byte trailer
        return None
    with open(path, "rb") as stream:
        stream.seek(size - 4)
        return struct.unpack("<I", stream.read(4))[0]


def nifti_problem(path: Path) -> Optional[str]:
    """What is wrong with a single-file NIfTI that ITK would not report, or None.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file (anything else, or a file whose header is not
            NIfTI-1/2, gives None: ITK's reader judges it).

    Returns:
        One phrase, e.g. ``"NIfTI data is cut short: 1000 of 64352 bytes"`` or ``"NIfTI
        header gives voxel size 0 along axis 1 (pixdim[1]) and no sform; ITK would read
        it as 1 mm"``; None when nothing is wrong.
    """
    path = Path(path)
    header = read_header(path) if is_nifti(path) else None
    if header is None:
        return None
    if header.sform_code <= 0:
        for axis, size in enumerate(header.spatial_pixdim, start=1):
            if size == 0:
                return (f"NIfTI header gives voxel size 0 along axis {axis} (pixdim[{axis}]) and no sform; "
                        "ITK would read it as 1 mm")
    if str(path).lower().endswith(".gz"):
        if _gzip_trailer_size(path) == header.file_bytes % 2 ** 32:
            return None
        _, length, reason = _gunzip(path, header.file_bytes)
    else:
        length, reason = os.path.getsize(path), ""
    if length < header.file_bytes:
        return f"NIfTI data is cut short: {length} of {header.file_bytes} bytes" + (f" ({reason})" if reason else "")
    return None
