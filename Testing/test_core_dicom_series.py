"""DICOM folders (crossmodalmas.dicom_series): one series reads as it is, several are listed and
one is picked as ``FOLDER::SERIES_UID``; series written with SimpleITK's per-slice tags
(``scripts/hostile_files.py``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import import_scripts
from crossmodalmas.dicom_series import split_series
from crossmodalmas.errors import InputError
from crossmodalmas.phantoms import make_grid
from crossmodalmas.volume import Volume, read_volume

UIDS = ("1.2.826.0.1.3680043.2.1125.9.1", "1.2.826.0.1.3680043.2.1125.9.2")


@pytest.fixture(scope="module")
def files():
    yield from import_scripts(("hostile_files",))


def _volume(seed: int) -> Volume:
    grid = make_grid((5, 6, 7), (0.8, 0.9, 2.5), rotation_deg=(0.0, 0.0, 20.0), centre_ras=(10.0, -5.0, 30.0))
    return Volume(np.random.default_rng(seed).integers(-1000, 1000, (5, 6, 7)).astype(np.float32), grid.ijk_to_ras)


@pytest.fixture
def two_series(files, tmp_path) -> Path:
    for seed, (uid, description) in enumerate(zip(UIDS, ("CT head", "CT scout"))):
        files.hostile_files.write_dicom_series(tmp_path / "study", _volume(seed), uid, description)
    return tmp_path / "study"


def test_split_series(tmp_path):
    assert split_series(Path("/data/study::1.2.840.10008.5")) == (Path("/data/study"), "1.2.840.10008.5")
    assert split_series(Path("/data/study")) == (Path("/data/study"), None)
    assert split_series(Path("/data/a::b")) == (Path("/data/a::b"), None)  # not a UID
    named = tmp_path / "odd::1.2"
    named.write_text("a file whose name looks like FOLDER::UID")
    assert split_series(named) == (named, None)


def test_one_series_reads_with_its_geometry(files, tmp_path):
    volume = _volume(0)
    files.hostile_files.write_dicom_series(tmp_path / "ct", volume, UIDS[0], "CT head")
    read = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(read.array, volume.array)
    assert read.grid.same_as(volume.grid, tol_mm=1e-4)


def test_several_series_are_listed(two_series):
    with pytest.raises(InputError, match=rf"^{re.escape(str(two_series))}: folder holds 2 DICOM series: "
                                         rf"{re.escape(UIDS[0])} \(5 files, CT head\); {re.escape(UIDS[1])} "
                                         rf"\(5 files, CT scout\); pick one as {re.escape(str(two_series))}"
                                         r"::SERIES_UID$"):
        read_volume(two_series)


@pytest.mark.parametrize("index", [0, 1])
def test_a_series_is_picked_by_its_uid(two_series, index):
    read = read_volume(f"{two_series}::{UIDS[index]}")
    np.testing.assert_array_equal(read.array, _volume(index).array)


def test_an_unknown_series(two_series):
    with pytest.raises(InputError, match=rf"^{re.escape(str(two_series))}::1\.2\.3: folder holds no DICOM series "
                                         rf"1\.2\.3 \(it holds {re.escape(UIDS[0])} \(5 files, CT head\); "):
        read_volume(f"{two_series}::1.2.3")


def test_a_series_uid_after_a_file(tmp_path):
    image = tmp_path / "image.nii.gz"
    image.write_bytes(b"")
    with pytest.raises(InputError, match=r"image\.nii\.gz::1\.2: '::SERIES_UID' picks a series of a DICOM folder, "
                                         r"and .*image\.nii\.gz is not a folder$"):
        read_volume(f"{image}::1.2")
    with pytest.raises(InputError, match=r"nosuch::1\.2: file does not exist$"):
        read_volume(tmp_path / "nosuch::1.2")
