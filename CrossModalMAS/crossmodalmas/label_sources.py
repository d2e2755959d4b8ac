"""Where the label maps of synthetic training and evaluation come from, with a fixed split.

Five sources (:class:`LabelSource`): real label maps from files (``brain``: SynthSeg training
maps, 256^3 at 1 mm, ~53 FreeSurfer labels; ``prostate``: MSD Task05 zones, e.g. 0.6 x 0.6 x 4
mm) found under ``<data_root>/labelmaps/``, and parametric ones drawn afresh every time
(``heart``: :mod:`crossmodalmas.phantoms`; ``abdomen``: :mod:`crossmodalmas.abdomen_phantom`;
``shapes``: :mod:`crossmodalmas.random_shapes`). :class:`LabelMapBank` turns them into maps
for :mod:`crossmodalmas.synth`: every map is an int64 tensor of exactly the requested shape
with contiguous labels 0..K-1 (0 = background, air), ``K <= max_labels``.

**The split is fixed** and never depends on a caller's seed:

* File sources: the ``*.nii.gz`` names of a folder, sorted; the file at sorted index ``i`` is
  EVAL when ``i % 5 == 4`` (every 5th file), TRAIN otherwise. A TRAIN bank never loads an
  EVAL file.
* Parametric sources: a map is a function of its integer seed. EVAL maps use the seeds
  ``EVAL_SEED_START + i`` (``1_000_000, 1_000_001, ...``); TRAIN draws seeds in
  ``[0, EVAL_SEED_START)`` from the caller's generator, so no TRAIN draw is an EVAL map.

Geometry: file maps are turned to LPS axes (``SimpleITK.DICOMOrient``; array axes (D, H, W) =
(S, P, L)), cropped to their foreground box plus a margin, resampled by nearest neighbour to an
*isotropic* spacing (the largest that fits the box in ``shape``, so the physical aspect ratio
is kept) and centred in ``shape`` with zero padding. Parametric maps are painted on an
isotropic LPS grid of ``shape`` whose field of view covers the anatomy (heart 150 mm, abdomen
350 mm R-L). The heart keeps the phantom's unlabelled tissue classes (fat, soft tissue, lung,
bone, blood) as labels of their own besides its seven MM-WHS structures: real anatomy
around the heart gives a registration more to hold on to than random shapes would.

Background texture (``background_shapes > 0``): that many random-shape labels
(:func:`~crossmodalmas.random_shapes.fill_background`) fill the voxels that have no structure
but are inside the anatomy, so few-label maps have texture everywhere, while the true outside
(air) stays 0. *Inside* is, for file maps, the foreground dilated by the source's fill margin
(prostate 20 mm: tissue around the gland; brain 0 mm: the whole-head maps already cover the
head, so only their holes and merged labels fill) with holes filled; for the abdomen, its
"other soft tissue" (code 101: bowel, mesentery, vessels); the heart and shapes maps have no
such voxels. Labels beyond the cap are merged into background first (smallest first), so
the structures keep at most ``max_labels - background_shapes`` labels, background included.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from crossmodalmas.abdomen_phantom import ABDOMEN_FOV_MM, AbdomenLabel, abdomen_label_map, random_abdomen_anatomy
from crossmodalmas.phantoms import Tissue, heart_tissue_map, make_grid, random_heart_anatomy, tissue_to_labels
from crossmodalmas.random_shapes import _check_generator, _check_int, _check_shape, fill_background, random_shapes
from crossmodalmas.volume import read_image

EVAL_SEED_START = 1_000_000
EVAL_EVERY = 5  # sorted file index i is EVAL when i % EVAL_EVERY == EVAL_EVERY - 1
_HEART_FOV_MM = (150.0, 150.0, 150.0)
_HEART_TISSUE_CODE = 1000  # unlabelled heart-phantom tissue t -> label 1000 + t
_SHAPES_LABELS = (8, 26)  # the shapes source draws K in this range (capped by max_labels)


class LabelSource(str, enum.Enum):
    """Where a label map comes from (see the module docstring)."""

    BRAIN = "brain"
    PROSTATE = "prostate"
    HEART = "heart"
    ABDOMEN = "abdomen"
    SHAPES = "shapes"


class Split(str, enum.Enum):
    """The fixed split: TRAIN maps are trained on, EVAL maps never are."""

    TRAIN = "train"
    EVAL = "eval"


@dataclass(frozen=True)
class _FileSource:
    folder: str  # under <data_root>/labelmaps/
    margin_mm: float  # crop margin around the foreground box
    fill_mm: float  # background within this distance of the foreground gets random shapes


_FILE_SOURCES = {LabelSource.BRAIN: _FileSource("synthseg_brain", 4.0, 0.0),
                 LabelSource.PROSTATE: _FileSource("msd_prostate", 20.0, 20.0)}


def split_files(folder: Path, split: Split) -> list[Path]:
    """The ``*.nii.gz`` files of ``folder`` in ``split``: sorted by name, every 5th is EVAL."""
    files = sorted(Path(folder).glob("*.nii.gz"), key=lambda p: p.name)
    return [f for i, f in enumerate(files) if (i % EVAL_EVERY == EVAL_EVERY - 1) == (Split(split) is Split.EVAL)]


def _contiguous(labels: np.ndarray, max_values: int) -> np.ndarray:
    """Labels as 0..K-1 in the order of their values (0 stays 0), ``K <= max_values``: the
    smallest foreground labels (fewest voxels) are merged into background first."""
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    foreground = np.flatnonzero(values != 0)
    keep = np.zeros(len(values), dtype=bool)
    keep[foreground[np.argsort(-counts[foreground], kind="stable")[: max_values - 1]]] = True
    lookup = np.zeros(len(values), dtype=np.int64)
    lookup[keep] = np.arange(1, keep.sum() + 1)
    return lookup[inverse].reshape(labels.shape)


def _centred_indices(low: int, high: int, size_in: int, size_out: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest input indices of ``size_out`` output voxels ``step`` input voxels apart, centred
    on the input range [low, high), and which of them fall inside the input."""
    position = (low + high - 1) / 2.0 + (np.arange(size_out) - (size_out - 1) / 2.0) * step
    index = np.floor(position + 0.5).astype(np.int64)
    valid = (index >= 0) & (index < size_in)
    return np.clip(index, 0, size_in - 1), valid


def _load_file_map(path: Path, shape, spec: _FileSource, max_values: int) -> tuple[np.ndarray, np.ndarray]:
    """One file map on ``shape`` (contiguous labels, int16 or int32) and its background-fill mask."""
    image = sitk.DICOMOrient(read_image(path), "LPS")
    array, spacing = sitk.GetArrayViewFromImage(image), np.asarray(image.GetSpacing()[::-1], dtype=np.float64)
    foreground = array != 0
    if not foreground.any():
        raise ValueError(f"LabelMapBank(): {path} holds no foreground label")
    box = [np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    extent_mm = np.array([(b[-1] + 1 - b[0]) for b in box]) * spacing + 2.0 * spec.margin_mm
    step_mm = float(np.max(extent_mm / np.asarray(shape)))
    picks = [_centred_indices(b[0], b[-1] + 1, array.shape[a], shape[a], step_mm / spacing[a])
             for a, b in enumerate(box)]
    (index_d, inside_d), (index_h, inside_h), (index_w, inside_w) = picks
    inside = inside_d[:, None, None] & inside_h[None, :, None] & inside_w[None, None, :]
    out = np.where(inside, array[np.ix_(index_d, index_h, index_w)], 0)
    if not np.array_equal(out, np.round(out)):
        raise ValueError(f"LabelMapBank(): {path} holds non-integer label values")
    labels = _contiguous(out.astype(np.int64), max_values)
    fill = _fill_region(labels != 0, spec.fill_mm / step_mm) & (labels == 0)
    return labels.astype(np.int16 if max_values <= np.iinfo(np.int16).max else np.int32), fill


def _fill_region(foreground: np.ndarray, radius_voxels: float) -> np.ndarray:
    """Foreground dilated by ``radius_voxels`` (Euclidean), holes filled."""
    region = foreground
    if radius_voxels > 0.0 and foreground.any():
        region = ndimage.distance_transform_edt(~foreground) <= radius_voxels
    return ndimage.binary_fill_holes(region)


def _isotropic_grid(shape, fov_mm, centre_ras):
    spacing = float(np.max(np.asarray(fov_mm) / np.asarray(shape)))
    return make_grid(shape, (spacing,) * 3, centre_ras=centre_ras)


def _heart_map(seed: int, shape) -> tuple[np.ndarray, np.ndarray]:
    """MM-WHS structures plus the phantom's other tissues (1000 + class); nothing to fill."""
    anatomy = random_heart_anatomy(np.random.default_rng(seed))
    grid = _isotropic_grid(shape, _HEART_FOV_MM, (0.0, 0.0, anatomy.heart_centre_ras[2]))
    tissue = heart_tissue_map(anatomy, grid)
    labels = tissue_to_labels(tissue, grid).array
    other = (labels == 0) & (tissue != Tissue.AIR)
    labels[other] = _HEART_TISSUE_CODE + tissue[other]
    return labels, np.zeros(shape, dtype=bool)


def _abdomen_map(seed: int, shape, fill: bool) -> tuple[np.ndarray, np.ndarray]:
    """BTCV organs and body wall; "other soft tissue" (101) is the fill region when ``fill``."""
    anatomy = random_abdomen_anatomy(np.random.default_rng(seed))
    labels = abdomen_label_map(anatomy, _isotropic_grid(shape, ABDOMEN_FOV_MM, (0.0, 0.0, 0.0))).array
    region = labels == AbdomenLabel.OTHER_SOFT_TISSUE
    if fill:
        labels[region] = 0
    return labels, region if fill else np.zeros(shape, dtype=bool)


def _shapes_map(seed: int, shape, max_labels: int) -> torch.Tensor:
    """Random shapes, all from ``seed``: K labels, noise nodes 1/12 to 1/5 of the map apart, warped."""
    rng = np.random.default_rng(seed)
    high = min(_SHAPES_LABELS[1], max_labels)
    count = int(rng.integers(min(_SHAPES_LABELS[0], high), high + 1))
    factor = max(2, round(max(shape) / rng.uniform(5.0, 12.0)))
    generator = torch.Generator().manual_seed(seed)
    return random_shapes(shape, count, generator, coarse_factor=factor, warp_std=factor / 2.0)


def _check_sources(sources) -> tuple[LabelSource, ...]:
    if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
        raise TypeError(f"LabelMapBank(): 'sources' must be a sequence of LabelSource, got {type(sources).__name__}")
    try:
        checked = tuple(LabelSource(s) for s in sources)
    except ValueError as error:
        raise ValueError(f"LabelMapBank(): 'sources' must hold LabelSource values "
                         f"{[s.value for s in LabelSource]}, got {list(sources)!r}") from error
    if not checked:
        raise ValueError("LabelMapBank(): 'sources' must hold at least one LabelSource, got none")
    return checked


class LabelMapBank:
    """Label maps of one split from a list of sources, ready for synthetic contrasts.

    File maps are loaded, cropped, resampled and relabelled once, in the constructor, and kept
    in memory (int16, ``shape``); parametric maps are painted on every call. See the module
    docstring for the split, the geometry and the background shapes.

    Args:
        sources: the sources to draw from, uniformly (list one twice to weight it double).
        split: TRAIN or EVAL (or ``'train'`` / ``'eval'``).
        shape: (D, H, W) of every map.
        data_root: folder holding ``labelmaps/``; needed for the file sources only.
        max_labels: most labels in a map, background and background shapes included.
        background_shapes: random-shape labels that texture a map's unstructured inside (0: none).

    Raises:
        ValueError: a bad argument, a file source without ``data_root`` or its folder, a folder
            with no file of the split, an unreadable or empty label file.
        TypeError: ``sources`` is not a sequence.
    """

    def __init__(self, sources: Sequence[LabelSource], split: Split, shape: tuple[int, int, int],
                 data_root: Optional[Path] = None, max_labels: int = 64, background_shapes: int = 8):
        name = "LabelMapBank()"
        self.sources = _check_sources(sources)
        try:
            self.split = Split(split)
        except ValueError as error:
            raise ValueError(f"{name}: 'split' must be 'train' or 'eval', got {split!r}") from error
        self.shape = _check_shape(name, shape)
        self.background_shapes = _check_int(name, "background_shapes", background_shapes, 0)
        self.max_labels = _check_int(name, "max_labels", max_labels, self.background_shapes + 2)
        self._fill_coarse = max(2, round(max(self.shape) / 10))
        self._files = {source: self._load(source, data_root) for source in dict.fromkeys(self.sources)
                       if source in _FILE_SOURCES}

    def _load(self, source: LabelSource, data_root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if data_root is None:
            raise ValueError(f"LabelMapBank(): source '{source.value}' needs 'data_root' "
                             "(the folder that holds labelmaps/), got None")
        folder = Path(data_root) / "labelmaps" / _FILE_SOURCES[source].folder
        if not folder.is_dir():
            raise ValueError(f"LabelMapBank(): source '{source.value}' needs the folder {folder}, which does not exist")
        files = split_files(folder, self.split)
        if not files:
            raise ValueError(f"LabelMapBank(): source '{source.value}' folder {folder} holds no .nii.gz file "
                             f"in the '{self.split.value}' split")
        cap = self.max_labels - self.background_shapes
        return {f.name[: -len(".nii.gz")]: _load_file_map(f, self.shape, _FILE_SOURCES[source], cap) for f in files}

    def names(self, source: LabelSource) -> list[str]:
        """The loaded file maps of a file source (``'brain/training_seg_01'``, ...), sorted."""
        return [f"{LabelSource(source).value}/{key}" for key in self._files.get(LabelSource(source), {})]

    @staticmethod
    def _randint(high: int, generator: torch.Generator) -> int:
        return int(torch.randint(high, (1,), generator=generator, device=generator.device))

    def pick(self, generator: torch.Generator) -> str:
        """The name of a random map of this split: a source uniformly, then a file or a seed.

        Raises:
            TypeError: ``generator`` is not a torch.Generator.
        """
        _check_generator("LabelMapBank.pick()", generator)
        source = self.sources[self._randint(len(self.sources), generator)]
        if source in self._files:
            keys = list(self._files[source])
            return f"{source.value}/{keys[self._randint(len(keys), generator)]}"
        first = EVAL_SEED_START if self.split is Split.EVAL else 0
        return f"{source.value}/seed{first + self._randint(EVAL_SEED_START, generator)}"

    def _parse(self, name: str) -> tuple[LabelSource, str]:
        where = "LabelMapBank.make()"
        prefix, _, key = str(name).partition("/")
        if prefix not in [s.value for s in self.sources]:
            raise ValueError(f"{where}: 'name' must start with one of this bank's sources "
                             f"{sorted({s.value for s in self.sources})}, got {name!r}")
        source = LabelSource(prefix)
        if source in self._files:
            if key not in self._files[source]:
                raise ValueError(f"{where}: 'name' {name!r} is not a '{self.split.value}' map of this bank")
            return source, key
        seed = re.fullmatch(r"seed(\d+)", key)
        if seed is None or (int(seed.group(1)) >= EVAL_SEED_START) != (self.split is Split.EVAL):
            raise ValueError(f"{where}: 'name' {name!r} is not a '{self.split.value}' map: 'seed<n>' with n "
                             f"below {EVAL_SEED_START} for train, from {EVAL_SEED_START} for eval")
        return source, seed.group(1)

    def make(self, name: str, generator: torch.Generator) -> torch.Tensor:
        """The map called ``name`` (as :meth:`pick` gives), with background shapes from ``generator``.

        Returns:
            int64 tensor of ``shape`` on the generator's device, labels 0..K-1, ``K <= max_labels``.

        Raises:
            ValueError: ``name`` is not a map of this bank's sources and split.
            TypeError: ``generator`` is not a torch.Generator.
        """
        _check_generator("LabelMapBank.make()", generator)
        source, key = self._parse(name)
        device = generator.device
        if source is LabelSource.SHAPES:
            return torch.unique(_shapes_map(int(key), self.shape, self.max_labels).to(device), return_inverse=True)[1]
        if source in self._files:
            base, fill = self._files[source][key]
        elif source is LabelSource.HEART:
            base, fill = _heart_map(int(key), self.shape)
        else:
            base, fill = _abdomen_map(int(key), self.shape, self.background_shapes > 0)
        if source not in self._files:
            base = _contiguous(base, self.max_labels - self.background_shapes)
        labels = torch.from_numpy(base.astype(np.int64)).to(device)
        if self.background_shapes and fill.any():
            labels = fill_background(labels, torch.from_numpy(fill).to(device), self.background_shapes, generator,
                                     coarse_factor=self._fill_coarse)
        return torch.unique(labels, return_inverse=True)[1]

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """One random map of this split (:meth:`pick`, then :meth:`make`)."""
        return self.make(self.pick(generator), generator)

    def fixed(self, count: int) -> list[tuple[str, torch.Tensor]]:
        """A deterministic list of ``count`` (name, map) pairs for validation or evaluation.

        Item ``i`` is from ``sources[i % len(sources)]``: its next file (sorted, cycling) or its
        next seed (``seed0, seed1, ...`` for TRAIN, ``seed1000000, ...`` for EVAL); its
        background shapes are drawn with ``torch.Generator().manual_seed(i)``. CPU tensors.

        Raises:
            ValueError: ``count`` is not an integer >= 0.
        """
        _check_int("LabelMapBank.fixed()", "count", count, 0)
        out, used = [], {}
        for index in range(count):
            source = self.sources[index % len(self.sources)]
            nth = used.get(source, 0)
            used[source] = nth + 1
            if source in self._files:
                keys = list(self._files[source])
                key = keys[nth % len(keys)]
            else:
                key = f"seed{(EVAL_SEED_START if self.split is Split.EVAL else 0) + nth}"
            name = f"{source.value}/{key}"
            out.append((name, self.make(name, torch.Generator().manual_seed(index))))
        return out
