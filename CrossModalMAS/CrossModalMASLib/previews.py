"""Review nodes of a run, all in one subject-hierarchy folder, and their removal in one call.

For each atlas of a :class:`crossmodalmas.result.Result`: its warped image, its warped labels
(a label map coloured like the segmentation) and its fusion weight map; then the per-voxel
uncertainty and a table of the per-atlas QC figures. Everything is on the working grid, in the
target's frame, under the target's parent transform. The folder item carries the attribute
:data:`FOLDER_ATTRIBUTE`, so the previews of a saved and reloaded scene are found and cleared
as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
import slicer
import vtk

from CrossModalMASLib.label_tables import LabelInfo
from CrossModalMASLib.volume_nodes import add_volume_node
from crossmodalmas.volume import LabelMap

FOLDER_ATTRIBUTE = "CrossModalMAS.Previews"
_COLOR_NODES_ATTRIBUTE = "CrossModalMAS.ColorNodeIDs"
# Perceptual colour maps of the Slicer application first; built-in tables where those are absent.
WEIGHT_COLORS = ("vtkMRMLColorTableNodeFileViridis.txt", "vtkMRMLColorTableNodeRainbow")
UNCERTAINTY_COLORS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeIron")
QC_COLUMNS = (("weight_share", "Weight share"), ("agreement", "Agreement (Dice)"),
              ("folding_percent", "Folding (%)"), ("inverse_consistency_mm", "Inverse consistency (mm)"),
              ("similarity_after", "Similarity after"), ("coverage", "Coverage"))


@dataclass
class AtlasPreview:
    """The preview nodes of one atlas (warped image, warped labels, weight map)."""

    name: str
    image: object
    labels: object
    weights: object


@dataclass
class Previews:
    """The preview nodes of one run and their folder item."""

    folder: int
    atlases: list[AtlasPreview] = field(default_factory=list)
    uncertainty: Optional[object] = None
    qc_table: Optional[object] = None
    unknown: Optional[object] = None  # target voxels no atlas covers, where the run had any


def _hierarchy(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)


def _first_color_node(scene, ids) -> Optional[object]:
    for node_id in ids:
        node = scene.GetNodeByID(node_id)
        if node is not None:
            return node
    return None


def label_color_node(scene, infos: Mapping[int, LabelInfo], name: str):
    """A colour table node with one named entry per label value (for warped label maps)."""
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(name))
    node.SetTypeToUser()
    node.SetNumberOfColors(max(infos, default=0) + 1)
    node.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for value, info in infos.items():
        node.SetColor(value, info.name, *info.color, 1.0)
    return node


def _show_with_colors(node, color_node, legend_logic=None) -> None:
    display = node.GetDisplayNode()
    if display is not None and color_node is not None:
        display.SetAndObserveColorNodeID(color_node.GetID())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 1.0)
    if legend_logic is not None:
        legend_logic.AddDefaultColorLegendDisplayNode(node)


def _in_folder(scene, folder: int, node) -> None:
    hierarchy = _hierarchy(scene)
    item = hierarchy.GetItemByDataNode(node)
    if item == hierarchy.GetInvalidItemID():  # no subject hierarchy logic made the item (headless)
        hierarchy.CreateItem(folder, node)
    else:
        hierarchy.SetItemParent(item, folder)


def _qc_table(scene, result, name: str):
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    names = table.AddColumn()
    names.SetName("Atlas")
    for _key, title in QC_COLUMNS:
        column = vtk.vtkDoubleArray()
        column.SetName(title)
        table.AddColumn(column)
    _fill_qc_table(table, result)
    return table


def add_previews(scene, result, target_node, infos: Mapping[int, LabelInfo], legend_logic=None) -> Previews:
    """Add the review nodes of ``result`` in a new folder named after ``target_node``.

    Args:
        scene: the MRML scene.
        result: a :class:`crossmodalmas.result.Result` (its working-grid arrays are in the
            target's frame).
        target_node: the segmented volume (names the folder; its parent transform is used).
        infos: names and colours of the label values (for the warped label maps).
        legend_logic: an object with ``AddDefaultColorLegendDisplayNode(node)`` (the Colors
            module logic) to show legends of the weight and uncertainty maps; None: no legend.

    Returns:
        :class:`Previews` with every node created.
    """
    hierarchy = _hierarchy(scene)
    folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), f"CrossModalMAS previews: {target_node.GetName()}")
    hierarchy.SetItemAttribute(folder, FOLDER_ATTRIBUTE, target_node.GetID())
    frame = target_node.GetParentTransformNode()
    label_colors = label_color_node(scene, infos, f"{target_node.GetName()} atlas labels")
    hierarchy.SetItemAttribute(folder, _COLOR_NODES_ATTRIBUTE, label_colors.GetID())
    previews = Previews(folder)
    for index, name in enumerate(result.atlas_names):
        nodes = [add_volume_node(scene, result.warped_atlas(index), f"{name} warped", frame=frame),
                 add_volume_node(scene, result.warped_atlas_labels(index), f"{name} warped labels", labels=True,
                                 frame=frame),
                 add_volume_node(scene, result.weight_map(index), f"{name} fusion weights", frame=frame)]
        nodes[1].GetDisplayNode().SetAndObserveColorNodeID(label_colors.GetID())
        _show_with_colors(nodes[2], _first_color_node(scene, WEIGHT_COLORS), legend_logic)
        for node in nodes:
            _in_folder(scene, folder, node)
        previews.atlases.append(AtlasPreview(name, *nodes))
    previews.uncertainty = add_volume_node(scene, result.uncertainty_map(), f"{target_node.GetName()} uncertainty",
                                           frame=frame)
    _show_with_colors(previews.uncertainty, _first_color_node(scene, UNCERTAINTY_COLORS), legend_logic)
    _in_folder(scene, folder, previews.uncertainty)
    previews.qc_table = _qc_table(scene, result, f"{target_node.GetName()} atlas QC")
    _in_folder(scene, folder, previews.qc_table)
    if result.unknown is not None:  # labelled 0 there: show the radiologist where no atlas looked
        unknown = LabelMap(result.unknown.astype(np.uint8), result.labels.ijk_to_ras)
        previews.unknown = add_volume_node(scene, unknown, f"{target_node.GetName()} unknown (no atlas coverage)",
                                           labels=True, frame=frame)
        _in_folder(scene, folder, previews.unknown)
    return previews


def preview_folders(scene) -> list[int]:
    """The subject-hierarchy items of every previews folder in ``scene``."""
    hierarchy = _hierarchy(scene)
    items = vtk.vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), items, True)
    found = [items.GetId(i) for i in range(items.GetNumberOfIds())]
    return [item for item in found if hierarchy.HasItemAttribute(item, FOLDER_ATTRIBUTE)]


def _node_and_helpers(node) -> list:
    """``node`` with its display nodes (colour legends included) and storage node."""
    nodes = [node]
    if node.IsA("vtkMRMLDisplayableNode"):
        nodes += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is not None:
        nodes.append(node.GetStorageNode())
    return [n for n in nodes if n is not None]


def clear_previews(scene) -> int:
    """Remove every previews folder with all its nodes (and their display, storage and colour nodes).

    Returns:
        The number of folders removed.
    """
    hierarchy = _hierarchy(scene)
    folders = preview_folders(scene)
    for folder in folders:
        items = vtk.vtkIdList()
        hierarchy.GetItemChildren(folder, items, True)
        data = [hierarchy.GetItemDataNode(items.GetId(i)) for i in range(items.GetNumberOfIds())]
        doomed = [n for node in data if node is not None for n in _node_and_helpers(node)]
        doomed += [scene.GetNodeByID(i) for i in hierarchy.GetItemAttribute(folder, _COLOR_NODES_ATTRIBUTE).split()]
        hierarchy.RemoveItem(folder, False, True)
        for node in doomed:
            if node is not None and scene.IsNodePresent(node):
                scene.RemoveNode(node)
    return len(folders)

def _fill_qc_table(table, result) -> None:
    table.GetTable().SetNumberOfRows(0)
    for qc in result.qc:
        row = table.AddEmptyRow()
        table.SetCellText(row, 0, qc.name)
        for column, (key, _title) in enumerate(QC_COLUMNS, start=1):
            table.SetCellText(row, column, repr(float(getattr(qc, key))))
    table.Modified()


def update_previews(previews: Previews, result) -> None:
    """Show a re-fused ``result``'s weights, uncertainty and QC in existing previews.

    The warped atlases stay (re-fusion does not register again); an atlas left out of
    ``result`` gets an all-zero weight map and no QC row.
    """
    kept = {name: index for index, name in enumerate(result.atlas_names)}
    for atlas in previews.atlases:
        weights = slicer.util.arrayFromVolume(atlas.weights)
        weights[:] = result.weights[kept[atlas.name]] if atlas.name in kept else 0.0
        slicer.util.arrayFromVolumeModified(atlas.weights)
    slicer.util.arrayFromVolume(previews.uncertainty)[:] = result.uncertainty
    slicer.util.arrayFromVolumeModified(previews.uncertainty)
    _fill_qc_table(previews.qc_table, result)
