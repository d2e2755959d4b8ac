"""A PNG overview of a segmentation: orthogonal slices of the target with label contours.

Row 1 shows the target (grey) with the ground-truth contours (solid) and the result contours
(dashed), one colour per label; row 2, when a warped atlas is given, shows that atlas
resampled onto the target grid with the result contours. Columns: axial, coronal, sagittal
slices through the centre of the result's foreground.

Slices are cut from the voxel arrays (no reslicing): each view takes the array axis closest to
its normal, then transposes/flips the slice so that it looks radiological (patient right on the
image's left, anterior or superior at the top, anterior on the left in sagittal views). Pixel
aspect follows the voxel spacing. Titles name the array axes shown.

matplotlib is used through an Agg canvas object only (no pyplot, no ``matplotlib.use``), so
importing or calling this module never changes a global backend.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from crossmodalmas.atomic import atomic_path
from crossmodalmas.errors import InputError
from crossmodalmas.label_names import label_name
from crossmodalmas.volume import Grid, LabelMap, Volume, to_sitk

_ARRAY_AXIS_NAMES = "kji"  # array axis 0, 1, 2 of a KJI array
_RAS_LETTERS = ("RL", "AP", "SI")  # (positive end, negative end) of R, A, S
# view name, normal RAS axis, vertical RAS axis, horizontal RAS axis
_VIEWS = (("axial", 2, 1, 0), ("coronal", 1, 2, 0), ("sagittal", 0, 2, 1))
_MMWHS_COLOURS = {205: "tab:orange", 420: "tab:green", 500: "tab:red", 550: "tab:purple",
                  600: "tab:blue", 820: "tab:pink", 850: "tab:olive"}
_OTHER_COLOURS = ("tab:cyan", "gold", "lime", "magenta", "tab:brown", "deepskyblue", "salmon", "white")


def _array_axes_of_ras(ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For R, A, S: the array axis (0=k, 1=j, 2=i) closest to it and the sign of that axis.

    The assignment is the permutation of i, j, k that best aligns with R, A, S, so every RAS
    axis gets its own array axis even for oblique grids.
    """
    direction = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    best = max(itertools.permutations(range(3)),
               key=lambda perm: sum(abs(direction[ras, ijk]) for ras, ijk in enumerate(perm)))
    ijk_columns = np.array(best)  # ijk column for R, A, S
    signs = np.array([np.sign(direction[ras, col]) or 1.0 for ras, col in enumerate(ijk_columns)])
    return 2 - ijk_columns, signs


def _view_slice(array: np.ndarray, grid: Grid, view, centre_kji) -> tuple[np.ndarray, float, str]:
    """A 2-D radiological-looking slice of a KJI array, its pixel aspect and a title."""
    name, normal, vertical, horizontal = view
    axes, signs = _array_axes_of_ras(grid.ijk_to_ras)
    index = int(centre_kji[axes[normal]])
    plane = np.take(array, index, axis=axes[normal])
    remaining = [a for a in range(3) if a != axes[normal]]
    if remaining[0] != axes[vertical]:
        plane = plane.T
    if signs[vertical] > 0:  # want the positive end (A or S) at the top
        plane = plane[::-1, :]
    if signs[horizontal] > 0:  # want the positive end (R or A) at the left
        plane = plane[:, ::-1]
    spacing = grid.spacing_kji
    aspect = float(spacing[axes[vertical]] / spacing[axes[horizontal]])
    v_name, h_name = _ARRAY_AXIS_NAMES[axes[vertical]], _ARRAY_AXIS_NAMES[axes[horizontal]]
    v_from, v_to = _RAS_LETTERS[vertical]
    h_from, h_to = _RAS_LETTERS[horizontal]
    title = (f"{name} {_ARRAY_AXIS_NAMES[axes[normal]]}={index}\n"
             f"rows {v_name}: {v_from} to {v_to}, cols {h_name}: {h_from} to {h_to}")
    return plane, aspect, title


def _reference(grid: Grid) -> sitk.Image:
    return to_sitk(np.zeros(grid.shape, dtype=np.uint8), grid.ijk_to_ras)


def _labels_on(labels: LabelMap, grid: Grid) -> np.ndarray:
    """Label array on ``grid``: as is when the grids match, else nearest-neighbour in RAS."""
    if labels.grid.same_as(grid):
        return labels.array
    moved = sitk.Resample(to_sitk(labels.array, labels.ijk_to_ras), _reference(grid),
                          sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
    return sitk.GetArrayFromImage(moved)


def _volume_on(volume: Volume, grid: Grid) -> np.ndarray:
    """Intensity array on ``grid``: physical-space linear resampling, outside = the minimum."""
    if volume.grid.same_as(grid):
        return volume.array
    outside = float(np.min(volume.array)) if volume.array.size else 0.0
    moved = sitk.Resample(to_sitk(volume.array, volume.ijk_to_ras), _reference(grid),
                          sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(moved)


def _foreground_centre(labels: np.ndarray) -> np.ndarray:
    """Rounded centroid (k, j, i) of the non-zero voxels; the array centre when there are none."""
    indices = np.argwhere(labels != 0)
    if len(indices) == 0:
        return np.array(labels.shape) // 2
    return np.round(indices.mean(axis=0)).astype(int)


def _colours(values) -> dict[int, str]:
    others = iter(itertools.cycle(_OTHER_COLOURS))
    return {v: _MMWHS_COLOURS[v] if v in _MMWHS_COLOURS else next(others) for v in values}


def _window(array: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Grey window: 1st-99th percentile in a box around the labelled region (whole image if none).

    The box is the foreground's bounding box grown by half its size on each side, so the window
    suits the organ and its surroundings rather than air or bone far away (any modality).
    """
    indices = np.argwhere(labels != 0)
    if len(indices):
        low, high = indices.min(axis=0), indices.max(axis=0) + 1
        margin = (high - low) // 2
        box = tuple(slice(max(a - m, 0), b + m) for a, b, m in zip(low, high, margin))
        array = array[box]
    low, high = np.percentile(array, [1.0, 99.0])
    return float(low), float(high if high > low else low + 1.0)


def _draw_panel(ax, image, window, contour_sets, title) -> None:
    """One slice: grey image, then (label plane, colours, line style) contour sets over it."""
    ax.imshow(image[0], cmap="gray", vmin=window[0], vmax=window[1], aspect=image[1],
              interpolation="nearest")
    for plane, colours, style in contour_sets:
        for value, colour in colours.items():
            mask = (plane == value).astype(np.float32)
            if 0 < mask.sum() < mask.size:
                ax.contour(mask, levels=[0.5], colors=[colour], linestyles=style, linewidths=1.2)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _check_inputs(target, truth, result, warped_atlas) -> None:
    name = "write_overview()"
    for arg, value, kind, optional in (("target", target, Volume, False), ("truth", truth, LabelMap, True),
                                       ("result", result, LabelMap, False),
                                       ("warped_atlas", warped_atlas, Volume, True)):
        if value is None and optional:
            continue
        if not isinstance(value, kind):
            expected = f"a {kind.__name__}" + (" or None" if optional else "")
            raise TypeError(f"{name}: '{arg}' must be {expected}, got {type(value).__name__}")
        if value.array.ndim != 3 or value.array.size == 0:
            raise ValueError(f"{name}: '{arg}' must be a non-empty 3-D array, got shape {value.array.shape}")


def _draw_rows(figure, rows, grid: Grid, result_plane: np.ndarray, colours: dict[int, str]) -> None:
    """One row per (image, name, [(labels or None, line style)]), one column per view."""
    centre = _foreground_centre(result_plane)
    for r, (image, row_name, overlays) in enumerate(rows):
        window = _window(image, result_plane)
        for c, view in enumerate(_VIEWS):
            plane, aspect, view_title = _view_slice(image, grid, view, centre)
            contour_sets = [(_view_slice(labels, grid, view, centre)[0], colours, style)
                            for labels, style in overlays if labels is not None]
            _draw_panel(figure.add_subplot(len(rows), 3, 3 * r + c + 1), (plane, aspect),
                        window, contour_sets, f"{row_name}: {view_title}")


def _add_legend(figure, colours: dict[int, str], with_truth: bool) -> None:
    """Label names in their colours, and which line style is truth and which result."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=2, label=f"{v}: {label_name(v)}") for v, c in colours.items()]
    if with_truth:
        handles.append(Line2D([], [], color="black", lw=1.2, ls="solid", label="truth (solid)"))
    handles.append(Line2D([], [], color="black", lw=1.2, ls="dashed", label="result (dashed)"))
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8)


def _save_atomically(figure, path: Path) -> None:
    with atomic_path(path, ".png") as temp:
        figure.savefig(temp, format="png", dpi=100)


def write_overview(path, target: Volume, truth: LabelMap | None, result: LabelMap,
                   warped_atlas: Volume | None = None, title: str = "") -> None:
    """Write a PNG overview of a segmentation (see the module docstring for the layout).

    Args:
        path: output PNG file; its folder must exist. Written atomically (temp file + rename).
        target: the image segmented; its grid is the figure's grid.
        truth: reference labels (solid contours), on any grid (nearest-neighbour resampled
            in RAS onto the target's grid when it differs), or None.
        result: the segmentation (dashed contours); slices cross its foreground's centre.
            Resampled like ``truth`` when on another grid.
        warped_atlas: a registered atlas image, on any grid (linearly resampled in RAS onto
            the target's grid with SimpleITK), shown in a second row, or None.
        title: figure title.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an image that is not a non-empty 3-D array.
        InputError: the output folder does not exist.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_inputs(target, truth, result, warped_atlas)
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"write_overview(): output folder {path.parent} of {path} does not exist")
    grid = target.grid
    result_plane = _labels_on(result, grid)
    truth_plane = None if truth is None else _labels_on(truth, grid)
    present = set(np.unique(result_plane).tolist())
    if truth_plane is not None:
        present |= set(np.unique(truth_plane).tolist())
    colours = _colours(sorted(present - {0}))
    rows = [(target.array, "target", [(truth_plane, "solid"), (result_plane, "dashed")])]
    if warped_atlas is not None:
        rows.append((_volume_on(warped_atlas, grid), "warped atlas", [(result_plane, "dashed")]))

    height = 4.2 * len(rows) + 1.2
    figure = Figure(figsize=(12.0, height))
    FigureCanvasAgg(figure)  # an Agg canvas object: no pyplot, no global backend switch
    _draw_rows(figure, rows, grid, result_plane, colours)
    _add_legend(figure, colours, with_truth=truth is not None)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.subplots_adjust(left=0.02, right=0.98, top=0.92 if title else 0.96, bottom=1.0 / height,
                           wspace=0.05, hspace=0.25)
    _save_atomically(figure, path)
