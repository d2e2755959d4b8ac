"""The one entry point the Slicer module and the command line both call: :func:`segment`.

validate -> affine pre-alignment -> working region -> resample and normalise -> atlas
selection -> deformable registration -> label fusion -> back to the target's own grid.
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from crossmodalmas import atlases as atlas_io
from crossmodalmas.atlases import Atlas, AtlasFiles
from crossmodalmas.coverage import CoverageCounter, mask_unknown, unknown_warning
from crossmodalmas.devices import available_memory, cpu_fallback, resolve_device, usable_cores
from crossmodalmas.errors import CancelledError, InputError
from crossmodalmas.features import mind_ssc
from crossmodalmas.options import FusionMethod, SegmentOptions
from crossmodalmas.progress import ProgressCallback
from crossmodalmas.affine import AffineAligner
from crossmodalmas.atlas_warping import AtlasesOnGrid, WarpedAtlases, deform_atlases
from crossmodalmas.preprocess import (label_box_in_target, resample,
                                      robust_normalise, working_grid)
from crossmodalmas.refusion import class_dtype, fused_fields
from crossmodalmas.registration_engine import load_registration_model
from crossmodalmas.result import Result
from crossmodalmas.similarity_engine import SimilarityModel, load_similarity_model
from crossmodalmas.selection import select_atlases, selection_scores
from crossmodalmas.validate import MAX_CLASS_VOXELS, check_label_count, check_labels, check_volume
from crossmodalmas.volume import Grid, Volume

CancelCallback = Callable[[], bool]

# Fraction of the progress bar at which each step starts (the last entry is the end).
_STEPS = {"validate": 0.0, "affine": 0.02, "region": 0.25, "select": 0.3, "register": 0.33,
          "fuse": 0.88, "output": 0.95, "done": 1.0}


class _Run:
    """Progress, cancellation, timings and warnings of one run."""

    def __init__(self, progress: Optional[ProgressCallback], cancel: Optional[CancelCallback]):
        self._progress, self._cancel = progress, cancel
        self.timings: dict[str, float] = {}
        self.warnings: list[str] = []
        self._step, self._started = None, 0.0

    def step(self, name: str, message: str) -> None:
        self.check_cancel()
        self._close_step()
        self._step, self._started = name, time.perf_counter()
        self.report(0.0, message)

    def report(self, fraction: float, message: str) -> None:
        if self._progress is None or self._step is None:
            return
        names = list(_STEPS)
        start, end = _STEPS[self._step], _STEPS[names[names.index(self._step) + 1]]
        self._progress(round(start + (end - start) * min(max(fraction, 0.0), 1.0), 6), message)

    def check_cancel(self) -> None:
        if self._cancel is not None and self._cancel():
            raise CancelledError("segmentation cancelled")

    def cancelled(self) -> bool:
        return self._cancel is not None and bool(self._cancel())

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        warnings.warn(message, stacklevel=3)

    def _close_step(self) -> None:
        if self._step is not None:
            self.timings[self._step] = time.perf_counter() - self._started

    def finish(self) -> None:
        self._close_step()
        self._step = None
        if self._progress is not None:
            self._progress(1.0, "done")


@dataclass
class _Aligned:
    """What the pipeline keeps of an atlas between its two reads: a file-backed atlas's
    full-resolution arrays are read, used and freed twice rather than held for the whole run."""

    source: Union[Atlas, AtlasFiles]
    name: str
    transform: object  # SimpleITK transform, target LPS -> atlas LPS
    labels: set
    box: Optional[np.ndarray]  # RAS box of its labels in target space


def _checked(source: Union[Atlas, AtlasFiles]) -> Atlas:
    """The atlas (read from disk where ``source`` is file paths), its inputs checked."""
    atlas = atlas_io.load(source) if isinstance(source, AtlasFiles) else source
    check_volume(atlas.image, f"atlas {atlas.name} image")
    labels = check_labels(atlas.labels, atlas.image, f"atlas {atlas.name} labels")
    return Atlas(atlas.name, atlas.image, labels)


def _label_table(aligned: Sequence[_Aligned], run: _Run) -> np.ndarray:
    sets = [a.labels for a in aligned]
    union = sorted(set().union(*sets))
    check_label_count(len(union), "atlases")
    if any(s != set(union) for s in sets):
        shown = union if len(union) <= 30 else f"of {len(union)} labels"
        run.warn(f"atlases have different label sets; fusing the union {shown}")
    return np.array([0] + union, dtype=np.int64)


# Atlases are aligned side by side, up to this many at once. SimpleITK lets go of Python's lock
# in its registrations and filters, and each registration runs one ITK thread (reproducible
# transforms, see affine._OneITKThread), so one atlas at a time kept all cores but one idle.
# The bound: each atlas in work holds its full-resolution arrays and a few copies of them.
MAX_ALIGN_WORKERS = 4
# Memory an atlas in work takes, per voxel of its image: its arrays read from file (float32
# image, int32 labels) and the affine step's transient (0.82 GB for a 512 x 400 x 300 atlas,
# 13 bytes a voxel, measured); an atlas given in memory holds its arrays already. Atlases in
# work may take up to _ALIGN_MEMORY_SHARE of the memory free when the step starts.
_ALIGN_BYTES_PER_VOXEL = {"file": 24, "memory": 14}
_ALIGN_MEMORY_SHARE = 0.5
_CANCEL_POLL_S = 0.5  # how often cancel is polled while an atlas is being aligned


def _align_one(aligner: AffineAligner, covered: CoverageCounter, source: Union[Atlas, AtlasFiles],
               seed: int) -> tuple[_Aligned, np.ndarray]:
    """One atlas checked and affinely aligned (a file-backed atlas's arrays freed on return),
    with its coverage :meth:`~CoverageCounter.footprint`."""
    atlas = _checked(source)
    transform = aligner.align(atlas.image, seed, atlas.labels)
    aligned = _Aligned(source, atlas.name, transform, set(atlas.labels.labels.tolist()),
                       label_box_in_target(atlas.labels, transform))
    return aligned, covered.footprint(atlas.labels, transform)


def _align_all(target: Volume, sources: Sequence[Union[Atlas, AtlasFiles]], seed: int, run: _Run):
    """Check and affinely align each atlas (see :class:`_Aligned`), up to
    :data:`MAX_ALIGN_WORKERS` side by side; and the target voxels no atlas's field of view
    covers. Each atlas's transform is what it would be alone: the atlases share only the
    target's part, made once."""
    cores = usable_cores()
    workers = _align_workers(sources, cores)
    # the cores left over (few atlases) go to each atlas's own Mattes fits
    aligner, covered = AffineAligner(target, fit_workers=cores // workers), CoverageCounter(target.grid)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="crossmodalmas-affine")
    try:
        jobs = [pool.submit(_align_one, aligner, covered, source, seed) for source in sources]
        aligned = []
        for index, (source, job) in enumerate(zip(sources, jobs)):
            run.report(index / len(sources), f"affine alignment of atlas {source.name}")
            item, footprint = _awaited(job, run)
            aligned.append(item)
            covered.add(footprint)
    finally:
        pool.shutdown(cancel_futures=True)  # on an error or cancel: the atlases not begun are dropped
    return aligned, covered.unknown()


def _align_workers(sources: Sequence[Union[Atlas, AtlasFiles]], cores: int) -> int:
    """How many atlases are aligned at once: up to :data:`MAX_ALIGN_WORKERS`, one per core,
    and as many of the biggest as fit in their share of the free memory (on a 16-core machine
    with 6 GB free, 0.7 mm CT atlases of 512 x 400 x 300 on disk go two at a time, not four)."""
    workers = max(1, min(MAX_ALIGN_WORKERS, cores, len(sources)))
    free = available_memory()
    sizes = [atlas_io.voxel_count(source) for source in sources]
    known = [size * _ALIGN_BYTES_PER_VOXEL["memory" if isinstance(source, Atlas) else "file"]
             for size, source in zip(sizes, sources) if size is not None]
    if free is None or not known:
        return workers
    return max(1, min(workers, int(free * _ALIGN_MEMORY_SHARE // max(known))))


def _awaited(job: Future, run: _Run):
    """``job``'s result (its exception raised here), cancel polled while it runs."""
    while True:
        run.check_cancel()
        try:
            return job.result(timeout=_CANCEL_POLL_S)
        except FutureTimeout:
            continue


def _region(target: Volume, aligned: Sequence[_Aligned], options: SegmentOptions, classes: int, run: _Run) -> Grid:
    """The working grid: the user's ROI, else the union box of the aligned atlas labels + margin;
    coarser where ``classes`` maps of it (the fusion's) would exceed ``MAX_CLASS_VOXELS``."""
    if options.roi_ras is not None:
        roi = np.asarray(options.roi_ras, dtype=float).reshape(2, 3)
        box = np.stack([roi.min(0), roi.max(0)])
    else:
        boxes = [a.box for a in aligned if a.box is not None]
        box = np.stack([np.min([b[0] for b in boxes], 0) - options.margin_mm,
                        np.max([b[1] for b in boxes], 0) + options.margin_mm])
    try:
        grid = working_grid(target.grid, box, options.working_spacing_mm, options.max_working_voxels)
        fits = MAX_CLASS_VOXELS // classes
        if options.working_spacing_mm is None and int(np.prod(grid.shape)) > fits:
            run.warn(f"{classes - 1} labels: working grid coarsened to at most {fits} voxels "
                     "(the fusion holds one map per label)")
            grid = working_grid(target.grid, box, None, fits)
    except ValueError as error:
        source = "--roi" if options.roi_ras is not None else "atlases"
        raise InputError(f"{source}: the region {np.round(box, 1).tolist()} mm (RAS) lies outside the target") from error
    return grid


def _on_grid(target, aligned: Sequence[_Aligned], grid: Grid, table: np.ndarray,
             run: _Run) -> tuple[np.ndarray, AtlasesOnGrid]:
    """The normalised target, and the atlases' normalised images, class indices (of the
    smallest type that holds them) and fields of view, on the working grid."""
    target_w = robust_normalise(resample(target.array, target.ijk_to_ras, grid))
    # Filled in place (not stacked from lists: that held every atlas twice at its end).
    shape = (len(aligned), *grid.shape)
    kept, images = [], np.empty(shape, np.float32)
    classes, inside = np.empty(shape, class_dtype(len(table))), np.empty(shape, bool)
    for item in aligned:
        run.check_cancel()
        atlas, transform = _checked(item.source), item.transform
        # -1 outside the atlas's field of view: its coverage, without a full-size array of ones
        labels = resample(atlas.labels.array, atlas.labels.ijk_to_ras, grid, transform, labels=True, default=-1)
        if not np.any(labels > 0):
            run.warn(f"atlas {atlas.name}: no labelled voxel overlaps the target after alignment; dropped")
            continue
        index = len(kept)
        images[index] = resample(robust_normalise(atlas.image.array), atlas.image.ijk_to_ras, grid, transform)
        inside[index] = labels >= 0
        classes[index] = np.searchsorted(table, np.maximum(labels, 0))  # label value -> class index (table is sorted)
        kept.append(atlas.name)  # the name only: the arrays are freed with the atlas
    if not kept:
        raise InputError("atlases: none overlaps the target after alignment; check that they show the same anatomy")
    count = len(kept)
    return target_w, AtlasesOnGrid(kept, images[:count], classes[:count], inside[:count])


def fusion_method(options: SegmentOptions, device) -> tuple[FusionMethod, Optional[SimilarityModel]]:
    """The chosen fusion method (by default PLF where a similarity network is available, else
    NLWV) and, for PLF, the loaded similarity network: a missing or damaged one fails before the work.
    A batch calls it once up front, so a bad ``--similarity-model`` fails before any target."""
    if options.fusion is not None and options.fusion is not FusionMethod.PATCH_LABEL_FUSION:
        return options.fusion, None
    try:
        similarity = load_similarity_model(options.similarity_model, device)
    except InputError:
        if options.fusion is FusionMethod.PATCH_LABEL_FUSION or options.similarity_model is not None:
            raise
        return FusionMethod.NON_LOCAL_WEIGHTED_VOTE, None
    return FusionMethod.PATCH_LABEL_FUSION, similarity


def segment(target: Volume, atlases: Sequence[Union[Atlas, AtlasFiles]], options: Optional[SegmentOptions] = None,
            progress: Optional[ProgressCallback] = None,
            cancel: Optional[CancelCallback] = None) -> Result:
    """Segment ``target`` with labelled ``atlases`` (any modalities, any grids).

    Args:
        target: the image to segment.
        atlases: labelled atlases; each label map on its image's grid. Atlases given as
            :class:`~crossmodalmas.atlases.AtlasFiles` are read when needed and freed after
            (twice: for the alignment and for the working grid), so memory does not grow with
            their number and size.
        options: run options (defaults: :class:`SegmentOptions`).
        progress: called as ``progress(fraction, message)`` at least once per step and atlas.
        cancel: polled between steps and inside the optimisation; True stops the run.

    Returns:
        :class:`Result` with the labels on the target's exact grid.

    Raises:
        InputError: an input is unusable (the message names it).
        CancelledError: ``cancel()`` returned True; nothing was written.
    """
    options = options or SegmentOptions()
    run = _Run(progress, cancel)
    run.step("validate", "checking inputs")
    device = resolve_device(options.device)
    fusion, similarity = fusion_method(options, device)
    options = replace(options, fusion=fusion)
    check_volume(target, "target")
    if not atlases:
        raise InputError("atlases: no atlas given (at least one labelled atlas is needed)")
    model = load_registration_model(options.model, device)
    run.step("affine", "affine alignment")
    aligned, unknown = _align_all(target, atlases, options.seed, run)
    if unknown.any():
        run.warn(unknown_warning(unknown))
    table = _label_table(aligned, run)
    run.step("region", "working region")
    grid = _region(target, aligned, options, len(table), run)
    target_w, on_grid = _on_grid(target, aligned, grid, table, run)
    run.step("select", "atlas selection")
    scores = selection_scores(target_w, on_grid.images)
    order = select_atlases(scores, options.select)
    if not np.array_equal(order, np.arange(len(on_grid.names))):  # a subset or another order: copies
        on_grid = AtlasesOnGrid([on_grid.names[i] for i in order], on_grid.images[order], on_grid.classes[order],
                                on_grid.inside[order])
    warped = _deform(target_w, grid, len(table), on_grid, options, device, model, run)
    del on_grid  # the atlases as aligned: the warped ones replace them for the fusion
    ended = device if warped.device.type == torch.device(device).type else warped.device  # CPU after a fallback
    result = _fused_result(target, grid, table, target_w, warped, scores[order], options, ended, (model, similarity),
                           run)
    return replace(result, labels=mask_unknown(result.labels, unknown), unknown=unknown if unknown.any() else None)


def _deform(target_w, grid, num_classes, atlases: AtlasesOnGrid, options, device, model, run) -> WarpedAtlases:
    def described(where: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        target_t = torch.from_numpy(target_w)[None, None].to(where)
        return target_t, mind_ssc(target_t)

    (target_t, features), device = cpu_fallback("target descriptors", described, device, run.warn)
    if model is not None:
        model.net.to(device)  # the CPU after a fallback (the model's cache moves it back for a later run)
    engine = "instance-opt" if model is None else "network"
    message = "instance optimisation" if model is None else f"registration network {model.name}"
    run.step("register", f"{message}: {len(atlases.names)} atlases")
    return deform_atlases(model, target_t, features, atlases, grid, num_classes,
                          (options.refine_for(engine), options.regularisation),
                          progress=lambda f, which: run.report(f, f"{message}, {which}"), cancel=run.cancelled,
                          warn=run.warn)


def _fused_result(target, grid, table, target_w, warped: WarpedAtlases, scores, options, device, models,
                  run) -> Result:
    """The fusion and the result, on the device the deformable step ended on (the CPU after
    an out-of-memory fallback: what failed on CUDA for one atlas would fail for the fusion's N),
    and on the CPU if the fusion itself runs out of CUDA memory."""
    model, similarity = models
    run.step("fuse", f"label fusion ({options.fusion.value})")
    qc = [replace(item, selection_score=float(score)) for item, score in zip(warped.qc, scores)]

    def fuse_on(where: torch.device) -> dict:
        if similarity is not None:  # on the deformable step's device (the CPU after its fallback), or this one's
            similarity.net.to(where)
        return fused_fields(options.fusion, grid, target.grid, table, target_w, warped.images, warped.classes,
                            qc, where, similarity_model=similarity)

    fused, device = cpu_fallback("label fusion", fuse_on, device, run.warn)
    run.step("output", "assembling the result")
    result = Result(working_grid=grid, label_values=table, atlas_names=[item.name for item in warped.qc],
                    target_image=target_w, warped_images=warped.images, warped_classes=warped.classes,
                    device=str(device), warnings=run.warnings,
                    registration=model.name if model is not None else "instance-opt", **fused)
    run.finish()
    result.timings = run.timings
    return result
