"""Review previews for real against slicer-core: one subject-hierarchy folder, removed cleanly.

The result is a small hand-made :class:`crossmodalmas.result.Result` (two atlases on an oblique
working grid), so these tests need no run.
"""

from __future__ import annotations

import numpy as np

from test_slicer_fixtures import new_scene, require_slicer_core

slicer = require_slicer_core()
import vtk  # noqa: E402

from CrossModalMASLib import label_tables  # noqa: E402
from CrossModalMASLib.previews import FOLDER_ATTRIBUTE, add_previews, clear_previews, update_previews  # noqa: E402
from CrossModalMASLib.volume_nodes import add_volume_node, volume_from_node  # noqa: E402
from crossmodalmas.options import FusionMethod  # noqa: E402
from crossmodalmas.phantoms import make_grid  # noqa: E402
from crossmodalmas.result import AtlasQC, Result  # noqa: E402
from crossmodalmas.volume import LabelMap, Volume  # noqa: E402

TARGET = make_grid((12, 14, 16), (1.0, 1.0, 2.0), rotation_deg=(5.0, 0.0, -12.0))
WORK = make_grid((8, 9, 10), (2.0, 2.0, 2.0), rotation_deg=(5.0, 0.0, -12.0))


def small_result(names=("mr1", "mr2")) -> Result:
    rng = np.random.default_rng(3)
    n = len(names)
    classes = np.zeros((n, *WORK.shape), np.uint8)
    classes[:, 2:6, 3:7, 4:8] = 1  # label_values[1] = 500
    weights = rng.random((n, *WORK.shape)).astype(np.float32)
    weights /= weights.sum(0, keepdims=True)
    qc = [AtlasQC(name=name, folding_percent=0.0, sd_log_jacobian=0.05, inverse_consistency_mm=0.3,
                  similarity_before=0.7, similarity_after=0.75, coverage=1.0, weight_share=1.0 / n, agreement=0.8)
          for name in names]
    return Result(labels=LabelMap(np.zeros(TARGET.shape, np.int32), TARGET.ijk_to_ras), working_grid=WORK,
                  label_values=np.array([0, 500]), atlas_names=list(names),
                  target_image=rng.random(WORK.shape).astype(np.float32),
                  warped_images=rng.random((n, *WORK.shape)).astype(np.float32), warped_classes=classes,
                  weights=weights, uncertainty=rng.random(WORK.shape).astype(np.float32), qc=qc,
                  fusion=FusionMethod.MAJORITY_VOTE, device="cpu")


def folder_children(scene, folder) -> list:
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    items = vtk.vtkIdList()
    hierarchy.GetItemChildren(folder, items, True)
    return [hierarchy.GetItemDataNode(items.GetId(i)) for i in range(items.GetNumberOfIds())]


def test_previews_are_in_one_folder_on_the_working_grid_and_removed_cleanly():
    scene = new_scene()
    target = add_volume_node(scene, Volume(np.zeros(TARGET.shape), TARGET.ijk_to_ras), "CT")
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)  # the application always has it
    before = scene.GetNumberOfNodes()
    result = small_result()
    previews = add_previews(scene, result, target, label_tables.describe([500], table="mmwhs"))
    children = folder_children(scene, previews.folder)
    expected = [n for a in previews.atlases for n in (a.image, a.labels, a.weights)] + [previews.uncertainty,
                                                                                     previews.qc_table]
    assert {n.GetID() for n in children} == {n.GetID() for n in expected}
    assert [a.name for a in previews.atlases] == ["mr1", "mr2"]
    warped = volume_from_node(previews.atlases[1].image)
    np.testing.assert_array_equal(warped.array, result.warped_images[1])
    np.testing.assert_allclose(warped.ijk_to_ras, WORK.ijk_to_ras, atol=1e-9)
    assert previews.atlases[0].labels.IsA("vtkMRMLLabelMapVolumeNode")
    colors = previews.atlases[0].labels.GetDisplayNode().GetColorNode()
    assert colors.GetColorName(500) == "LV blood pool"
    assert previews.qc_table.GetNumberOfRows() == 2 and previews.qc_table.GetCellText(1, 0) == "mr2"
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    assert hierarchy.GetItemAttribute(previews.folder, FOLDER_ATTRIBUTE) == target.GetID()
    assert clear_previews(scene) == 1
    assert scene.GetNumberOfNodes() == before  # every preview node and its colour table is gone
    assert target.GetScene() is scene and clear_previews(scene) == 0


def test_update_previews_shows_a_refused_result_in_place():
    scene = new_scene()
    target = add_volume_node(scene, Volume(np.zeros(TARGET.shape), TARGET.ijk_to_ras), "CT")
    previews = add_previews(scene, small_result(), target, label_tables.describe([500]))
    count = scene.GetNumberOfNodes()
    refused = small_result(("mr2",))
    update_previews(previews, refused)
    assert scene.GetNumberOfNodes() == count
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(previews.atlases[0].weights), 0.0)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(previews.atlases[1].weights), refused.weights[0])
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(previews.uncertainty), refused.uncertainty)
    assert previews.qc_table.GetNumberOfRows() == 1 and previews.qc_table.GetCellText(0, 0) == "mr2"


def test_previews_of_a_saved_scene_are_found_and_cleared(tmp_path):
    scene = new_scene()
    target = add_volume_node(scene, Volume(np.zeros(TARGET.shape), TARGET.ijk_to_ras), "CT")
    add_previews(scene, small_result(), target, label_tables.describe([500]))
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    loaded = slicer.vtkMRMLScene()
    loaded.SetURL(str(tmp_path / "scene.mrml"))
    assert loaded.Connect()
    volumes = loaded.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems()
    assert clear_previews(loaded) == 1
    assert loaded.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == volumes - 7  # 2 x 3 + uncertainty
    assert loaded.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 0


def test_unknown_voxels_get_a_label_map_preview_on_the_target_grid():
    from dataclasses import replace

    scene = new_scene()
    target = add_volume_node(scene, Volume(np.zeros(TARGET.shape), TARGET.ijk_to_ras), "CT")
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    unknown = np.zeros(TARGET.shape, bool)
    unknown[:4] = True
    before = scene.GetNumberOfNodes()
    previews = add_previews(scene, replace(small_result(), unknown=unknown), target,
                            label_tables.describe([500], table="mmwhs"))
    assert previews.unknown.IsA("vtkMRMLLabelMapVolumeNode") and "no atlas coverage" in previews.unknown.GetName()
    shown = volume_from_node(previews.unknown)
    np.testing.assert_array_equal(shown.array.astype(bool), unknown)
    np.testing.assert_allclose(shown.ijk_to_ras, TARGET.ijk_to_ras, atol=1e-9)
    assert previews.unknown.GetID() in {n.GetID() for n in folder_children(scene, previews.folder)}
    assert clear_previews(scene) == 1 and scene.GetNumberOfNodes() == before
    assert add_previews(scene, small_result(), target, label_tables.describe([500], table="mmwhs")).unknown is None
