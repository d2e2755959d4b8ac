"""Segmentation nodes <-> label arrays, on a reference volume's exact grid.

Both directions go through a temporary label map node and the Segmentations module logic's own
import/export (binary labelmap representation, no resampling where the grids agree), and the
temporary nodes are removed again whatever happens: the scene keeps only what the caller asked
for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import slicer
import vtk

from CrossModalMASLib.label_tables import LabelInfo
from CrossModalMASLib.volume_nodes import add_volume_node, ijk_to_ras
from crossmodalmas.volume import LabelMap

_LOGIC = slicer.vtkSlicerSegmentationsModuleLogic


@dataclass(frozen=True)
class SegmentDescription:
    """One segment of a segmentation node: its id, name, colour (RGB in [0, 1]) and terminology."""

    segment_id: str
    name: str
    color: tuple[float, float, float]
    terminology: str


@contextlib.contextmanager
def temporary_nodes(scene) -> Iterator[None]:
    """Remove every node added to ``scene`` inside the block when it ends (also on error)."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in [n for n in added if n.GetID() not in before]:
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)


def describe_segments(segmentation_node) -> list[SegmentDescription]:
    """The segments of ``segmentation_node`` in their order."""
    segmentation = segmentation_node.GetSegmentation()
    out = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        terminology = vtk.mutable("")
        segment.GetTag(segment.GetTerminologyEntryTagName(), terminology)
        out.append(SegmentDescription(segmentation.GetNthSegmentID(index), segment.GetName(),
                                      tuple(segment.GetColor()), str(terminology)))
    return out


def labels_from_segmentation(segmentation_node, reference_node, values: Mapping[str, int], frame=None,
                             role: str = "atlas labels") -> LabelMap:
    """A segmentation node's segments as one label map on ``reference_node``'s grid.

    Args:
        segmentation_node: the segmentation (not changed).
        reference_node: the volume whose grid the labels are sampled on.
        values: label value of each segment id to export (segments not listed are left out;
            where segments overlap, the later one in the segmentation wins).
        frame: the transform node whose coordinates the matrix is given in (None: world).
        role: how error messages name the node.

    Raises:
        ValueError: no segment to export, or the export failed.
    """
    ids = [sid for sid in _segment_ids(segmentation_node) if sid in values]
    if not ids:
        raise ValueError(f"{role} {segmentation_node.GetName()}: the segmentation has no segment to use")
    scene = segmentation_node.GetScene()
    with temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__CrossModalMAS_export__")
        names = vtk.vtkStringArray()
        for sid in ids:
            names.InsertNextValue(sid)
        if not _LOGIC.ExportSegmentsToLabelmapNode(segmentation_node, names, labelmap, reference_node):
            raise ValueError(f"{role} {segmentation_node.GetName()}: exporting its segments to "
                             f"{reference_node.GetName()}'s grid failed")
        # Without a colour table the export numbers the segments 1..N in the order given.
        lookup = np.array([0] + [int(values[sid]) for sid in ids], dtype=np.int32)
        array = lookup[np.asarray(slicer.util.arrayFromVolume(labelmap), dtype=np.int64)]
        return LabelMap(array, ijk_to_ras(labelmap, frame))


def _segment_ids(segmentation_node) -> list[str]:
    ids = vtk.vtkStringArray()
    segmentation_node.GetSegmentation().GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def add_segmentation(scene, labels: LabelMap, infos: Mapping[int, LabelInfo], reference_node, name: str,
                     frame=None):
    """A new segmentation node with one segment per non-zero label value of ``labels``.

    Args:
        scene: the MRML scene.
        labels: label values on ``reference_node``'s grid (in ``frame``'s coordinates).
        infos: name, colour and terminology of each value (a value missing here is "Label N").
        reference_node: the volume the segmentation is referenced to (its geometry and the
            Segment Editor's source volume).
        name: the node name (made unique).
        frame: the transform node to put the segmentation under (the reference's, usually).

    Returns:
        The segmentation node, with display nodes, ready for the Segment Editor.
    """
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    if frame is not None:
        node.SetAndObserveTransformNodeID(frame.GetID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    update_segmentation(node, labels, infos)
    return node


def update_segmentation(segmentation_node, labels: LabelMap, infos: Mapping[int, LabelInfo]) -> None:
    """Replace every segment of ``segmentation_node`` by the label values of ``labels``.

    Raises:
        ValueError: the import failed.
    """
    scene = segmentation_node.GetScene()
    segmentation_node.GetSegmentation().RemoveAllSegments()
    if not np.any(labels.array):
        return
    with temporary_nodes(scene):
        labelmap = add_volume_node(scene, labels, "__CrossModalMAS_import__", labels=True,
                                   frame=segmentation_node.GetParentTransformNode(), display=False)
        if not _LOGIC.ImportLabelmapToSegmentationNode(labelmap, segmentation_node):
            raise ValueError(f"segmentation {segmentation_node.GetName()}: importing the labels failed")
    _style_segments(segmentation_node, infos)


def _style_segments(segmentation_node, infos: Mapping[int, LabelInfo]) -> None:
    """Name, colour and terminology of each imported segment, from its label value."""
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = int(segment.GetLabelValue())
        info = infos.get(value) or LabelInfo(value, f"Label {value}", segment.GetColor())
        segment.SetName(info.name)
        segment.SetColor(*info.color)
        if info.terminology:
            segment.SetTag(segment.GetTerminologyEntryTagName(), info.terminology)
