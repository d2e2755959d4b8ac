"""A :class:`~crossmodalmas.result.Result` on disk, whole: what the Slicer module loads after the
background ``segment`` process ends, to show the previews and to fuse again in-process.

Two files in a folder: ``result.npz`` (the arrays, uncompressed: fast to write and read, and
the previews are written as NIfTI beside them anyway) and ``result.json`` (grids, names, QC,
timings, warnings). Both are written atomically; numpy reads the arrays with
``allow_pickle=False``, so a result file can never run code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from crossmodalmas import __version__
from crossmodalmas.atomic import atomic_path, write_json
from crossmodalmas.errors import InputError
from crossmodalmas.options import FusionMethod
from crossmodalmas.result import AtlasQC, Result
from crossmodalmas.volume import Grid, LabelMap

ARRAYS_FILE, META_FILE = "result.npz", "result.json"
RESULT_ARRAYS = ("label_values", "target_image", "warped_images", "warped_classes", "weights", "uncertainty")
OPTIONAL_ARRAYS = ("similarity", "unknown")  # saved where the result has them


def _grid(grid: Grid) -> dict:
    return {"shape_kji": list(grid.shape), "ijk_to_ras": grid.ijk_to_ras.tolist()}


def _finite_or_none(value):
    """JSON has no NaN: a QC figure not computed is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def save_result(result: Result, folder: Path) -> list[Path]:
    """Write ``result`` into ``folder`` (created if needed); returns the two paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(result, name) for name in RESULT_ARRAYS}
    arrays["labels"] = result.labels.array
    for name in OPTIONAL_ARRAYS:
        if getattr(result, name) is not None:
            arrays[name] = getattr(result, name)
    with atomic_path(folder / ARRAYS_FILE, ".npz") as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, **arrays)
    meta = {
        "format": "crossmodalmas-result", "version": __version__,
        "working_grid": _grid(result.working_grid), "target_grid": _grid(result.labels.grid),
        "atlas_names": list(result.atlas_names), "fusion": result.fusion.value, "device": result.device,
        "registration": result.registration, "similarity_model": result.similarity_model,
        "qc": [{k: _finite_or_none(v) for k, v in asdict(q).items()} for q in result.qc],
        "timings": result.timings, "warnings": list(result.warnings),
    }
    write_json(meta, folder / META_FILE)
    return [folder / ARRAYS_FILE, folder / META_FILE]


def _read_meta(folder: Path) -> dict:
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: holds no saved result ({META_FILE} is missing)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot be read as JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != "crossmodalmas-result":
        raise InputError(f"{path}: is not a crossmodalmas result (no 'format': 'crossmodalmas-result')")
    return meta


def _read_arrays(folder: Path) -> dict:
    path = folder / ARRAYS_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise InputError(f"{folder}: holds no saved result ({ARRAYS_FILE} is missing)") from None
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: cannot be read as a numpy archive: {error}") from error


def load_result(folder: Path) -> Result:
    """Read a result that :func:`save_result` wrote.

    Raises:
        InputError: the folder holds no result, or its files are damaged or inconsistent.
    """
    folder = Path(folder)
    meta, arrays = _read_meta(folder), _read_arrays(folder)
    try:
        grid = Grid(tuple(meta["working_grid"]["shape_kji"]), np.array(meta["working_grid"]["ijk_to_ras"]))
        target = np.array(meta["target_grid"]["ijk_to_ras"])
        qc = [AtlasQC(**{k: (math.nan if v is None else v) for k, v in item.items()}) for item in meta["qc"]]
        result = Result(
            labels=LabelMap(arrays["labels"], target), working_grid=grid,
            atlas_names=list(meta["atlas_names"]), qc=qc, fusion=FusionMethod(meta["fusion"]),
            device=meta["device"], registration=meta["registration"],
            similarity=arrays.get("similarity"), unknown=arrays.get("unknown"),
            similarity_model=meta["similarity_model"],
            timings=dict(meta["timings"]), warnings=list(meta["warnings"]),
            **{name: arrays[name] for name in RESULT_ARRAYS})
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{folder}: the saved result is incomplete or damaged ({type(error).__name__}: "
                         f"{error})") from error
    count = len(result.atlas_names)
    for name in ("warped_images", "warped_classes", "weights"):
        if getattr(result, name).shape != (count, *grid.shape):
            raise InputError(f"{folder}: '{name}' has shape {getattr(result, name).shape}, expected "
                             f"{(count, *grid.shape)} ({count} atlases on the working grid)")
    return result
