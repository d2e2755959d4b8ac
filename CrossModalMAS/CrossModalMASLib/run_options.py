"""The run options (:class:`crossmodalmas.options.SegmentOptions`) from the module's settings.

The ROI is a markups ROI node; the pipeline takes an axis-aligned RAS box in the target's frame,
so a rotated ROI becomes the box around its eight corners (the work region may grow a little,
never shrink).
"""

from __future__ import annotations

import itertools
from typing import Optional

import numpy as np
import slicer

from CrossModalMASLib.parameters import Parameters
from CrossModalMASLib.volume_nodes import node_to_frame
from crossmodalmas.options import SegmentOptions


def roi_box(roi_node, frame=None) -> tuple[float, float, float, float, float, float]:
    """The RAS box ``(r0, a0, s0, r1, a1, s1)`` in mm, in ``frame``'s coordinates, around ``roi_node``.

    Raises:
        ValueError: the ROI has no size, or a non-linear transform lies between it and ``frame``.
    """
    size = np.array(roi_node.GetSize(), dtype=float)
    if np.any(size <= 0):
        raise ValueError(f"ROI {roi_node.GetName()}: its size {size.tolist()} mm is not positive along every axis")
    object_to_node = slicer.util.arrayFromVTKMatrix(roi_node.GetObjectToNodeMatrix())
    to_frame = node_to_frame(roi_node, frame) @ object_to_node
    half = size / 2.0
    corners = np.array([[sx * half[0], sy * half[1], sz * half[2], 1.0]
                        for sx, sy, sz in itertools.product((-1, 1), repeat=3)])
    points = (corners @ to_frame.T)[:, :3]
    return (*points.min(0).tolist(), *points.max(0).tolist())


def segment_options(parameters: Parameters, frame=None, device: Optional[str] = None) -> SegmentOptions:
    """:class:`SegmentOptions` from the settings (``device`` overrides the stored choice)."""
    roi = parameters.roi
    return SegmentOptions(
        fusion=parameters.fusion or None, select=parameters.select or None,
        roi_ras=roi_box(roi, frame) if roi is not None else None,
        device=device or parameters.device, model=parameters.model or None,
        refine_iterations=parameters.refine if parameters.refine >= 0 else None)
