"""Affine pre-alignment of an atlas to the target: global search, then rigid and affine
Mattes mutual information (SimpleITK), modality-robust.

Transforms map *fixed* (target) LPS points to *moving* (atlas) LPS points, as SimpleITK's do.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from crossmodalmas.devices import usable_cores
from crossmodalmas.global_search import SEARCH_SPACING_MM, GlobalSearch, MovingImage, pose_transform
from crossmodalmas.preprocess import gaussian_smooth, isotropic_grid, robust_normalise
from crossmodalmas.search_grid import affine_of
from crossmodalmas.volume import LPS_TO_RAS, LabelMap, Volume, to_sitk

_AFFINE_SPACING_MM = 4.0  # affine alignment runs on copies resampled to this spacing, for speed
GLOBAL_STARTS = 5  # poses of the global search refined besides the moments and centres starts
# The search's poses are ranked again with the atlas's labels from this many times GLOBAL_STARTS.
# On a 5 cm target slab with a left-right mix-up (robustness pair9, and its same-anatomy control),
# the pose 22 mm from the truth ranked 10th and 6th by intensities, 3rd and 1st with the labels.
_RERANKED = 3
# The header is trusted unless the image says otherwise clearly: a pose from the global search
# replaces the best header-based one (moments, centres) only when it scores this much higher.
# Symmetric anatomy scores its flipped pose (almost) as well as the true one.
_HEADER_MARGIN = 1.05
# ... which guards the header's orientation. On a partial pair the header-based starts are
# centred on fields of view that differ, so their translations are worth nothing: a searched
# pose turned less than this from the best header-based one competes on its score alone (a flip
# turns 180 degrees, the search's tilts 15). On a robustness atlas slab (pair6) with the Mattes
# fits sampled less, a header-based fit walked 115 mm off, where it scored 4 % below the searched
# pose 3 mm off, and the margin kept it (Dice 0); at seed 1 the pair fell to Dice 0 too, and this
# rule brought it back (0.55). Over the benchmark's 24 partial pairs, found without the rule /
# with it: 20 / 20 at seed 0 (mean Dice 0.631 / 0.627), 17 / 19 at seed 1.
_SAME_ORIENTATION_DEG = 90.0
# The best transform of each kind is polished on the search grid; a partial pair's chosen one
# is slid along its slab's axis and polished again on a grid twice as fine: the coarse grid
# reaches furthest, the fine one places a slab within millimetres (see GlobalSearch.polish). A
# pair is partial when the atlas covers less than this share of the target's field of view, or
# less than this share of it lies inside the target: the slabs of the robustness benchmark are
# 0.2-0.5, the registration benchmark's 16 whole pairs 0.68-1.0 (their fields of view differ by
# their margins). On those whole pairs, the coarse polish raised the mean affine Dice from 0.540
# to 0.593 (a synthetic heart 0.18 -> 0.63, lowering six pairs by 0.003-0.026) and made the
# affine step's seconds 1.65 times as many.
_POLISH_SPACING_MM = SEARCH_SPACING_MM / 2
# Before that fine polish, the slab is slid along its thin axis up to this far either way
# (GlobalSearch.slide): the benchmark's chosen slabs lay 9-28 mm off along it.
_SLIDE_REACH_MM = 35.0
_WHOLE_SHARE = 0.6


def _downsampled(volume: Volume) -> sitk.Image:
    """A normalised, smoothed copy at ~``_AFFINE_SPACING_MM`` for the affine search."""
    image = to_sitk(robust_normalise(volume.array), volume.ijk_to_ras)
    spacing = max(_AFFINE_SPACING_MM, float(volume.grid.spacing.min()))
    grid = isotropic_grid(volume.grid, spacing)
    sigma = [max(spacing - s, 0.0) / 2.0 for s in image.GetSpacing()]
    return sitk.Resample(gaussian_smooth(image, sigma), to_sitk(np.zeros(grid.shape, np.uint8), grid.ijk_to_ras),
                         sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


class _OneITKThread:
    """A context in which ITK runs one thread.

    ITK's metrics split their sums over a thread pool, differently from run to run, so the
    same inputs gave transforms differing by ~1e-6 (enough to move label voxels). The metric
    reads the process-wide default, so it is set to 1 while any thread is inside the context
    and restored when the last one leaves (atlases are aligned side by side, see
    :func:`crossmodalmas.pipeline._align_all`; a plain save-and-restore per call would let one
    thread restore the default under another's registration). At ~4 mm one thread costs little.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._inside = 0
        self._previous = 0

    def __enter__(self):
        with self._lock:
            if self._inside == 0:
                self._previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
            self._inside += 1

    def __exit__(self, *exc_info):
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(self._previous)


_one_itk_thread = _OneITKThread()


def _mattes_method() -> sitk.ImageRegistrationMethod:
    """A registration method with the affine step's metric: Mattes MI, 32 bins, linear."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _run_stage(fixed, moving, transform, shrink: Sequence[int], iterations: int, seed: int):
    """One multi-resolution Mattes-MI stage; returns (optimised transform, final metric)."""
    method = _mattes_method()
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK reads seed 0 as "wall clock": shift by one so every seed is reproducible.
    method.SetMetricSamplingPercentage(0.25, seed + 1)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([s - 1 for s in shrink])
    method.SetInitialTransform(transform, inPlace=False)
    with _one_itk_thread:
        result = method.Execute(fixed, moving)
    return sitk.CompositeTransform(result).GetNthTransform(0), method.GetMetricValue()


def _affine_from(fixed, moving, initial: sitk.Transform, seed: int):
    """Rigid then affine from one initial rigid transform; returns (transform, final metric)."""
    rigid, _ = _run_stage(fixed, moving, initial, (2, 1), 100, seed)
    euler = sitk.Euler3DTransform(rigid)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(euler.GetMatrix())
    affine.SetTranslation(euler.GetTranslation())
    affine.SetCenter(euler.GetCenter())
    return _run_stage(fixed, moving, affine, (2, 1), 100, seed)


def _starts(fixed: sitk.Image, moving: sitk.Image, atlas: MovingImage,
            search: GlobalSearch) -> tuple[list[sitk.Transform], list[_Scored]]:
    """Initial rigid transforms: the image moments and centres; the global search's best poses,
    with their scores, best first.

    The exhaustive search ranks poses by intensities alone; ``_RERANKED`` times as many as are
    kept are ranked again by :meth:`GlobalSearch.scores`, which splits each intensity bin by
    the atlas's structures where its labels are known (a handful of scores, against the
    search's thousands of correlations)."""
    centred = [sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), start)
               for start in (sitk.CenteredTransformInitializerFilter.MOMENTS,
                             sitk.CenteredTransformInitializerFilter.GEOMETRY)]
    searched = [pose_transform(pose) for pose in search.poses(atlas, keep=_RERANKED * GLOBAL_STARTS)]
    ranked = sorted(zip(searched, search.scores(atlas, searched)), key=lambda pair: -pair[1])
    return centred, ranked[:GLOBAL_STARTS]


class AffineAligner:
    """Affine pre-alignment of atlases to one target; the target's coarse copy and global
    search are made once (on a 512 x 512 x 600 CT they take seconds and a gigabyte).

    Args:
        target: the fixed image.
        fit_workers: how many of an atlas's Mattes fits (one per start, seven or nine) run side
            by side (None: the process's cores). Each runs one ITK thread and is independent
            of the others, so the transform is the same for any number; the pipeline, which
            aligns several atlases at once, gives each its share of the cores.
    """

    def __init__(self, target: Volume, fit_workers: Optional[int] = None):
        self.fixed = _downsampled(target)
        self.search = GlobalSearch(target)
        self._target = target
        self._fit_workers = max(1, usable_cores() if fit_workers is None else fit_workers)
        self._fine_search: Optional[GlobalSearch] = None  # made for the first partial atlas
        self._fine_search_lock = threading.Lock()  # atlases may be aligned side by side

    def align(self, atlas: Volume, seed: int = 0, labels: Optional[LabelMap] = None) -> sitk.Transform:
        """The affine transform of ``atlas`` (see :func:`affine_align`)."""
        moving, ready = _downsampled(atlas), self.search.moving(atlas, labels)  # each made once per atlas
        centred, searched_starts = _starts(self.fixed, moving, ready, self.search)
        # refined from the header-based starts and from the search's poses, a smaller atlas with
        # itself fixed; its target-fixed header fits are made only where they may be chosen
        smaller = _physical_volume(moving) < _physical_volume(self.fixed)
        fits = self._fits_from(moving, [*centred, *(start for start, _ in searched_starts)], seed, (smaller,))
        header_fits = fits[:len(centred)]
        searched = [fit for start_fits in fits[len(centred):] for fit in start_fits.values()]

        @functools.cache
        def header_fits_every_way() -> list[dict[bool, sitk.Transform]]:
            """Each header start's fits in both directions (one only for a larger atlas), made once."""
            return self._target_fixed_added(moving, centred, seed, header_fits) if smaller else header_fits

        if not any(header_fits) and not searched and not any(header_fits_every_way()):
            return centred[1]  # nothing converged: the image centres aligned
        header = self._scored(ready, [fits[smaller] for fits in header_fits if fits])
        searched = self._scored(ready, searched)
        # Every start competes with its refinement: the Mattes fit walked off to no overlap at
        # all from centred starts of Dice 0.53-0.57 (registration benchmark, synthetic abdomen),
        # and drifted a target slab to a 15 % scale, 15 mm off, from a pose 11 mm off that
        # scored higher. The best of each kind is polished before the two are compared (see
        # _POLISH_SPACING_MM): on a synthetic heart only the polished right orientation
        # outscored a flip's fit.
        header_starts = self._scored(ready, centred)
        candidates = header + searched + header_starts + searched_starts
        if min(self.search.shares(ready, _best(candidates))) >= _WHOLE_SHARE:
            every_way = header_fits_every_way()
            header = self._scored(ready, [_two_way_best(self.fixed, moving, fits) for fits in every_way if fits])
            return _preferred(*self._polished_best(ready, header + header_starts, searched + searched_starts))
        # A partial pair: its header starts, centred on two fields of view that differ, are far
        # off by construction (only their refinements, a smaller atlas's with itself fixed,
        # compete); the winner is polished again finer.
        chosen = _preferred(*self._polished_best(ready, header, searched + searched_starts), partial=True)
        return self._polished(atlas, labels, chosen)

    def _polished_best(self, ready: MovingImage, *kinds: Sequence[_Scored]) -> list[list[_Scored]]:
        """The best-scoring transform of each kind, polished on the search grid, with its score."""
        return [self._scored(ready, [self.search.polish(ready, _best(kind))]) if kind else [] for kind in kinds]

    def _scored(self, ready: MovingImage, transforms: Sequence[sitk.Transform]) -> list[_Scored]:
        return list(zip(transforms, self.search.scores(ready, transforms)))

    def _polished(self, atlas: Volume, labels: Optional[LabelMap], transform: sitk.Transform) -> sitk.Transform:
        """``transform`` slid along the slab's thin axis, then polished, on the fine search grid
        (made once, on first use)."""
        with self._fine_search_lock:
            if self._fine_search is None:
                self._fine_search = GlobalSearch(self._target, spacing_mm=_POLISH_SPACING_MM)
        fine = self._fine_search
        ready = fine.moving(atlas, labels)
        axis = slab_axis(self._target, atlas, transform, fine.shares(ready, transform))
        return fine.polish(ready, fine.slide(ready, transform, axis, _SLIDE_REACH_MM))

    def _fits_from(self, moving: sitk.Image, starts: Sequence[sitk.Transform], seed: int,
                   directions: Sequence[bool]) -> list[dict[bool, sitk.Transform]]:
        """:meth:`_fits` of each start, in their order, up to ``fit_workers`` side by side
        (SimpleITK lets go of Python's lock while it registers)."""
        def fits_of(start: sitk.Transform) -> dict[bool, sitk.Transform]:
            return self._fits(moving, start, seed, directions)

        workers = min(self._fit_workers, len(starts))
        if workers <= 1:
            return [fits_of(start) for start in starts]
        with ThreadPoolExecutor(workers, thread_name_prefix="crossmodalmas-fit") as pool:
            return list(pool.map(fits_of, starts))

    def _fits(self, moving: sitk.Image, start: sitk.Transform, seed: int,
              directions: Sequence[bool]) -> dict[bool, sitk.Transform]:
        """:meth:`_refined` from ``start`` for each ``atlas_fixed`` in ``directions``, by it;
        those ITK gives up on (e.g. every sample mapped outside the atlas) left out."""
        fits = {}
        for atlas_fixed in directions:
            try:
                fits[atlas_fixed] = self._refined(moving, start, seed, atlas_fixed)
            except RuntimeError:
                continue
        return fits

    def _target_fixed_added(self, moving: sitk.Image, starts: Sequence[sitk.Transform], seed: int,
                            fits: Sequence[dict[bool, sitk.Transform]]) -> list[dict[bool, sitk.Transform]]:
        """Each start's ``fits`` with its target-fixed fit added (after the atlas-fixed one, so
        that ties between the two keep going to the atlas-fixed fit)."""
        added = self._fits_from(moving, starts, seed, (False,))
        return [{**start_fits, **target_fixed} for start_fits, target_fixed in zip(fits, added)]

    def _refined(self, moving: sitk.Image, start: sitk.Transform, seed: int, atlas_fixed: bool) -> sitk.Transform:
        """Rigid then affine stages from ``start``, with the atlas as the fixed image if
        ``atlas_fixed`` (the result inverted back), the target otherwise.

        The metric samples the fixed image and drops samples that map outside the moving one.
        With a whole target fixed, an atlas slab of a fifth of it gets a fifth of the samples,
        and the optimiser drifted (measured on a phantom slab of a quarter of the target:
        search poses 16 and 21 mm from the truth walked to 33 and 50 mm). So a smaller atlas is
        registered the other way round (atlas fixed, target moving)."""
        if not atlas_fixed:
            return _affine_from(self.fixed, moving, start, seed)[0]
        return _affine_from(moving, self.fixed, start.GetInverse(), seed)[0].GetInverse()


_Scored = tuple[sitk.Transform, float]  # a transform and the search's score of it


def _top(scored: Sequence[_Scored]) -> _Scored:
    return max(scored, key=lambda pair: pair[1])


def _best(scored: Sequence[_Scored]) -> sitk.Transform:
    return _top(scored)[0]


def _preferred(header: Sequence[_Scored], searched: Sequence[_Scored], partial: bool = False) -> sitk.Transform:
    """The best-scoring transform; one from the search's poses only if it beats the best
    header-based one by ``_HEADER_MARGIN``, unless the pair is ``partial`` and it is turned
    less than ``_SAME_ORIENTATION_DEG`` from that one (the header's orientation kept)."""
    if not header or not searched:
        return _best(list(header) + list(searched))
    (in_header, header_score), (in_search, search_score) = _top(header), _top(searched)
    same_way = partial and turn_between(in_header, in_search) < _SAME_ORIENTATION_DEG
    return in_header if header_score * (1.0 if same_way else _HEADER_MARGIN) >= search_score else in_search


def turn_between(first: sitk.Transform, second: sitk.Transform) -> float:
    """Degrees between the orientations of two affine-linear transforms: the angle of the
    rotation from the nearest rotation (or rotoreflection) of one linear part to the other's."""
    def orientation(transform: sitk.Transform) -> np.ndarray:
        u, _, vt = np.linalg.svd(np.asarray(affine_of(transform).GetMatrix()).reshape(3, 3))
        return u @ vt

    relative = orientation(first).T @ orientation(second)
    return float(np.degrees(np.arccos(np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0))))


def slab_axis(target: Volume, atlas: Volume, transform: sitk.Transform, shares: tuple[float, float]) -> np.ndarray:
    """The thin axis of a partial pair's slab, as a unit vector in target LPS.

    The slab is the atlas when it covers a smaller share of the target than the share of it
    inside the target (``shares``: :meth:`GlobalSearch.shares`), the target otherwise; its thin
    axis is the grid axis of its smallest physical extent, carried into target space through
    ``transform`` (target LPS -> atlas LPS) for an atlas.
    """
    atlas_is_slab = shares[0] <= shares[1]
    grid = (atlas if atlas_is_slab else target).grid
    extents = np.asarray(grid.shape[::-1]) * grid.spacing  # along i, j, k
    axis = LPS_TO_RAS[:3, :3] @ grid.ijk_to_ras[:3, :3][:, int(np.argmin(extents))]
    if atlas_is_slab:
        matrix = np.asarray(affine_of(transform).GetMatrix()).reshape(3, 3)
        axis = np.linalg.solve(matrix, axis)  # an atlas direction, seen in the target
    return axis / np.linalg.norm(axis)


def _two_way_best(fixed: sitk.Image, moving: sitk.Image, fits: dict[bool, sitk.Transform]) -> sitk.Transform:
    """Of one start's fits (atlas fixed, target fixed), the one :func:`_two_way_mattes` rates
    better.

    A smaller atlas is registered with itself fixed (see :meth:`AffineAligner._refined`), which
    a slab of the target needs; whole anatomy cropped closer than the target does not. Measured
    on the fusion benchmark's MSD prostate crops (atlases 0.24-0.7 of their target's volume,
    16 pairs), the atlas-fixed fits from the image centres reached mean organ Dice 0.35, the
    target-fixed ones 0.50; on its SynthSeg brains (19 pairs) 0.56 and 0.46, the target-fixed
    fit collapsing to Dice 0.12-0.16 on five. Kept by the two-way metric: 0.49 and 0.56 (the
    better of each pair: 0.51 and 0.57). The search's ``N * MI`` is no arbiter here: counted in
    target voxels, it rewards a fit that blows the atlas up (0.50 and 0.48). A partial pair
    keeps the atlas-fixed fit: on the robustness benchmark's atlas slabs the target-fixed fits
    cost a pair found (one 0.62 -> 0.05, three 0.03-0.05 lower)."""
    if len(fits) == 1:
        return next(iter(fits.values()))
    return min(fits.values(), key=lambda fit: _two_way_mattes(fixed, moving, fit))


def _two_way_mattes(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Mattes mutual information (negated: lower is better) of the two images placed by
    ``transform``, at every voxel, with the target as the fixed image plus with the atlas as the
    fixed one: a fit of either direction is judged by both, so neither image's field of view
    decides which samples count. ``inf`` where ITK finds no overlap."""
    total = 0.0
    for still, other, mapping in ((fixed, moving, transform), (moving, fixed, transform.GetInverse())):
        method = _mattes_method()
        method.SetMetricSamplingStrategy(method.NONE)
        method.SetInitialTransform(mapping, inPlace=False)
        try:
            with _one_itk_thread:
                total += method.MetricEvaluate(still, other)
        except RuntimeError:
            return float("inf")
    return total


def _physical_volume(image: sitk.Image) -> float:
    return float(np.prod(np.array(image.GetSize()) * np.array(image.GetSpacing())))


def affine_align(target: Volume, atlas: Volume, seed: int = 0, labels: Optional[LabelMap] = None) -> sitk.Transform:
    """Affine pre-alignment of an atlas to the target.

    Starts from the image moments, the image centres, and the best poses of a global search
    over orientations and every translation (:mod:`crossmodalmas.global_search`: atlases that
    cover a fraction of the target, origins metres apart, LPS/RAS mix-ups). Each start is
    refined by a rigid then an affine stage of Mattes mutual information, multi-resolution,
    on copies at ~4 mm (12 parameters gain nothing from finer voxels), sampling the smaller
    of the two images (an atlas smaller than the target is registered the other way round;
    for a whole pair also the target's way from the moments and centres, and the fit that the
    Mattes metric taken both ways rates better kept, :func:`_two_way_best`).
    The refined transforms and their starts (a fit can walk off from a good start; on a
    partial pair the header-based starts, centred on fields of view that differ, compete only
    refined) are compared by the global search's own measure (mutual information times
    overlap on its grid, each intensity bin split by the atlas's ``labels`` where given): unlike
    the Mattes metric, a mean over whatever overlaps, it does not favour a far-off pose where
    little overlaps. The best header-based and the best searched transform are each polished
    first: the rigid correction that most raises the measure, found by a local search on the
    ~7 mm grid (:meth:`GlobalSearch.polish`). A pose from the search must beat the best
    header-based one by 5 % (symmetric anatomy scores its flip as well as the truth), unless
    the pair is partial and the pose keeps the header's orientation. When the two fields of
    view differ (one covers under 60 % of the other), the winner is slid along the slab's thin
    axis (:meth:`GlobalSearch.slide`, :func:`slab_axis`) and polished again at ~3.5 mm. A start
    ITK gives up on is dropped; if none is left the image centres are aligned. For several
    atlases of one target, :class:`AffineAligner` does the target's part once.

    Args:
        target: the fixed image.
        atlas: the moving image.
        seed: seed of the metric's random sampling (the result is deterministic given it).
        labels: the atlas's label map, if known: the candidates are then compared, and the
            chosen one polished, with each intensity bin split by structure
            (:meth:`GlobalSearch.scores`).

    Returns:
        A SimpleITK transform mapping target LPS points to atlas LPS points.
    """
    return AffineAligner(target).align(atlas, seed, labels)
