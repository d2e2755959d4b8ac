"""A parametric heart phantom with MM-WHS label codes, and CT-like / MR-like renders of it.

The anatomy is analytic in RAS mm (ellipsoids, truncated ellipsoid shells, elliptic cylinders,
capsule tubes), so one :class:`HeartAnatomy` can be sampled on any
:class:`~crossmodalmas.volume.Grid` and a point has the same tissue on every grid. Besides the
seven MM-WHS structures it holds unlabelled anatomy a registration can hold on to: body outline,
subcutaneous fat, chest wall, ribs, sternum, lungs, vertebra, paraspinal muscles, mediastinal
and epicardial fat, liver dome, aortic arch, descending aorta and venae cavae. It is a
*compact* thorax (body about 130 x 92 mm, heart about 55 mm long), so that a field of view of
about 100 mm shows the heart with its surroundings: the proportions are what matter.

Frames: the *thorax frame* is RAS with its origin on the body axis at heart level; a point
``p`` of the *heart frame* is at ``R @ p + heart_centre_ras`` in RAS (``R`` from
:attr:`HeartAnatomy.heart_rotation_deg`). Numpy only; deterministic given a ``Generator``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from crossmodalmas.volume import Grid, LabelMap, Volume


class Tissue(enum.IntEnum):
    """Tissue classes of :func:`heart_tissue_map` (the int32 values of its array).

    Unlabelled: AIR, FAT, SOFT (muscle, liver, chamber and vessel walls, spinal canal), LUNG,
    BONE, BLOOD (aortic arch, descending aorta, venae cavae); then the seven MM-WHS structures.
    """

    AIR, FAT, SOFT, LUNG, BONE, BLOOD = range(6)
    LV_MYOCARDIUM, LEFT_ATRIUM, LV_BLOOD_POOL, RIGHT_ATRIUM = range(6, 10)
    RIGHT_VENTRICLE, ASCENDING_AORTA, PULMONARY_ARTERY = range(10, 13)


TISSUE_TO_MMWHS: dict[Tissue, int] = {
    Tissue.LV_MYOCARDIUM: 205, Tissue.LEFT_ATRIUM: 420, Tissue.LV_BLOOD_POOL: 500, Tissue.RIGHT_ATRIUM: 550,
    Tissue.RIGHT_VENTRICLE: 600, Tissue.ASCENDING_AORTA: 820, Tissue.PULMONARY_ARTERY: 850,
}


class Modality(str, enum.Enum):
    """Contrast of :func:`render`: ``'ct'`` (Hounsfield-like) or ``'mr'`` (bSSFP-like, a.u.)."""

    CT = "ct"
    MR = "mr"


# Per-tissue mean and jitter std, in Tissue order (air fat soft lung bone blood | myo LA LVBP RA RV Ao PA).
# CT in HU; MR bSSFP-like in arbitrary units (blood and fat bright, myocardium and muscle dark,
# lung and air dark), so the fat/myocardium order flips between the two.
_CT_MEAN = (-1000, -100, 40, -850, 700, 300, 45, 300, 300, 260, 260, 300, 260)
_CT_JITTER = (5, 15, 10, 30, 80, 30, 10, 30, 30, 30, 30, 30, 30)
_MR_MEAN = (5, 850, 280, 40, 420, 900, 200, 950, 950, 930, 930, 950, 930)
_MR_JITTER = (2, 50, 25, 10, 40, 50, 20, 50, 50, 50, 50, 50, 50)
_CT_NOISE_HU, _CT_BLUR_MM = 20.0, 0.7
_MR_NOISE, _MR_BLUR_MM, _MR_BIAS_STD = 25.0, 0.6, 0.12

_HEART_CENTRE_RAS = np.array([-6.0, 10.0, 0.0])  # nominal, thorax frame
_LV_CENTRE = np.array([-9.0, -2.0, -4.0])  # heart frame, mm
_LV_APEX_DIRECTION = np.array([-0.5, 0.45, -0.75])  # towards the apex: left, anterior, inferior
_LV_BASE_FRACTION = 0.55  # base plane at this fraction of the long semi-axis from the centre
_EPICARDIAL_FAT_MM, _CHAMBER_WALL_MM, _CHEST_WALL_MM = 2.0, 1.5, 5.0


@dataclass
class HeartAnatomy:
    """The random parameters of one phantom; lengths in mm, angles in degrees.

    Chamber semi-axes: LV pool (short, short, long); RV (wide, thin towards the LV, long);
    atria along the heart frame's R, A, S. The heart pose is a rotation about R, then A, then
    S, about the heart's centre, and a RAS shift of that centre from its nominal position.
    """

    lv_semi_axes_mm: tuple[float, float, float] = (10.0, 10.0, 17.0)
    myocardium_mm: float = 4.5  # LV wall thickness
    rv_semi_axes_mm: tuple[float, float, float] = (15.0, 8.0, 17.0)
    la_semi_axes_mm: tuple[float, float, float] = (12.0, 8.0, 9.0)
    ra_semi_axes_mm: tuple[float, float, float] = (10.0, 9.0, 11.0)
    aorta_radius_mm: float = 5.5  # ascending aorta lumen
    pa_radius_mm: float = 6.0  # pulmonary trunk lumen; its branches are 0.75 of it
    heart_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    heart_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    body_semi_axes_mm: tuple[float, float] = (66.0, 46.0)  # body outline half-widths R-L, A-P
    fat_mm: float = 5.0  # subcutaneous fat thickness

    @property
    def heart_centre_ras(self) -> np.ndarray:
        """Centre of the heart frame in RAS mm, shape (3,)."""
        return _HEART_CENTRE_RAS + np.asarray(self.heart_shift_mm, dtype=np.float64)

    @property
    def heart_rotation(self) -> np.ndarray:
        """(3, 3) rotation taking heart-frame directions to RAS directions."""
        return _rotation(self.heart_rotation_deg)


@dataclass
class DemoCase:
    """A labelled cross-modality case: a CT-like target and MR-like atlases.

    Attributes:
        target: CT-like volume (HU).
        target_truth: the target's MM-WHS labels on the target's grid.
        atlases: ``(name, MR-like volume, its MM-WHS labels)``, each from its own anatomy.
    """

    target: Volume
    target_truth: LabelMap
    atlases: list[tuple[str, Volume, LabelMap]]


def _rotation(angles_deg) -> np.ndarray:
    """Rotation matrix ``Rz @ Ry @ Rx`` for angles (about R, A, S) in degrees."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def _check_type(name: str, arg: str, value, kind: type, kind_name: str) -> None:
    if not isinstance(value, kind):
        raise TypeError(f"{name}: '{arg}' must be a {kind_name}, got {type(value).__name__}")


def random_heart_anatomy(rng: np.random.Generator) -> HeartAnatomy:
    """A random anatomy from ``rng`` (same state, same anatomy): chamber sizes +-17 % with
    +-5 % anisotropy, LV wall 3.5-6 mm, heart rotated up to 12 degrees about each axis and
    shifted up to 5 mm, body +-7 %, subcutaneous fat 3-8 mm.

    Raises:
        TypeError: ``rng`` is not a ``numpy.random.Generator``.
    """
    _check_type("random_heart_anatomy()", "rng", rng, np.random.Generator, "numpy.random.Generator")
    nominal = HeartAnatomy()

    def scaled(values, low, high, size=None):
        return tuple(float(v) for v in np.ravel(np.asarray(values) * rng.uniform(low, high, size)))

    def chamber(semi_axes):
        return scaled(scaled(semi_axes, 0.83, 1.17), 0.95, 1.05, 3)

    return HeartAnatomy(
        lv_semi_axes_mm=chamber(nominal.lv_semi_axes_mm), myocardium_mm=float(rng.uniform(3.5, 6.0)),
        rv_semi_axes_mm=chamber(nominal.rv_semi_axes_mm), la_semi_axes_mm=chamber(nominal.la_semi_axes_mm),
        ra_semi_axes_mm=chamber(nominal.ra_semi_axes_mm),
        aorta_radius_mm=scaled(nominal.aorta_radius_mm, 0.85, 1.15)[0],
        pa_radius_mm=scaled(nominal.pa_radius_mm, 0.85, 1.15)[0],
        heart_rotation_deg=scaled(1.0, -12.0, 12.0, 3), heart_shift_mm=scaled(1.0, -5.0, 5.0, 3),
        body_semi_axes_mm=scaled(nominal.body_semi_axes_mm, 0.93, 1.07, 2), fat_mm=float(rng.uniform(3.0, 8.0)),
    )


def _times(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``points @ matrix`` for (N, 3) x (3, 3), as three broadcast products (much faster)."""
    return points[:, 0:1] * matrix[0] + points[:, 1:2] * matrix[1] + points[:, 2:3] * matrix[2]


def _near(points, low, high) -> np.ndarray:
    """Indices of the points inside the axis-aligned box [low, high] (a cheap pre-filter)."""
    keep = np.ones(len(points), dtype=bool)
    for axis in range(3):
        keep &= (points[:, axis] >= low[axis]) & (points[:, axis] <= high[axis])
    return np.flatnonzero(keep)


def _ellipsoid(points, centre, semi_axes, axes=None) -> np.ndarray:
    """Mask of the (N, 3) mm points inside an ellipsoid (``axes``: its axes as columns)."""
    centre, semi_axes = np.asarray(centre, dtype=np.float64), np.asarray(semi_axes, dtype=np.float64)
    near = _near(points, centre - semi_axes.max(), centre + semi_axes.max())
    local = points[near] - centre
    if axes is not None:
        local = _times(local, axes)
    local /= semi_axes
    inside = np.zeros(len(points), dtype=bool)
    inside[near] = np.einsum("ni,ni->n", local, local) <= 1.0
    return inside


def _cylinder(points, centre_xy, semi_xy) -> np.ndarray:
    """Inside an elliptic cylinder along S."""
    x, y = (points[:, 0] - centre_xy[0]) / semi_xy[0], (points[:, 1] - centre_xy[1]) / semi_xy[1]
    return x * x + y * y <= 1.0


def _tube(points, polyline, radius) -> np.ndarray:
    """Inside a tube of ``radius`` around a polyline (a union of capsules)."""
    polyline = np.asarray(polyline, dtype=np.float64)
    inside = np.zeros(len(points), dtype=bool)
    for start, end in zip(polyline[:-1], polyline[1:]):
        near = _near(points, np.minimum(start, end) - radius, np.maximum(start, end) + radius)
        segment, offset = end - start, points[near] - start
        t = np.clip(offset @ segment / (segment @ segment), 0.0, 1.0)
        offset -= t[:, None] * segment
        inside[near] |= np.einsum("ni,ni->n", offset, offset) <= radius ** 2
    return inside


def _heart_layout(anatomy: HeartAnatomy) -> dict:
    """Centres, axes and vessel polylines of the heart structures, in the heart frame (mm).

    LV axes (columns): two short axes and the long axis pointing from the apex to the base.
    """
    lv_centre, base = _LV_CENTRE, -_unit(_LV_APEX_DIRECTION)
    short1 = _unit(np.cross([0.0, 0.0, 1.0], base))
    lv_axes = np.stack([short1, np.cross(base, short1), base], axis=1)
    (lv_a, _, lv_long), wall = anatomy.lv_semi_axes_mm, anatomy.myocardium_mm
    rv_thin = anatomy.rv_semi_axes_mm[1]
    toward_rv = _unit(np.array([1.0, 0.9, 0.0]) - np.dot([1.0, 0.9, 0.0], base) * base)
    rv_axes = np.stack([np.cross(toward_rv, base), toward_rv, base], axis=1)
    rv_centre = lv_centre + (lv_a + wall + 0.5 * rv_thin) * toward_rv + 1.0 * base
    base_point = lv_centre + _LV_BASE_FRACTION * lv_long * base
    aorta_root = base_point + np.array([3.0, 4.0, 1.0])
    pa_fork = np.array([-11.0, 3.0, 25.0])
    return {
        "lv": (lv_centre, lv_axes), "rv": (rv_centre, rv_axes),
        "la": base_point + np.array([1.5, -4.5 - 0.4 * anatomy.la_semi_axes_mm[1], 5.5]),
        "ra": rv_centre + np.array([9.0, -10.0, 11.0]),
        "aorta": [aorta_root, aorta_root + np.array([3.0, 1.0, 30.0])],
        "pa": [rv_centre + np.array([-8.0, 3.0, 10.0]), pa_fork],
        "pa_branches": [[pa_fork, [-24.0, -6.0, 24.0]], [pa_fork, [-2.0, -14.0, 24.0], [16.0, -14.0, 22.0]]],
    }


def _paint_thorax(out: np.ndarray, p: np.ndarray, anatomy: HeartAnatomy) -> None:
    """Body, fat, chest wall, ribs, lungs, spine, diaphragm and great veins (thorax frame)."""
    (a, b), fat, cw = anatomy.body_semi_axes_mm, anatomy.fat_mm, _CHEST_WALL_MM
    out[_cylinder(p, (0, 0), (a, b))] = Tissue.FAT
    muscle = _cylinder(p, (0, 0), (a - fat, b - fat))
    out[muscle] = Tissue.SOFT
    cavity = _cylinder(p, (0, 0), (a - fat - cw, b - fat - cw))
    out[cavity] = Tissue.LUNG
    rib_band = np.mod(p[:, 2] + 3.0, 16.0) < 5.0
    anterior = (p[:, 1] > 0) & (np.abs(p[:, 0]) < 22.0)  # costal cartilage: no bone there
    out[muscle & ~cavity & rib_band & ~anterior] = Tissue.BONE
    out[_cylinder(p, (0, b - fat - cw / 2), (9.0, 3.5))] = Tissue.BONE  # sternum
    out[cavity & _cylinder(p, (-3.0, 2.0), (14.0, b))] = Tissue.FAT  # mediastinum
    back = -b + fat
    out[muscle & _cylinder(p, (0, back + 8.0), (28.0, 14.0))] = Tissue.SOFT  # paraspinal
    out[cavity & _ellipsoid(p, (8.0, -2.0, -60.0), (60.0, 48.0, 36.0))] = Tissue.SOFT  # liver dome
    out[_cylinder(p, (0, back + 26.0), (8.0, 8.0))] = Tissue.BONE  # vertebral body
    out[_cylinder(p, (0, back + 13.0), (6.5, 6.5))] = Tissue.BONE  # neural arch
    out[(np.abs(p[:, 0]) < 2.5) & (p[:, 1] > back + 2.0) & (p[:, 1] < back + 13.0)] = Tissue.BONE  # spinous
    out[_cylinder(p, (0, back + 13.0), (3.5, 3.5))] = Tissue.SOFT  # spinal canal
    _paint_great_vessels(out, p, anatomy, back)


def _paint_great_vessels(out, p, anatomy: HeartAnatomy, back: float) -> None:
    """Unlabelled blood: descending aorta, aortic arch, superior and inferior vena cava."""
    layout = _heart_layout(anatomy)
    rotation, centre = anatomy.heart_rotation, anatomy.heart_centre_ras
    descending_top = np.array([-16.0, back + 30.0, 40.0])
    out[_tube(p, [descending_top, descending_top - [0.0, 0.0, 300.0]], 6.0)] = Tissue.BLOOD
    arch_start = rotation @ layout["aorta"][1] + centre
    arch_middle = (arch_start + descending_top) / 2 + np.array([0.0, 0.0, 7.0])
    out[_tube(p, [arch_start, arch_middle, descending_top], 0.9 * anatomy.aorta_radius_mm)] = Tissue.BLOOD
    ra = rotation @ layout["ra"] + centre
    out[_tube(p, [ra, ra + np.array([2.0, 0.0, 200.0])], 5.0)] = Tissue.BLOOD  # SVC
    out[_tube(p, [ra, ra + np.array([0.0, -2.0, -200.0])], 6.0)] = Tissue.BLOOD  # IVC


def _paint_heart(out: np.ndarray, p_ras: np.ndarray, anatomy: HeartAnatomy) -> None:
    """The heart: epicardial fat, walls, chambers, LV myocardium and pool, aorta, PA."""
    p = _times(p_ras - anatomy.heart_centre_ras, anatomy.heart_rotation)  # heart frame
    layout = _heart_layout(anatomy)
    (lv_centre, lv_axes), (rv_centre, rv_axes) = layout["lv"], layout["rv"]
    lv_cavity = np.asarray(anatomy.lv_semi_axes_mm)
    lv_outer, base_t = lv_cavity + anatomy.myocardium_mm, _LV_BASE_FRACTION * lv_cavity[2]
    below_base = (p - lv_centre) @ lv_axes[:, 2] <= base_t  # the LV is open above its base plane
    chambers = [(rv_centre, anatomy.rv_semi_axes_mm, rv_axes, Tissue.RIGHT_VENTRICLE),
                (layout["ra"], anatomy.ra_semi_axes_mm, None, Tissue.RIGHT_ATRIUM),
                (layout["la"], anatomy.la_semi_axes_mm, None, Tissue.LEFT_ATRIUM)]
    vessels = [(layout["aorta"], anatomy.aorta_radius_mm, Tissue.ASCENDING_AORTA),
               (layout["pa"], anatomy.pa_radius_mm, Tissue.PULMONARY_ARTERY)]
    vessels += [(branch, 0.75 * anatomy.pa_radius_mm, Tissue.PULMONARY_ARTERY)
                for branch in layout["pa_branches"]]
    margin = _CHAMBER_WALL_MM + _EPICARDIAL_FAT_MM
    out[_ellipsoid(p, lv_centre, lv_outer + _EPICARDIAL_FAT_MM, lv_axes) & below_base] = Tissue.FAT
    for extra, tissue in ((margin, Tissue.FAT), (_CHAMBER_WALL_MM, Tissue.SOFT)):
        for centre, semi_axes, axes, _ in chambers:
            out[_ellipsoid(p, centre, np.asarray(semi_axes) + extra, axes)] = tissue
        for polyline, radius, _ in vessels:
            out[_tube(p, polyline, radius + extra)] = tissue
    for centre, semi_axes, axes, tissue in chambers:
        out[_ellipsoid(p, centre, semi_axes, axes)] = tissue
    out[_ellipsoid(p, lv_centre, lv_outer, lv_axes) & below_base] = Tissue.LV_MYOCARDIUM
    out[_ellipsoid(p, lv_centre, lv_cavity, lv_axes) & below_base] = Tissue.LV_BLOOD_POOL
    for polyline, radius, tissue in vessels:
        out[_tube(p, polyline, radius)] = tissue


def tissue_at(anatomy: HeartAnatomy, points_ras: np.ndarray) -> np.ndarray:
    """The (N,) int32 :class:`Tissue` classes at (N, 3) RAS points in mm.

    Raises:
        ValueError: ``points_ras`` is not (N, 3).
    """
    points = np.asarray(points_ras, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"tissue_at(): 'points_ras' must be (N, 3), got {points.shape}")
    out = np.full(len(points), int(Tissue.AIR), dtype=np.int32)
    _paint_thorax(out, points, anatomy)
    _paint_heart(out, points, anatomy)
    return out


def _grid_points(grid: Grid) -> np.ndarray:
    """RAS mm of every voxel centre, (K*J*I, 3), in the KJI array's C order."""
    columns, origin = grid.ijk_to_ras[:3, :3], grid.ijk_to_ras[:3, 3]
    size_k, size_j, size_i = grid.shape
    k = np.arange(size_k, dtype=np.float64)[:, None, None, None] * columns[:, 2] + origin
    j = np.arange(size_j, dtype=np.float64)[None, :, None, None] * columns[:, 1]
    i = np.arange(size_i, dtype=np.float64)[None, None, :, None] * columns[:, 0]
    return (k + j + i).reshape(-1, 3)


def heart_tissue_map(anatomy: HeartAnatomy, grid: Grid) -> np.ndarray:
    """The phantom's :class:`Tissue` classes at the voxel centres of any ``grid``.

    Returns:
        int32 KJI array of shape ``grid.shape``.

    Raises:
        TypeError: ``anatomy`` or ``grid`` has the wrong type.
    """
    _check_type("heart_tissue_map()", "anatomy", anatomy, HeartAnatomy, "HeartAnatomy")
    _check_type("heart_tissue_map()", "grid", grid, Grid, "crossmodalmas.volume.Grid")
    return tissue_at(anatomy, _grid_points(grid)).reshape(grid.shape)


def _check_tissue(name: str, tissue, grid: Grid) -> np.ndarray:
    tissue = np.asarray(tissue)
    if tissue.shape != grid.shape or not np.issubdtype(tissue.dtype, np.integer):
        raise ValueError(f"{name}: 'tissue' must be an integer array of the grid's shape {grid.shape}, "
                         f"got {tissue.dtype} {tissue.shape}")
    if tissue.size and (tissue.min() < 0 or tissue.max() > max(Tissue)):
        raise ValueError(f"{name}: 'tissue' values must be Tissue classes 0..{int(max(Tissue))}, "
                         f"got {tissue.min()}..{tissue.max()}")
    return tissue


def tissue_to_labels(tissue: np.ndarray, grid: Grid) -> LabelMap:
    """MM-WHS labels (0 for the unlabelled tissues) of a tissue map sampled on ``grid``.

    Returns:
        A :class:`~crossmodalmas.volume.LabelMap` on ``grid``, values in {0, 205, ..., 850}.

    Raises:
        TypeError: ``grid`` is not a Grid.
        ValueError: ``tissue`` is not an int array of ``grid.shape`` or holds unknown classes.
    """
    _check_type("tissue_to_labels()", "grid", grid, Grid, "crossmodalmas.volume.Grid")
    tissue = _check_tissue("tissue_to_labels()", tissue, grid)
    lookup = np.zeros(int(max(Tissue)) + 1, dtype=np.int32)
    for cls, code in TISSUE_TO_MMWHS.items():
        lookup[cls] = code
    return LabelMap(lookup[tissue], grid.ijk_to_ras)


def _blur(array: np.ndarray, sigma_vox) -> np.ndarray:
    """Separable Gaussian blur (numpy only), sigma in voxels per array axis, edges replicated."""
    for axis, sigma in enumerate(sigma_vox):
        if sigma < 0.2:
            continue
        radius = int(np.ceil(3.0 * sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps /= taps.sum()
        padded = np.pad(array, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="edge")
        length = array.shape[axis]
        array = sum(w * np.take(padded, np.arange(n, n + length), axis=axis) for n, w in enumerate(taps))
    return array


def _bias_field(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field: exp of a random quadratic in RAS mm / 80 about the grid's centre."""
    points = _grid_points(grid)
    u = (points - points.mean(axis=0)) / 80.0
    terms = np.concatenate([u, u ** 2, u[:, [0, 0, 1]] * u[:, [1, 2, 2]]], axis=1)
    log_field = np.clip(terms @ rng.normal(0.0, _MR_BIAS_STD, size=9), -0.5, 0.5)
    return np.exp(log_field).reshape(grid.shape)


def render(tissue: np.ndarray, grid: Grid, modality: str, rng: np.random.Generator) -> Volume:
    """Render a tissue map as a CT-like or MR-like image.

    ``'ct'``: Hounsfield-like (air -1000, lung -850, fat -100, soft tissue 40, myocardium 45,
    contrast blood 300 left / 260 right heart, bone 700), Gaussian blur 0.7 mm, noise 20 HU.
    ``'mr'``: bSSFP-like, arbitrary units (blood ~950 and fat ~850 bright, myocardium ~200 and
    muscle ~280 dark, lung/air dark), blur 0.6 mm, a smooth multiplicative bias field
    (exp of a random quadratic, within e^+-0.5), Rician noise (sigma 25). Every tissue's mean
    is jittered per call, so no two renders share a contrast. Fat is darker than myocardium in
    CT and brighter in MR: the two contrasts do not map onto each other monotonically.

    Args:
        tissue: KJI int array of :class:`Tissue` values on ``grid`` (blur widths are in mm).
        modality: ``'ct'`` or ``'mr'`` (case-insensitive) or a :class:`Modality`.
        rng: draws the jitter, bias field and noise.

    Returns:
        A float32 :class:`~crossmodalmas.volume.Volume` on ``grid``.

    Raises:
        ValueError: unknown ``modality``; ``tissue`` not of the grid's shape or not Tissue classes.
        TypeError: ``grid`` or ``rng`` of the wrong type.
    """
    try:
        modality = Modality(modality.lower() if isinstance(modality, str) else modality)
    except (ValueError, AttributeError) as error:
        raise ValueError(f"render(): 'modality' must be 'ct' or 'mr', got {modality!r}") from error
    _check_type("render()", "grid", grid, Grid, "crossmodalmas.volume.Grid")
    tissue = _check_tissue("render()", tissue, grid)
    _check_type("render()", "rng", rng, np.random.Generator, "numpy.random.Generator")
    ct = modality is Modality.CT
    means = rng.normal(_CT_MEAN, _CT_JITTER) if ct else rng.normal(_MR_MEAN, _MR_JITTER)
    blur_mm = _CT_BLUR_MM if ct else _MR_BLUR_MM
    image = _blur(means[tissue], blur_mm / grid.spacing_kji)
    if ct:
        image = image + rng.normal(0.0, _CT_NOISE_HU, size=image.shape)
    else:
        image = np.maximum(image, 0.0) * _bias_field(grid, rng)
        real = image + rng.normal(0.0, _MR_NOISE, size=image.shape)
        image = np.hypot(real, rng.normal(0.0, _MR_NOISE, size=image.shape))
    return Volume(image.astype(np.float32), grid.ijk_to_ras)


def make_grid(shape, spacing_mm, rotation_deg=(0.0, 0.0, 0.0), centre_ras=(0.0, 0.0, 0.0),
              *, axes: str = "LPS") -> Grid:
    """An oriented grid whose centre voxel position is ``centre_ras``.

    Args:
        shape: array shape (K, J, I), slowest axis first, as :class:`Grid` holds it.
        spacing_mm: voxel size along (i, j, k) in mm.
        rotation_deg: rotation about R, then A, then S, in degrees, about the grid's centre.
        centre_ras: RAS mm of the grid's centre (the midpoint of its corner voxel centres).
        axes: directions of i, j, k before the rotation: ``"LPS"`` (the DICOM and ITK
            default: i to the left, j to posterior, k to superior) or ``"RAS"``.

    Raises:
        ValueError: a shape or spacing that is not 3 positive values, or unknown ``axes``.
    """
    shape = tuple(int(s) for s in np.ravel(shape))
    spacing = np.asarray(spacing_mm, dtype=np.float64).ravel()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"make_grid(): 'shape' must be 3 positive sizes (K, J, I), got {shape}")
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"make_grid(): 'spacing_mm' must be 3 positive values (i, j, k), got {spacing_mm}")
    signs = {"LPS": (-1.0, -1.0, 1.0), "RAS": (1.0, 1.0, 1.0)}.get(str(axes).upper())
    if signs is None:
        raise ValueError(f"make_grid(): 'axes' must be 'LPS' or 'RAS', got {axes!r}")
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = _rotation(rotation_deg) @ np.diag(signs) @ np.diag(spacing)
    middle_ijk = (np.array(shape[::-1], dtype=np.float64) - 1.0) / 2.0
    ijk_to_ras[:3, 3] = np.asarray(centre_ras, dtype=np.float64) - ijk_to_ras[:3, :3] @ middle_ijk
    return Grid(shape, ijk_to_ras)


def demo_case(seed: int = 0, n_atlases: int = 4) -> DemoCase:
    """A labelled cross-modality demo case: one CT-like target, ``n_atlases`` MR-like atlases.

    Target: 1.0 x 1.0 x 1.6 mm (i, j, k), shape (K, J, I) = (64, 96, 108) (about 108 x 96 x
    102 mm), LPS axes rotated by up to 6 degrees about each of R, A, S, centred within 3 mm of
    the body axis. Atlases ``phantom-mr-01, ...``: 1.4 mm isotropic, shape (68, 68, 72) (about
    101 x 95 x 95 mm), rotated by up to 10 degrees about each axis, centred within 4 mm of
    their own heart, each its own anatomy. Every volume is < 110^3 voxels. Each part draws from
    its own child of ``numpy.random.SeedSequence(seed)``: the target does not depend on
    ``n_atlases``.

    Raises:
        ValueError: ``seed`` < 0 or ``n_atlases`` < 1, or either not an integer.
    """
    for arg, value, minimum in (("seed", seed, 0), ("n_atlases", n_atlases, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"demo_case(): '{arg}' must be an integer >= {minimum}, got {value!r}")
    streams = [np.random.default_rng(child) for child in np.random.SeedSequence(int(seed)).spawn(1 + n_atlases)]
    rng = streams[0]
    anatomy = random_heart_anatomy(rng)
    grid = make_grid((64, 96, 108), (1.0, 1.0, 1.6), rng.uniform(-6.0, 6.0, size=3),
                     rng.uniform(-3.0, 3.0, size=3) + np.array([0.0, 0.0, anatomy.heart_shift_mm[2]]))
    tissue = heart_tissue_map(anatomy, grid)
    target, truth = render(tissue, grid, Modality.CT, rng), tissue_to_labels(tissue, grid)
    atlases = []
    for index, rng in enumerate(streams[1:]):
        anatomy = random_heart_anatomy(rng)
        grid = make_grid((68, 68, 72), (1.4, 1.4, 1.4), rng.uniform(-10.0, 10.0, size=3),
                         anatomy.heart_centre_ras + rng.uniform(-4.0, 4.0, size=3))
        tissue = heart_tissue_map(anatomy, grid)
        atlases.append((f"phantom-mr-{index + 1:02d}", render(tissue, grid, Modality.MR, rng),
                        tissue_to_labels(tissue, grid)))
    return DemoCase(target, truth, atlases)
