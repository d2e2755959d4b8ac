"""What each case of :mod:`hostile_cases` makes (its inputs and command line) and checks.

A builder takes the case's work folder, writes the inputs there (the tiny phantom case of
:mod:`hostile_files`, spoilt one way) and returns the arguments after ``crossmodalmas``. A
check takes the same folder after the run and returns whether what is left is right. Runs
that must work use the fastest settings (:data:`FAST`: instance optimisation, 2 iterations,
majority vote, CPU): these cases test the handling of the input, not the accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import hostile_files as hf
from crossmodalmas.atomic import PARTIAL_PREFIX
from crossmodalmas.result_io import load_result
from crossmodalmas.validate import MAX_LABELS
from crossmodalmas.volume import LPS_TO_RAS, read_labels, read_volume, to_sitk, write_volume

WORK = "<WORK>"  # stands for the work folder in a case's message pattern
FAST = ["--model", "instance-opt", "--refine", "2", "--fusion", "mv", "--device", "cpu"]
SERIES = ("1.2.826.0.1.3680043.2.1125.7.2", "1.2.826.0.1.3680043.2.1125.7.3")  # SeriesInstanceUIDs
_HASH_FILE, _INPUTS_FILE = "inputs-before.sha256", "inputs.json"
# The child's fault: SIGTERM arrives while the output is being written (the signal handler
# only sets the flag the command polls, so the write finishes, then must be undone).
SIGTERM_WHILE_WRITING = """
import os, signal, SimpleITK
_write_image = SimpleITK.WriteImage
def _write_image_under_sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return _write_image(*args, **kwargs)
SimpleITK.WriteImage = _write_image_under_sigterm
"""


def segment(files: hf.TinyFiles, output: Path, *extra) -> list[str]:
    """``segment`` of the tiny case into ``output`` with :data:`FAST` settings and ``extra``."""
    return ["segment", "--target", str(files.target), *files.atlas_args(), "--output", str(output), *FAST,
            *map(str, extra)]


def remember_inputs(workdir: Path, paths: list[Path]) -> None:
    """Note ``paths`` and their hash, for :func:`inputs_unchanged`."""
    (workdir / _INPUTS_FILE).write_text(json.dumps([str(p) for p in paths]), encoding="utf-8")
    (workdir / _HASH_FILE).write_text(hf.sha256_files(paths))


def output_path(workdir: Path) -> Path:
    """Where the cases write their segmentation (in ``out/``, which :func:`no_output` checks)."""
    return workdir / "out" / "seg.nii.gz"


# --- checks --------------------------------------------------------------------------------

def no_output(workdir: Path) -> bool:
    """Nothing written: no segmentation and no file at all under ``out/``, no ``.partial-*``
    file anywhere."""
    out = workdir / "out"
    left = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    partial = [p for p in workdir.rglob(PARTIAL_PREFIX + "*")]
    return not left and not partial


def inputs_unchanged(workdir: Path) -> bool:
    """The inputs the builder remembered hash as before, and nothing was written."""
    paths = json.loads((workdir / _INPUTS_FILE).read_text(encoding="utf-8"))
    return hf.sha256_files(paths) == (workdir / _HASH_FILE).read_text(encoding="utf-8") and no_output(workdir)


def output_and_report_readable(workdir: Path) -> bool:
    """The segmentation and the report named in ``outputs.json`` read back, the segmentation
    with a foreground label."""
    segmentation, report = json.loads((workdir / "outputs.json").read_text(encoding="utf-8"))
    json.loads(Path(report).read_text(encoding="utf-8"))
    return bool(np.any(read_labels(segmentation).array)) and no_partials(workdir)


def no_partials(workdir: Path) -> bool:
    """No ``.partial-*`` temporary file anywhere under ``workdir``."""
    return not list(workdir.rglob(PARTIAL_PREFIX + "*"))


def output_on_target_grid(workdir: Path) -> bool:
    """The segmentation is on the exact grid of the target the run read (``target.txt``)."""
    target = read_volume((workdir / "target.txt").read_text(encoding="utf-8"))
    labels = read_labels(output_path(workdir))
    return labels.grid.same_as(target.grid, tol_mm=1e-4) and bool(np.any(labels.array)) and no_partials(workdir)


def only_complete_outputs(workdir: Path) -> bool:
    """Every file left by the concurrent runs reads back whole, and no temporary file is left."""
    out = workdir / "out"
    read_labels(out / "seg.nii.gz")
    json.loads((out / "report.json").read_text(encoding="utf-8"))
    for path in (out / "previews").glob("*.nii.gz"):
        read_volume(path)
    load_result(out / "previews")
    return no_partials(workdir)


def never_started(workdir: Path) -> bool:
    """Refused before the long work: no PROGRESS line on stdout, nothing written."""
    return "PROGRESS" not in (workdir / "stdout-0.txt").read_text(encoding="utf-8") and no_output(workdir)


def bundled_models_intact(workdir: Path) -> bool:
    """The bundled weights still verify, and no segmentation was written."""
    return hf.bundled_models_intact() and no_output(workdir)


def verify_reports_the_tampering(workdir: Path) -> bool:
    """``models verify`` printed a FAILED line for the sha256 mismatch; the bundled weights verify."""
    out = (workdir / "stdout-0.txt").read_text(encoding="utf-8")
    return "FAILED model '" in out and "sha256 mismatch" in out and hf.bundled_models_intact()


# --- damaged or foreign files --------------------------------------------------------------

def truncated_target(workdir: Path) -> list[str]:
    files = hf.write_tiny_case(workdir)
    hf.truncate(files.target)
    return segment(files, output_path(workdir))


def truncated_atlas_labels(workdir: Path) -> list[str]:
    files = hf.write_tiny_case(workdir)
    hf.truncate(files.atlases[0][1])
    return segment(files, output_path(workdir))


def truncated_target_mha(workdir: Path) -> list[str]:
    files = hf.write_tiny_case(workdir)
    files.target = workdir / "target.mha"
    write_volume(hf.case_volumes()[0], files.target)
    hf.truncate(files.target)
    return segment(files, output_path(workdir))


def not_an_image(workdir: Path) -> list[str]:
    files = hf.write_tiny_case(workdir)
    files.target.write_bytes(np.random.default_rng(0).bytes(4000))
    return segment(files, output_path(workdir))


def _spoilt_target(workdir: Path, name: str) -> tuple[hf.TinyFiles, Path]:
    """The tiny case whose target will be ``workdir / name`` (the builder writes it)."""
    files = hf.write_tiny_case(workdir)
    files.target = workdir / name
    return files, files.target


# --- geometry ------------------------------------------------------------------------------

def zero_size_dimension(workdir: Path) -> list[str]:
    files, path = _spoilt_target(workdir, "empty.mha")
    hf.write_mha(path, np.zeros((0, 40, 40), np.float32), ElementSpacing="2.5 2.5 2.5")
    return segment(files, output_path(workdir))


def one_voxel_thick(workdir: Path) -> list[str]:
    files, path = _spoilt_target(workdir, "slice.nii.gz")
    target = hf.case_volumes()[0]
    hf.write_image(path, target.array[:1], target)
    return segment(files, output_path(workdir))


def zero_spacing_nifti(workdir: Path) -> list[str]:
    files, path = _spoilt_target(workdir, "flat.nii.gz")
    hf.write_nifti_edited(path, hf.case_volumes()[0], qform_code=0, sform_code=0,
                          pixdim=(1.0, 2.5, 0.0, 2.5, 1.0, 0.0, 0.0, 0.0))
    return segment(files, output_path(workdir))


def zero_spacing_nrrd(workdir: Path) -> list[str]:
    files, path = _spoilt_target(workdir, "flat.nrrd")
    hf.write_nrrd(path, hf.case_volumes()[0].array, spacings="2.5 0 2.5")
    return segment(files, output_path(workdir))


def negative_spacing(workdir: Path) -> list[str]:
    """The target with axis i stored mirrored (negative spacing, data reversed): the same
    anatomy at the same place, which must segment as any other target."""
    files, path = _spoilt_target(workdir, "mirrored.mha")
    target = hf.case_volumes()[0]
    ijk_to_lps = LPS_TO_RAS @ target.ijk_to_ras
    last = ijk_to_lps[:3, :3] @ np.array([target.array.shape[2] - 1, 0, 0]) + ijk_to_lps[:3, 3]
    direction = ijk_to_lps[:3, :3] / target.grid.spacing
    hf.write_mha(path, target.array[:, :, ::-1], ElementSpacing="-2.5 2.5 2.5",
                 Offset=" ".join(f"{v:.6f}" for v in last),
                 TransformMatrix=" ".join(f"{v:g}" for v in direction.T.ravel()))
    (workdir / "target.txt").write_text(str(path), encoding="utf-8")
    return segment(files, output_path(workdir))


def absurd_spacing(workdir: Path) -> list[str]:
    files, path = _spoilt_target(workdir, "huge.mha")
    hf.write_mha(path, hf.case_volumes()[0].array, ElementSpacing="1000000 2.5 2.5")
    return segment(files, output_path(workdir))


def sheared_nrrd(workdir: Path) -> list[str]:
    files, path = _spoilt_target(workdir, "sheared.nrrd")
    target = hf.case_volumes()[0]
    image = to_sitk(target.array, target.ijk_to_ras)
    image.SetDirection((1.0, 0.4, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path))
    return segment(files, output_path(workdir))


def sheared_nifti_sform(workdir: Path) -> list[str]:
    files, path = _spoilt_target(workdir, "sheared.nii.gz")
    target = hf.case_volumes()[0]
    rows = target.ijk_to_ras[:3].copy()
    rows[0, 1] += 1.0  # a shear; the sform alone gives the geometry (qform_code 0)
    hf.write_nifti_edited(path, target, qform_code=0, sform_code=1, srow_x=rows[0], srow_y=rows[1], srow_z=rows[2])
    return segment(files, output_path(workdir))


# --- label maps ----------------------------------------------------------------------------

def _relabelled(workdir: Path, relabel, dtype, both: bool = False) -> list[str]:
    """The tiny case with atlas mr6's labels (or both atlases', ``both``) replaced by
    ``relabel(labels)``, written as ``dtype``."""
    files = hf.write_tiny_case(workdir)
    for (_, image, labels), (_, path) in list(zip(hf.case_volumes()[1], files.atlases))[: 2 if both else 1]:
        hf.write_image(path, relabel(labels).astype(dtype), image)
    return segment(files, output_path(workdir))


def negative_labels(workdir: Path) -> list[str]:
    return _relabelled(workdir, lambda labels: np.where(labels.array == 205, -1, labels.array), np.int16)


def labels_above_int32(workdir: Path) -> list[str]:
    # uint32 before the id goes in: numpy 2.5 refuses a Python int out of the int32 map's range.
    return _relabelled(workdir, lambda labels: np.where(labels.array == 500, np.uint32(3_000_000_000),
                                                        labels.array.astype(np.uint32)), np.uint32)


def thousand_labels(workdir: Path) -> list[str]:
    return _relabelled(workdir, lambda labels: hf.parcellate(labels, 1000), np.int16, both=True)


def too_many_labels(workdir: Path) -> list[str]:
    return _relabelled(workdir, lambda labels: hf.parcellate(labels, MAX_LABELS + 1, everywhere=True), np.int16)


def labels_from_the_atlases(workdir: Path) -> bool:
    """The segmentation holds only label values of the atlases, and more than one."""
    found = set(np.unique(read_labels(output_path(workdir)).array).tolist()) - {0}
    given = set().union(*(np.unique(read_labels(labels).array).tolist() for labels in
                          (workdir / "atlases").glob("*_seg.nii.gz")))
    return len(found) > 1 and found <= given and no_partials(workdir)


# --- DICOM folders ---------------------------------------------------------------------------

def _dicom_case(workdir: Path, target: str) -> list[str]:
    """The tiny case with two DICOM series of its target in ``dicom/``; ``target`` is the
    --target argument, ``<DICOM>`` standing for that folder."""
    files = hf.write_tiny_case(workdir)
    volume = hf.case_volumes()[0]
    for uid, description in zip(SERIES, ("CT phantom", "CT phantom copy")):
        hf.write_dicom_series(workdir / "dicom", volume, uid, description)
    files.target = Path(target.replace("<DICOM>", str(workdir / "dicom")))
    (workdir / "target.txt").write_text(str(files.target), encoding="utf-8")
    return segment(files, output_path(workdir))


def dicom_several_series(workdir: Path) -> list[str]:
    return _dicom_case(workdir, "<DICOM>")


def dicom_series_picked(workdir: Path) -> list[str]:
    return _dicom_case(workdir, f"<DICOM>::{SERIES[0]}")


def dicom_unknown_series(workdir: Path) -> list[str]:
    return _dicom_case(workdir, "<DICOM>::1.2.3.4")
