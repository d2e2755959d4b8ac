"""``crossmodalmas segment``: files in, segmentation (and optional previews, report) out."""

from __future__ import annotations

import errno
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from crossmodalmas import atlases as atlas_io
from crossmodalmas.atomic import PARTIAL_PREFIX, write_json
from crossmodalmas.errors import CancelledError, InputError
from crossmodalmas.options import SegmentOptions
from crossmodalmas.result import Result
from crossmodalmas.result_io import ARRAYS_FILE, META_FILE, save_result
from crossmodalmas.volume import LabelMap, read_volume, write_labels, write_volume

PREVIEW_KINDS = ("image", "labels", "weights")  # --save-warped writes ATLAS_warped_KIND.nii.gz of each
UNCERTAINTY_FILE = "uncertainty.nii.gz"
UNKNOWN_FILE = "unknown.nii.gz"  # 1 where no atlas covers the target (written only then)


def _atlas_files(args) -> list[atlas_io.AtlasFiles]:
    files = [atlas_io.AtlasFiles(Path(image), Path(labels)) for image, labels in args.atlas]
    if args.atlases:
        files += atlas_io.from_csv(args.atlases)
    if args.atlas_dir:
        files += atlas_io.from_folder(args.atlas_dir)
    if not files:
        raise InputError("--atlas/--atlases/--atlas-dir: no atlas given (at least one is needed)")
    return files


def _is_input(path: Path, inputs: list[Path]) -> bool:
    """Whether ``path`` is one of ``inputs``: the same resolved path, or the same file under
    another name (a hard link)."""
    resolved = path.resolve()
    for other in inputs:
        if other.exists() and (other.resolve() == resolved or (path.exists() and os.path.samefile(path, other))):
            return True
    return False


def check_folder(folder: Path, flag: str, named: Path, create: bool = True) -> None:
    """Make sure files can be created in ``folder``: create it (``create``), or else find the
    nearest folder that exists on its way, and try a file there (a real probe: ``os.access``
    says yes to root on a read-only mount, and to root everywhere).

    Raises:
        InputError: ``'{flag} {named}: folder F is not writable (...)'`` or ``cannot create its folder``.
    """
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file")
    except OSError as error:
        raise InputError(f"{flag} {named}: cannot create its folder {folder} ({error.strerror})") from error
    try:
        handle, probe = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=existing)
    except OSError as error:
        raise InputError(f"{flag} {named}: folder {existing} is not writable ({error.strerror})") from error
    os.close(handle)
    os.remove(probe)


def check_output(output: Path, inputs: list[Path], flag: str = "--output") -> None:
    """Refuse to overwrite an input (by path or hard link); create the output folder if needed
    and check that it is writable: all before the long work.

    Raises:
        InputError: naming ``flag`` and ``output``.
    """
    if _is_input(output, inputs):
        raise InputError(f"{flag} {output}: is also an input; refusing to overwrite it")
    check_folder(output.resolve().parent, flag, output)


def _preview_path(folder: Path, atlas: str, kind: str) -> Path:
    return folder / f"{atlas}_warped_{kind}.nii.gz"


def _check_previews(folder: Path, files: list[atlas_io.AtlasFiles], inputs: list[Path]) -> None:
    """``--save-warped``: a writable folder where no preview would overwrite an input."""
    check_folder(folder.resolve(), "--save-warped", folder, create=False)  # made when the previews are written
    names = [_preview_path(folder, f.name, kind) for f in files for kind in PREVIEW_KINDS]
    for path in names + [folder / UNCERTAINTY_FILE, folder / UNKNOWN_FILE, folder / ARRAYS_FILE, folder / META_FILE]:
        if _is_input(path, inputs):
            raise InputError(f"--save-warped {folder}: would overwrite the input {path}")


def options_from_args(args) -> SegmentOptions:
    return SegmentOptions(model=args.model, fusion=args.fusion, select=args.select,
                          roi_ras=tuple(args.roi) if args.roi else None, device=args.device,
                          refine_iterations=args.refine, similarity_model=args.similarity_model)


def run_report(result: Result, target: Path, started: float) -> dict:
    """What ``--report`` writes: the result's report plus the target's path and the total
    seconds since ``started`` (a ``time.perf_counter()`` value)."""
    report = result.report()
    report["target"] = str(target)
    report["total_s"] = round(time.perf_counter() - started, 3)
    return report


def _write_previews(result: Result, folder: Path, written: list[Path], cancel) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(result.atlas_names):
        for kind, write, value in zip(PREVIEW_KINDS, (write_volume, write_labels, write_volume),
                                      (result.warped_atlas(index), result.warped_atlas_labels(index),
                                       result.weight_map(index))):
            _stop_if_cancelled(cancel)
            path = _preview_path(folder, name, kind)
            write(value, path)
            written.append(path)
    path = folder / UNCERTAINTY_FILE
    write_volume(result.uncertainty_map(), path)
    written.append(path)
    if result.unknown is not None:  # the target voxels no atlas covers (crossmodalmas.coverage)
        path = folder / UNKNOWN_FILE
        write_labels(LabelMap(result.unknown.astype(np.uint8), result.labels.ijk_to_ras), path)
        written.append(path)
    written.extend(save_result(result, folder))  # what re-fusion (Slicer's Re-fuse) reads back


def _stop_if_cancelled(cancel) -> None:
    if cancel():
        raise CancelledError("cancelled while writing the outputs")


def _write_outputs(args, result: Result, report: dict, cancel) -> None:
    """Write everything or nothing: on failure or cancel, remove what this run wrote."""
    written: list[Path] = []
    try:
        write_labels(result.labels, args.output)
        written.append(args.output)
        if args.save_warped:
            _write_previews(result, args.save_warped, written, cancel)
        if args.report:
            _stop_if_cancelled(cancel)
            write_json(report, args.report)
            written.append(args.report)
        _stop_if_cancelled(cancel)  # a signal during the last write: still nothing left behind
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def run_segment(args, progress, cancel) -> int:
    """Run the ``segment`` command; returns the exit code (errors propagate as exceptions)."""
    started = time.perf_counter()
    files = _atlas_files(args)
    options = options_from_args(args)
    inputs = [args.target] + [p for f in files for p in (f.image, f.labels)]
    check_output(args.output, inputs)
    if args.report:
        check_output(args.report, inputs, "--report")
    if args.save_warped:
        _check_previews(args.save_warped, files, inputs)
    target = read_volume(args.target)
    from crossmodalmas.pipeline import segment  # torch (seconds to import): only once the target is read

    # The atlases go as file paths: the pipeline reads each when it needs it and frees it after,
    # so ten full-resolution CT atlases are never in memory at once.
    result = segment(target, files, options, progress=progress, cancel=cancel)
    report = run_report(result, args.target, started)
    _write_outputs(args, result, report, cancel)
    return 0
