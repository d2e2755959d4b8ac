"""Working region, resampling, robust normalisation and affine pre-alignment (SimpleITK).

Physical space is RAS mm throughout (see :mod:`crossmodalmas.volume`). SimpleITK transforms
work in LPS and map *fixed* (target) points to *moving* (atlas) points; every function here
that returns or takes a transform says so, and only :func:`resample` feeds one to SimpleITK.
"""

from __future__ import annotations

import contextlib

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from crossmodalmas.volume import LPS_TO_RAS, Grid, LabelMap, Volume, to_sitk

_AFFINE_SPACING_MM = 4.0  # affine alignment runs on copies resampled to this spacing, for speed
# Mutual information can converge to a far-off pose where little overlaps (measured: 100-200 mm
# translations on synthetic heart and abdomen pairs); a converged affine whose body overlap
# falls below this fraction of the centre alignment's is not plausible and is dropped.
_PLAUSIBLE_OVERLAP = 0.5
_BODY_LEVEL = 0.1  # normalised intensity above which a voxel counts as body (air is ~0)


def resample(array: np.ndarray, ijk_to_ras: np.ndarray, grid: Grid,
             transform: Optional[sitk.Transform] = None, labels: bool = False,
             default: float = 0.0) -> np.ndarray:
    """Resample a KJI array onto ``grid`` in physical space.

    Args:
        array: values on the source grid, KJI.
        ijk_to_ras: the source grid's IJK -> RAS matrix.
        grid: destination grid.
        transform: SimpleITK transform mapping destination (fixed) LPS points to source LPS
            points; identity if None.
        labels: nearest-neighbour for label maps (values never averaged), linear otherwise.
        default: value outside the source.

    Returns:
        KJI array on ``grid`` (int32 for labels, float32 otherwise).
    """
    source = to_sitk(array.astype(np.int32 if labels else np.float32), ijk_to_ras)
    reference = to_sitk(np.zeros(grid.shape, np.uint8), grid.ijk_to_ras)
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(source, reference, transform or sitk.Transform(), interpolator, default,
                        sitk.sitkInt32 if labels else sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def robust_normalise(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map the [``low``, ``high``] percentiles of an image to [0, 1], clipping outside.

    Modality-agnostic (CT Hounsfield units and arbitrary MR units alike) and robust to a few
    extreme voxels. A constant image maps to zeros.
    """
    lo, hi = np.percentile(array, [low, high])
    if hi <= lo:
        return np.zeros_like(array, dtype=np.float32)
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def isotropic_grid(grid: Grid, spacing_mm: float) -> Grid:
    """A grid with the same extent and direction as ``grid`` and isotropic ``spacing_mm``."""
    extent = (np.array(grid.shape[::-1]) - 1) * grid.spacing  # along i, j, k in mm
    size_ijk = np.maximum(np.round(extent / spacing_mm).astype(int) + 1, 1)
    return _isotropic_along(grid, size_ijk, spacing_mm, grid.ijk_to_ras[:3, 3])


def _isotropic_along(grid: Grid, size_ijk, spacing_mm: float, origin_ras) -> Grid:
    """An isotropic grid with ``grid``'s direction, ``size_ijk`` voxels and its first voxel at ``origin_ras``."""
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = grid.ijk_to_ras[:3, :3] / grid.spacing * spacing_mm
    ijk_to_ras[:3, 3] = origin_ras
    return Grid(tuple(int(s) for s in np.asarray(size_ijk)[::-1]), ijk_to_ras)


def _ras_to_lps(points: np.ndarray) -> np.ndarray:
    return points * LPS_TO_RAS.diagonal()[:3]


def transform_points_to_target(points_ras: np.ndarray, transform: sitk.Transform) -> np.ndarray:
    """Map atlas RAS points into target RAS space through a fixed->moving ``transform``."""
    inverse = transform.GetInverse()
    lps = [inverse.TransformPoint(tuple(p)) for p in _ras_to_lps(np.asarray(points_ras, float))]
    return _ras_to_lps(np.array(lps))


def label_box_in_target(labels: LabelMap, transform: sitk.Transform) -> Optional[np.ndarray]:
    """RAS bounding box ``(2, 3)`` of an atlas's foreground mapped into target space; None if empty."""
    foreground = np.argwhere(labels.array != 0)
    if foreground.size == 0:
        return None
    lo, hi = foreground.min(0)[::-1], foreground.max(0)[::-1]  # (i, j, k)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    points = transform_points_to_target(labels.grid.ijk_to_points(corners), transform)
    return np.stack([points.min(0), points.max(0)])


def working_grid(target: Grid, box_ras: np.ndarray, spacing_mm: Optional[float],
                 max_voxels: int) -> Grid:
    """The working grid: the part of ``target`` inside a RAS box, on an isotropic grid.

    The grid keeps the target's direction; its spacing is ``spacing_mm`` or else the
    coarsest of the target's finest spacing and what keeps the grid within ``max_voxels``.

    Raises:
        ValueError: the box does not intersect the target.
    """
    corners = np.array([[x, y, z] for x in box_ras[:, 0] for y in box_ras[:, 1] for z in box_ras[:, 2]])
    ijk = target.points_to_ijk(corners)
    size_ijk = np.array(target.shape[::-1])
    lo = np.clip(np.floor(ijk.min(0)), 0, size_ijk - 1)
    hi = np.clip(np.ceil(ijk.max(0)), 0, size_ijk - 1)
    if np.any(ijk.max(0) < 0) or np.any(ijk.min(0) > size_ijk - 1):
        raise ValueError("working_grid(): the region does not intersect the target image")
    extent_mm = np.maximum((hi - lo) * target.spacing, target.spacing)
    if spacing_mm is None:
        spacing_mm = max(float(target.spacing.min()), float(np.cbrt(np.prod(extent_mm) / max_voxels)))
    size = np.maximum(np.round(extent_mm / spacing_mm).astype(int) + 1, 2)
    return _isotropic_along(target, size, spacing_mm, target.ijk_to_points(lo[None])[0])


def _downsampled(volume: Volume) -> sitk.Image:
    """A normalised, smoothed copy at ~``_AFFINE_SPACING_MM`` for the affine search."""
    image = to_sitk(robust_normalise(volume.array), volume.ijk_to_ras)
    spacing = max(_AFFINE_SPACING_MM, float(volume.grid.spacing.min()))
    grid = isotropic_grid(volume.grid, spacing)
    sigma = [max(spacing - s, 0.0) / 2.0 for s in image.GetSpacing()]
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma) if max(sigma) > 0 else image
    return sitk.Resample(smoothed, to_sitk(np.zeros(grid.shape, np.uint8), grid.ijk_to_ras),
                         sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


@contextlib.contextmanager
def _one_itk_thread():
    """ITK's metrics split their sums over a thread pool, differently from run to run, so the
    same inputs gave transforms differing by ~1e-6 (enough to move label voxels). The metric
    reads the global default, so it is set for the call and restored after; at ~4 mm one
    thread costs little."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _run_stage(fixed, moving, transform, shrink: Sequence[int], iterations: int, seed: int):
    """One multi-resolution Mattes-MI stage; returns (optimised transform, final metric)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK reads seed 0 as "wall clock": shift by one so every seed is reproducible.
    method.SetMetricSamplingPercentage(0.25, seed + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([s - 1 for s in shrink])
    method.SetInitialTransform(transform, inPlace=False)
    with _one_itk_thread():
        result = method.Execute(fixed, moving)
    return sitk.CompositeTransform(result).GetNthTransform(0), method.GetMetricValue()


def _affine_from(fixed, moving, start: sitk.CenteredTransformInitializerFilter, seed: int):
    """Rigid then affine from one initialisation; returns (transform, final metric)."""
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), start)
    rigid, _ = _run_stage(fixed, moving, initial, (2, 1), 100, seed)
    euler = sitk.Euler3DTransform(rigid)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(euler.GetMatrix())
    affine.SetTranslation(euler.GetTranslation())
    affine.SetCenter(euler.GetCenter())
    return _run_stage(fixed, moving, affine, (2, 1), 100, seed)


def affine_align(target: Volume, atlas: Volume, seed: int = 0) -> sitk.Transform:
    """Affine pre-alignment of an atlas to the target with Mattes mutual information.

    Two starts, moments and image centres (moments alone fail where the two fields of view
    hold different amounts of body), each a rigid then an affine stage, multi-resolution;
    the start with the better final metric wins. A start ITK gives up on, or one whose body
    overlap is under half the centre alignment's (a far-off pose MI liked), is dropped; if
    none is left the image centres are aligned. All on copies resampled to ~4 mm (the
    affine has 12 parameters; finer voxels add time, not accuracy). Mutual information
    makes it modality-robust.

    Args:
        target: the fixed image.
        atlas: the moving image.
        seed: seed of the metric's random sampling (the result is deterministic given it).

    Returns:
        A SimpleITK transform mapping target LPS points to atlas LPS points.
    """
    fixed, moving = _downsampled(target), _downsampled(atlas)
    centres = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    floor = _PLAUSIBLE_OVERLAP * _body_overlap(fixed, moving, centres)
    candidates = []
    for start in (sitk.CenteredTransformInitializerFilter.MOMENTS, sitk.CenteredTransformInitializerFilter.GEOMETRY):
        try:
            transform, metric = _affine_from(fixed, moving, start, seed)
        except RuntimeError:  # ITK gave up (e.g. every sample mapped outside the atlas): next start
            continue
        if _body_overlap(fixed, moving, transform) >= floor:
            candidates.append((transform, metric))
    if not candidates:  # nothing converged to a plausible pose: the image centres aligned
        return centres
    return min(candidates, key=lambda candidate: candidate[1])[0]


def _body_overlap(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Dice of the two bodies (normalised intensity above ``_BODY_LEVEL``) once ``transform``
    maps the atlas onto the target: the sanity check of a converged affine."""
    fixed_body = sitk.GetArrayViewFromImage(fixed) > _BODY_LEVEL
    moved = sitk.Resample(moving, fixed, transform, sitk.sitkNearestNeighbor, 0.0)
    moved_body = sitk.GetArrayViewFromImage(moved) > _BODY_LEVEL
    total = int(fixed_body.sum()) + int(moved_body.sum())
    return 2.0 * int((fixed_body & moved_body).sum()) / total if total else 0.0


def _region_in(target: Grid, source: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Index box (i, j, k) of ``target`` voxels that lie within ``source``'s extent."""
    ijk = target.points_to_ijk(source.corners_ras())
    size = np.array(target.shape[::-1])
    lo = np.clip(np.floor(ijk.min(0)).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(ijk.max(0)).astype(int), 0, size - 1)
    return lo, hi


def same_grid(a: Grid, b: Grid) -> bool:
    """Whether two grids have the same shape and voxel positions (to 1e-6 mm)."""
    return tuple(a.shape) == tuple(b.shape) and np.allclose(a.ijk_to_ras, b.ijk_to_ras, rtol=0.0, atol=1e-6)


def resample_probabilities(probabilities: np.ndarray, source: Grid, target: Grid,
                           slab: int = 16) -> np.ndarray:
    """Per-class probabilities on ``source`` -> class indices (argmax) on ``target``.

    Interpolating the probabilities linearly before the argmax gives smooth boundaries on a
    target grid finer than the working grid (nearest-neighbour label resampling would be
    blocky). Only the target voxels inside the source's extent are computed, a slab of
    ``slab`` slices at a time to bound memory; the rest is background (index 0).

    Args:
        probabilities: ``(C, K, J, I)`` on ``source``.
        source: the grid of ``probabilities``.
        target: the grid to resample to.

    Returns:
        ``(K, J, I)`` int64 class indices on ``target``.
    """
    import torch  # deferred: the rest of this module needs only SimpleITK and numpy

    from crossmodalmas.transforms import sample_at

    if same_grid(source, target):
        return np.asarray(probabilities).argmax(axis=0)  # nothing to interpolate
    out = np.zeros(target.shape, dtype=np.int64)
    lo, hi = _region_in(target, source)
    target_to_source = np.linalg.inv(source.ijk_to_ras) @ target.ijk_to_ras
    values = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32))[None]
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="xy")
    for k0 in range(lo[2], hi[2] + 1, slab):
        ks = np.arange(k0, min(k0 + slab, hi[2] + 1))
        ijk = np.stack(np.broadcast_arrays(ii[None], jj[None], ks[:, None, None]), axis=-1)
        src = ijk @ target_to_source[:3, :3].T + target_to_source[:3, 3]  # (k, j, i, 3) in source (i, j, k)
        coords = torch.from_numpy(src[..., ::-1].copy()).float().permute(3, 0, 1, 2)[None]
        sampled = sample_at(values, coords, padding_mode="zeros")[0]
        out[ks[0]:ks[-1] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = sampled.argmax(0).numpy()
    return out
