"""NIfTI files ITK reads or writes silently although they are wrong (crossmodalmas.nifti_header):
data cut short (read and written), zero voxel sizes; and what must still pass (intact files,
multi-member gzip, NIfTI-2, big-endian headers, non-NIfTI files left to ITK)."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import no_partial_files
from crossmodalmas.errors import InputError
from crossmodalmas.nifti_header import nifti_problem, read_header
from crossmodalmas.phantoms import make_grid
from crossmodalmas.volume import Volume, read_volume, write_volume

SHAPE = (6, 7, 8)
DATA_BYTES = 6 * 7 * 8 * 4  # float32
PIXDIM = 76  # NIfTI-1 offsets of pixdim[8], qform_code and sform_code
QFORM, SFORM = 252, 254


def _volume() -> Volume:
    grid = make_grid(SHAPE, (0.9, 1.1, 2.0), rotation_deg=(5.0, -10.0, 15.0), centre_ras=(3.0, -4.0, 5.0))
    return Volume(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32), grid.ijk_to_ras)


@pytest.fixture
def plain(tmp_path):
    """An intact uncompressed NIfTI-1 of :data:`SHAPE` float32 voxels."""
    path = tmp_path / "plain.nii"
    sitk.WriteImage(sitk.GetImageFromArray(_volume().array), str(path), useCompression=False)
    return path


def _edited(path, name, **shorts):
    """A copy of ``path`` with int16 fields (offset=value) and ``pixdim`` floats overwritten."""
    raw = bytearray(path.read_bytes())
    for offset, value in shorts.get("int16", {}).items():
        struct.pack_into("<h", raw, offset, value)
    for index, value in shorts.get("pixdim", {}).items():
        struct.pack_into("<f", raw, PIXDIM + 4 * index, value)
    out = path.with_name(name)
    out.write_bytes(bytes(raw))
    return out


def test_intact_files_pass(plain, tmp_path):
    assert nifti_problem(plain) is None
    write_volume(_volume(), tmp_path / "v.nii.gz")
    assert nifti_problem(tmp_path / "v.nii.gz") is None
    header = read_header(plain)
    assert header.file_bytes == 352 + DATA_BYTES and header.spatial_pixdim == (1.0, 1.0, 1.0)


def test_a_truncated_nii(plain):
    cut = plain.with_name("cut.nii")
    cut.write_bytes(plain.read_bytes()[:1000])
    assert nifti_problem(cut) == f"NIfTI data is cut short: 1000 of {352 + DATA_BYTES} bytes"
    with pytest.raises(InputError, match=rf"^{re.escape(str(cut))}: NIfTI data is cut short: 1000 of \d+ bytes$"):
        read_volume(cut)


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_a_truncated_nii_gz(tmp_path, keep):
    path = tmp_path / "v.nii.gz"
    write_volume(_volume(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: NIfTI data is cut short: \d+ of "
                                         rf"{352 + DATA_BYTES} bytes \(the compressed stream ends early\)$"):
        read_volume(path)


def test_a_complete_stream_of_short_data(plain, tmp_path):
    """A whole gzip stream whose content is shorter than the header says."""
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()[:1000]))
    assert nifti_problem(path) == f"NIfTI data is cut short: 1000 of {352 + DATA_BYTES} bytes"


def test_a_lost_gzip_trailer_alone_is_not_a_problem(tmp_path):
    """All the data is there; only the checksum and size fields at the very end are missing."""
    path = tmp_path / "v.nii.gz"
    write_volume(_volume(), path)
    path.write_bytes(path.read_bytes()[:-3])
    assert nifti_problem(path) is None
    np.testing.assert_array_equal(read_volume(path).array, _volume().array)


def test_damaged_compressed_data(tmp_path):
    noise = np.random.default_rng(1).normal(size=(40, 40, 40)).astype(np.float32)  # ~250 kB compressed
    sitk.WriteImage(sitk.GetImageFromArray(noise), str(tmp_path / "noise.nii"), useCompression=False)
    data = bytearray(gzip.compress((tmp_path / "noise.nii").read_bytes()))[:-1]  # the trailer no longer vouches
    data[len(data) // 2:len(data) // 2 + 20] = bytes(20)
    path = tmp_path / "damaged.nii.gz"
    path.write_bytes(bytes(data))
    assert re.fullmatch(r"NIfTI data is cut short: \d+ of \d+ bytes \(the compressed data is damaged \(.+\)\)",
                        nifti_problem(path))


def test_multi_member_gzip_passes(plain, tmp_path):
    """Concatenated gzip members (bgzip, pigz) hold one file; only the last member's size is
    in the trailer, so the whole stream is counted."""
    raw = plain.read_bytes()
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    assert nifti_problem(path) is None
    np.testing.assert_array_equal(read_volume(path).array, sitk.GetArrayFromImage(sitk.ReadImage(str(plain))))


def test_big_endian_header(tmp_path):
    array = np.arange(np.prod(SHAPE), dtype=">f4").reshape(SHAPE)
    header = bytearray(352)
    struct.pack_into(">i", header, 0, 348)
    struct.pack_into(">8h", header, 40, 3, SHAPE[2], SHAPE[1], SHAPE[0], 1, 1, 1, 1)
    struct.pack_into(">hh", header, 70, 16, 32)  # datatype float32, bitpix
    struct.pack_into(">8f", header, PIXDIM, 1, 2, 2, 2, 1, 1, 1, 1)
    struct.pack_into(">f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    path = tmp_path / "big.nii"
    path.write_bytes(bytes(header) + array.tobytes()[:-8])
    assert nifti_problem(path) == f"NIfTI data is cut short: {352 + DATA_BYTES - 8} of {352 + DATA_BYTES} bytes"
    path.write_bytes(bytes(header) + array.tobytes())
    assert nifti_problem(path) is None


def test_nifti2_header(tmp_path):
    header = bytearray(544)
    struct.pack_into("<i", header, 0, 540)
    header[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<hh", header, 12, 16, 32)
    struct.pack_into("<8q", header, 16, 3, SHAPE[2], SHAPE[1], SHAPE[0], 1, 1, 1, 1)
    struct.pack_into("<8d", header, 104, 1, 0.0, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<q", header, 168, 544)
    path = tmp_path / "two.nii"
    path.write_bytes(bytes(header) + bytes(DATA_BYTES - 4))
    assert read_header(path).spatial_pixdim == (0.0, 1.0, 1.0)
    assert nifti_problem(path).startswith("NIfTI header gives voxel size 0 along axis 1")
    struct.pack_into("<8d", header, 104, 1, 1.0, 1, 1, 1, 1, 1, 1)
    path.write_bytes(bytes(header) + bytes(DATA_BYTES - 4))
    assert nifti_problem(path) == f"NIfTI data is cut short: {544 + DATA_BYTES - 4} of {544 + DATA_BYTES} bytes"


def test_zero_voxel_size_without_sform_is_refused(plain):
    flat = _edited(plain, "flat.nii", int16={QFORM: 1, SFORM: 0}, pixdim={3: 0.0})
    with pytest.raises(InputError, match=rf"^{re.escape(str(flat))}: NIfTI header gives voxel size 0 along axis 3 "
                                         r"\(pixdim\[3\]\) and no sform; ITK would read it as 1 mm$"):
        read_volume(flat)


def test_zero_voxel_size_with_an_sform_is_left_to_the_sform(plain):
    """The sform gives the geometry: ``pixdim`` is not used, so a zero there does no harm."""
    flat = _edited(plain, "sform.nii", int16={QFORM: 1, SFORM: 1}, pixdim={3: 0.0})
    assert nifti_problem(flat) is None
    np.testing.assert_allclose(read_volume(flat).grid.spacing, (1.0, 1.0, 1.0))


def test_negative_voxel_size_reads_as_a_mirrored_axis(plain):
    flipped = _edited(plain, "neg.nii", int16={QFORM: 1, SFORM: 0}, pixdim={1: -2.0})
    assert nifti_problem(flipped) is None
    volume = read_volume(flipped)
    np.testing.assert_allclose(volume.grid.spacing, (2.0, 1.0, 1.0))
    straight = read_volume(_edited(plain, "pos.nii", int16={QFORM: 1, SFORM: 0}, pixdim={1: 2.0}))
    np.testing.assert_allclose(volume.ijk_to_ras[:3, 0], -straight.ijk_to_ras[:3, 0])


def test_files_that_are_not_nifti_are_left_to_itk(tmp_path):
    text = tmp_path / "notes.nii.gz"
    text.write_text("not an image")
    assert read_header(text) is None and nifti_problem(text) is None
    pair = tmp_path / "pair.nii"
    pair.write_bytes(struct.pack("<i", 348) + bytes(340) + b"ni1\0")
    assert read_header(pair) is None
    assert nifti_problem(tmp_path / "image.nrrd") is None  # not named like NIfTI: not even opened


def test_a_silently_short_write_is_caught_and_leaves_nothing(tmp_path, monkeypatch):
    """ITK's NIfTI writer returns as if all went well when the disk fills; the write checks
    the file it made and removes it."""
    real = sitk.WriteImage

    def write_then_lose_the_end(image, name, useCompression=False):
        real(image, name, useCompression)
        data = open(name, "rb").read()
        open(name, "wb").write(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", write_then_lose_the_end)
    path = tmp_path / "out.nii.gz"
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: cannot write \(the file came out incomplete: "
                                         r"NIfTI data is cut short: \d+ of \d+ bytes .*; is the disk full\?\)$"):
        write_volume(_volume(), path)
    assert list(tmp_path.iterdir()) == [] and no_partial_files(tmp_path)
