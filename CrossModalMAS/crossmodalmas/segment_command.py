"""``crossmodalmas segment``: files in, segmentation (and optional previews, report) out."""

from __future__ import annotations

import os
import time
from pathlib import Path

from crossmodalmas import atlases as atlas_io
from crossmodalmas.atomic import write_json
from crossmodalmas.errors import CancelledError, InputError
from crossmodalmas.options import SegmentOptions
from crossmodalmas.pipeline import segment
from crossmodalmas.result import Result
from crossmodalmas.result_io import save_result
from crossmodalmas.volume import read_volume, write_labels, write_volume


def _atlas_files(args) -> list[atlas_io.AtlasFiles]:
    files = [atlas_io.AtlasFiles(Path(image), Path(labels)) for image, labels in args.atlas]
    if args.atlases:
        files += atlas_io.from_csv(args.atlases)
    if args.atlas_dir:
        files += atlas_io.from_folder(args.atlas_dir)
    if not files:
        raise InputError("--atlas/--atlases/--atlas-dir: no atlas given (at least one is needed)")
    return files


def _check_output(output: Path, inputs: list[Path], flag: str = "--output") -> None:
    """Refuse to overwrite an input; create the output folder if needed."""
    resolved = output.resolve()
    for path in inputs:
        if path.exists() and path.resolve() == resolved:
            raise InputError(f"{flag} {output}: is also an input; refusing to overwrite it")
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{flag} {output}: cannot create its folder ({error.strerror})") from error
    if not os.access(resolved.parent, os.W_OK):
        raise InputError(f"{flag} {output}: folder {resolved.parent} is not writable")


def options_from_args(args) -> SegmentOptions:
    return SegmentOptions(model=args.model, fusion=args.fusion, select=args.select,
                          roi_ras=tuple(args.roi) if args.roi else None, device=args.device,
                          refine_iterations=args.refine, similarity_model=args.similarity_model)


def _write_previews(result: Result, folder: Path, written: list[Path], cancel) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(result.atlas_names):
        for kind, write, value in (("image", write_volume, result.warped_atlas(index)),
                                   ("labels", write_labels, result.warped_atlas_labels(index)),
                                   ("weights", write_volume, result.weight_map(index))):
            if cancel():
                raise CancelledError("cancelled while writing previews")
            path = folder / f"{name}_warped_{kind}.nii.gz"
            write(value, path)
            written.append(path)
    path = folder / "uncertainty.nii.gz"
    write_volume(result.uncertainty_map(), path)
    written.append(path)
    written.extend(save_result(result, folder))  # what re-fusion (Slicer's Re-fuse) reads back


def _write_outputs(args, result: Result, report: dict, cancel) -> None:
    """Write everything or nothing: on failure or cancel, remove what this run wrote."""
    written: list[Path] = []
    try:
        write_labels(result.labels, args.output)
        written.append(args.output)
        if args.save_warped:
            _write_previews(result, args.save_warped, written, cancel)
        if args.report:
            write_json(report, args.report)
            written.append(args.report)
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
    _check_output(args.output, inputs)
    if args.report:
        _check_output(args.report, inputs, "--report")
    target = read_volume(args.target)
    atlases = [atlas_io.load(f) for f in files]
    result = segment(target, atlases, options, progress=progress, cancel=cancel)
    report = result.report()
    report["target"] = str(args.target)
    report["total_s"] = round(time.perf_counter() - started, 3)
    _write_outputs(args, result, report, cancel)
    return 0
