"""A parametric abdomen phantom label map with BTCV label codes, for synthetic training pairs.

Like the heart phantom of :mod:`crossmodalmas.phantoms`, the anatomy is analytic in RAS mm
(elliptic cylinders, ellipsoids and capsule tubes), so one :class:`AbdomenAnatomy` can be
painted on any :class:`~crossmodalmas.volume.Grid` and a point has the same label on every
grid. It is a label map only (no render): :mod:`crossmodalmas.synth` draws the contrasts.

Layout, in RAS (``+R`` is the patient's right, ``+A`` anterior, ``+S`` superior), origin on
the body axis at about the level of L1: a body of about 320 x 230 mm (R-L x A-P), its wall
(subcutaneous fat and muscle, plus the spine, paraspinal and psoas muscles) as one label;
liver in the right upper quadrant with a left lobe across the midline, gallbladder under the
liver's anterior-inferior edge, spleen left-upper-posterior along the lateral wall, kidneys
paravertebral and posterior (the right one lower, upper poles tilted medially), stomach
left-anterior from the fundus to the pylorus, pancreas transverse behind the stomach from its
head (right, by the duodenum) to its tail (at the splenic hilum). It fits an axial field of
view of 350 x 260 mm and 200 mm S-I (:data:`ABDOMEN_FOV_MM`). Organs are painted in a fixed
order (later ones win where two overlap) and clipped to the body cavity, so every organ is
inside the body. Numpy only; deterministic given a ``Generator``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from crossmodalmas.phantoms import _check_type, _cylinder, _ellipsoid, _grid_points, _near, _rotation, _times, _tube
from crossmodalmas.volume import Grid, LabelMap


class AbdomenLabel(enum.IntEnum):
    """Label codes of :func:`abdomen_label_map`: BTCV organ codes, then two of our own."""

    SPLEEN = 1
    RIGHT_KIDNEY = 2
    LEFT_KIDNEY = 3
    GALLBLADDER = 4
    LIVER = 6
    STOMACH = 7
    PANCREAS = 11
    BODY_WALL = 100  # subcutaneous fat, abdominal and back muscles, spine, psoas
    OTHER_SOFT_TISSUE = 101  # the rest of the body cavity (bowel, mesentery, vessels)


ABDOMEN_FOV_MM = (200.0, 260.0, 350.0)  # S-I, A-P, R-L extent the phantom is laid out in
_BODY_SEMI_AXES_MM = (160.0, 115.0)  # nominal R-L, A-P half-widths
_FAT_MM, _MUSCLE_MM = 18.0, 12.0  # nominal wall layers
_CAVITY_MM = (_BODY_SEMI_AXES_MM[0] - _FAT_MM - _MUSCLE_MM, _BODY_SEMI_AXES_MM[1] - _FAT_MM - _MUSCLE_MM)

# Nominal organs for the nominal body: RAS centre (mm), axes rotation about R, A, S (degrees),
# and primitives in the organ frame (mm from the centre): ("ellipsoid", centre, semi-axes) or
# ("tube", polyline, radius). Dict order is the paint order: later organs win overlaps.
_ORGANS = {
    AbdomenLabel.LIVER: ((60.0, 5.0, 15.0), (0.0, 0.0, 0.0), [
        ("ellipsoid", (5.0, -5.0, 0.0), (65.0, 80.0, 75.0)),
        ("ellipsoid", (-70.0, 30.0, 12.0), (50.0, 30.0, 30.0))]),
    AbdomenLabel.SPLEEN: ((-90.0, -40.0, 20.0), (0.0, 0.0, 35.0), [
        ("ellipsoid", (0.0, 0.0, 0.0), (20.0, 50.0, 45.0))]),
    AbdomenLabel.STOMACH: ((-35.0, 30.0, -5.0), (0.0, 0.0, 0.0), [
        ("ellipsoid", (-20.0, -25.0, 50.0), (35.0, 32.0, 32.0)),
        ("tube", [(-20.0, -25.0, 50.0), (-25.0, 0.0, 10.0), (-5.0, 15.0, -25.0)], 27.0),
        ("tube", [(-5.0, 15.0, -25.0), (30.0, 20.0, -30.0), (60.0, 0.0, -20.0)], 17.0)]),
    AbdomenLabel.GALLBLADDER: ((45.0, 45.0, -40.0), (20.0, 0.0, 0.0), [
        ("ellipsoid", (0.0, 0.0, 0.0), (15.0, 15.0, 32.0))]),
    AbdomenLabel.PANCREAS: ((0.0, 0.0, -15.0), (0.0, 0.0, 0.0), [
        ("ellipsoid", (30.0, -5.0, -15.0), (20.0, 15.0, 22.0)),
        ("tube", [(30.0, -5.0, -10.0), (0.0, 5.0, -5.0), (-40.0, 0.0, 5.0), (-75.0, -15.0, 20.0)], 11.0)]),
    AbdomenLabel.RIGHT_KIDNEY: ((70.0, -45.0, -40.0), (0.0, -15.0, 25.0), [
        ("ellipsoid", (0.0, 0.0, 0.0), (25.0, 20.0, 55.0))]),
    AbdomenLabel.LEFT_KIDNEY: ((-70.0, -45.0, -25.0), (0.0, 15.0, -25.0), [
        ("ellipsoid", (0.0, 0.0, 0.0), (25.0, 20.0, 55.0))]),
}


@dataclass(frozen=True)
class OrganPose:
    """Random change of one organ from its nominal shape and place.

    A point ``p`` (RAS mm) is in the organ when ``R.T @ (p - c) / scale`` is in its nominal
    shape, where ``c`` is the nominal centre (scaled with the body cavity) plus ``shift_mm``
    and ``R`` the rotation by the nominal angles plus ``rotation_deg`` (about R, A, S).
    """

    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)  # along the organ frame's axes
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class AbdomenAnatomy:
    """The random parameters of one abdomen; lengths in mm, angles in degrees.

    Attributes:
        body_semi_axes_mm: body outline half-widths R-L, A-P (an elliptic cylinder along S).
        fat_mm: subcutaneous fat thickness.
        muscle_mm: abdominal wall muscle thickness (the cavity is the body shrunk by both).
        organs: the pose of each organ, keyed by its :class:`AbdomenLabel`.
    """

    body_semi_axes_mm: tuple[float, float] = _BODY_SEMI_AXES_MM
    fat_mm: float = _FAT_MM
    muscle_mm: float = _MUSCLE_MM
    organs: dict[AbdomenLabel, OrganPose] = field(default_factory=lambda: {code: OrganPose() for code in _ORGANS})

    @property
    def cavity_semi_axes_mm(self) -> tuple[float, float]:
        """Half-widths R-L, A-P of the body cavity (inside the wall)."""
        wall = self.fat_mm + self.muscle_mm
        return self.body_semi_axes_mm[0] - wall, self.body_semi_axes_mm[1] - wall


def random_abdomen_anatomy(rng: np.random.Generator) -> AbdomenAnatomy:
    """A random abdomen from ``rng`` (same state, same anatomy): body +-7 %, fat 10-28 mm,
    muscle 8-14 mm; each organ shifted up to 8 mm along each axis, scaled by 0.85-1.15 with
    +-6 % anisotropy, and rotated by up to 8 degrees about each axis.

    Raises:
        TypeError: ``rng`` is not a ``numpy.random.Generator``.
    """
    _check_type("random_abdomen_anatomy()", "rng", rng, np.random.Generator, "numpy.random.Generator")

    def floats(values) -> tuple[float, ...]:
        return tuple(float(v) for v in np.ravel(values))

    organs = {code: OrganPose(shift_mm=floats(rng.uniform(-8.0, 8.0, 3)),
                              scale=floats(rng.uniform(0.85, 1.15) * rng.uniform(0.94, 1.06, 3)),
                              rotation_deg=floats(rng.uniform(-8.0, 8.0, 3)))
              for code in _ORGANS}
    return AbdomenAnatomy(body_semi_axes_mm=floats(np.asarray(_BODY_SEMI_AXES_MM) * rng.uniform(0.93, 1.07, 2)),
                          fat_mm=float(rng.uniform(10.0, 28.0)), muscle_mm=float(rng.uniform(8.0, 14.0)),
                          organs=organs)


def _primitive(local: np.ndarray, primitive) -> np.ndarray:
    kind, where, size = primitive
    return _ellipsoid(local, where, size) if kind == "ellipsoid" else _tube(local, where, size)


def _reach(primitive) -> float:
    """Distance from the organ centre that bounds a primitive (organ frame, mm)."""
    kind, where, size = primitive
    if kind == "ellipsoid":
        return float(np.linalg.norm(where) + np.max(size))
    return float(np.max(np.linalg.norm(np.asarray(where), axis=1)) + size)


def _organ_mask(points: np.ndarray, anatomy: AbdomenAnatomy, code: AbdomenLabel) -> np.ndarray:
    """Mask of the (N, 3) RAS mm points inside one organ (not yet clipped to the cavity)."""
    centre, angles, primitives = _ORGANS[code]
    pose = anatomy.organs[code]
    ratio = np.array([*np.divide(anatomy.cavity_semi_axes_mm, _CAVITY_MM), 1.0])
    centre = np.asarray(centre) * ratio + np.asarray(pose.shift_mm)
    scale = np.asarray(pose.scale, dtype=np.float64)
    reach = max(_reach(p) for p in primitives) * scale.max()
    near = _near(points, centre - reach, centre + reach)
    local = _times(points[near] - centre, _rotation(np.add(angles, pose.rotation_deg))) / scale
    inside = np.zeros(len(points), dtype=bool)
    inside[near] = np.logical_or.reduce([_primitive(local, p) for p in primitives])
    return inside


def _paint_body(out: np.ndarray, p: np.ndarray, anatomy: AbdomenAnatomy) -> np.ndarray:
    """Body wall and cavity; returns the cavity mask. Spine and muscles bulge into the cavity."""
    (a, b), (ca, cb) = anatomy.body_semi_axes_mm, anatomy.cavity_semi_axes_mm
    out[_cylinder(p, (0.0, 0.0), (a, b))] = AbdomenLabel.BODY_WALL
    cavity = _cylinder(p, (0.0, 0.0), (ca, cb))
    out[cavity] = AbdomenLabel.OTHER_SOFT_TISSUE
    back = -cb
    posterior = [((0.0, back + 22.0), (18.0, 16.0))]  # vertebral body
    for side in (-1.0, 1.0):
        posterior += [((side * 35.0, back + 2.0), (28.0, 20.0)),  # paraspinal muscles
                      ((side * 36.0, back + 28.0), (14.0, 14.0))]  # psoas
    for centre, semi in posterior:
        out[_cylinder(p, centre, semi)] = AbdomenLabel.BODY_WALL
    return cavity


def _labels_at(anatomy: AbdomenAnatomy, points: np.ndarray) -> np.ndarray:
    """The (N,) int32 :class:`AbdomenLabel` codes (0 outside the body) at (N, 3) RAS mm points."""
    out = np.zeros(len(points), dtype=np.int32)
    cavity = _paint_body(out, points, anatomy)
    for code in _ORGANS:
        out[_organ_mask(points, anatomy, code) & cavity] = code
    return out


def abdomen_label_map(anatomy: AbdomenAnatomy, grid: Grid) -> LabelMap:
    """The phantom's labels at the voxel centres of any ``grid``.

    Args:
        anatomy: from :func:`random_abdomen_anatomy` (or ``AbdomenAnatomy()``, the nominal one).
        grid: any grid; the phantom is centred on RAS (0, 0, 0), see :data:`ABDOMEN_FOV_MM`.

    Returns:
        A :class:`~crossmodalmas.volume.LabelMap` on ``grid`` (int32), values 0 (outside the
        body) or an :class:`AbdomenLabel` code.

    Raises:
        TypeError: ``anatomy`` or ``grid`` has the wrong type.
        ValueError: ``anatomy`` lacks an organ's pose or its body is thinner than its wall.
    """
    name = "abdomen_label_map()"
    _check_type(name, "anatomy", anatomy, AbdomenAnatomy, "AbdomenAnatomy")
    _check_type(name, "grid", grid, Grid, "crossmodalmas.volume.Grid")
    missing = sorted(code.name for code in _ORGANS if code not in anatomy.organs)
    if missing:
        raise ValueError(f"{name}: 'anatomy' has no pose for {', '.join(missing)}")
    if min(anatomy.cavity_semi_axes_mm) <= 0.0:
        raise ValueError(f"{name}: 'anatomy' body {anatomy.body_semi_axes_mm} mm must be wider than its wall "
                         f"(fat + muscle = {anatomy.fat_mm + anatomy.muscle_mm} mm)")
    return LabelMap(_labels_at(anatomy, _grid_points(grid)).reshape(grid.shape), grid.ijk_to_ras)
