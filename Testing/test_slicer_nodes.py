"""MRML nodes <-> the compute package's arrays, for real against slicer-core.

Volume and label map nodes round trips (oblique, anisotropic; physical positions preserved;
transforms), segmentation nodes to atlas labels and results to segmentation nodes (names,
colours, terminology, reference geometry, voxel-exact labels), saving with the storage node and
reading back, the parameter node and what blocks Apply.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from test_slicer_fixtures import new_scene, require_slicer_core

slicer = require_slicer_core()
import vtk  # noqa: E402  (slicer-core brings vtk)

from CrossModalMASLib import label_tables  # noqa: E402
from CrossModalMASLib.atlas_sources import SceneAtlas, prepare_scene_atlases, safe_name  # noqa: E402
from CrossModalMASLib.parameters import AtlasEntry, Parameters, apply_blocker  # noqa: E402
from CrossModalMASLib.run_options import roi_box, segment_options  # noqa: E402
from CrossModalMASLib.segmentation_nodes import (add_segmentation, describe_segments,  # noqa: E402
                                                 labels_from_segmentation, update_segmentation)
from CrossModalMASLib.volume_nodes import (add_volume_node, labels_from_labelmap_node,  # noqa: E402
                                           volume_from_node)
from crossmodalmas.phantoms import make_grid  # noqa: E402
from crossmodalmas.volume import LabelMap, Volume, read_labels, read_volume  # noqa: E402

OBLIQUE = make_grid((9, 11, 13), (0.7, 1.3, 2.9), rotation_deg=(17.0, -23.0, 41.0), centre_ras=(12.0, -30.0, 55.0))


def blob_labels(grid, values=(205, 500, 600)) -> LabelMap:
    """Three boxes with the given values on ``grid`` (seeded, never empty)."""
    array = np.zeros(grid.shape, np.int32)
    array[1:4, 2:6, 3:9] = values[0]
    array[5:8, 1:4, 2:6] = values[1]
    array[2:7, 7:10, 9:12] = values[2]
    return LabelMap(array, grid.ijk_to_ras)


def label_values(segmentation) -> dict[str, int]:
    """Segment id -> the label value it was imported from."""
    return {s.segment_id: segmentation.GetSegmentation().GetSegment(s.segment_id).GetLabelValue()
            for s in describe_segments(segmentation)}


def random_volume(grid, seed=0) -> Volume:
    return Volume(np.random.default_rng(seed).normal(100.0, 30.0, grid.shape), grid.ijk_to_ras)


def test_volume_round_trip_keeps_voxels_and_every_voxel_position():
    scene = new_scene()
    volume = random_volume(OBLIQUE)
    node = add_volume_node(scene, volume, "oblique")
    back = volume_from_node(node)
    np.testing.assert_array_equal(back.array, volume.array)
    corners = OBLIQUE.corners_ras()
    np.testing.assert_allclose(back.grid.corners_ras(), corners, atol=1e-9)
    np.testing.assert_allclose(node.GetSpacing(), [0.7, 1.3, 2.9], atol=1e-12)
    # The node's own voxel -> RAS mapping agrees with the contract's matrix at a far corner.
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    point = matrix.MultiplyPoint((12.0, 10.0, 8.0, 1.0))[:3]
    np.testing.assert_allclose(point, OBLIQUE.ijk_to_points(np.array([[12.0, 10.0, 8.0]]))[0], atol=1e-9)


def test_volume_under_a_linear_transform_is_given_in_world_and_in_its_own_frame():
    scene = new_scene()
    node = add_volume_node(scene, random_volume(OBLIQUE), "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    shift = np.eye(4)
    shift[:3, 3] = (10.0, -5.0, 2.5)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    node.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(volume_from_node(node).ijk_to_ras, shift @ OBLIQUE.ijk_to_ras, atol=1e-9)
    np.testing.assert_allclose(volume_from_node(node, frame=transform).ijk_to_ras, OBLIQUE.ijk_to_ras, atol=1e-9)


def test_non_linear_transform_is_refused_with_the_node_name():
    scene = new_scene()
    node = add_volume_node(scene, random_volume(OBLIQUE), "warped input")
    grid_transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "bspline-ish")
    node.SetAndObserveTransformNodeID(grid_transform.GetID())
    with pytest.raises(ValueError, match=r"warped input: it is under a non-linear transform; harden"):
        volume_from_node(node)


def test_vector_volume_and_empty_node_are_refused():
    scene = new_scene()
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match=r"target empty: the node holds no voxels"):
        volume_from_node(empty, role="target")
    with pytest.raises(ValueError, match=r"target: no node given"):
        volume_from_node(None, role="target")


def test_labelmap_node_round_trip_keeps_values_exactly():
    scene = new_scene()
    labels = blob_labels(OBLIQUE, (1, 420, 70000))
    node = add_volume_node(scene, labels, "labels", labels=True)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    back = labels_from_labelmap_node(node)
    assert back.array.dtype == np.int32
    np.testing.assert_array_equal(back.array, labels.array)
    np.testing.assert_allclose(back.ijk_to_ras, OBLIQUE.ijk_to_ras, atol=1e-9)


def test_result_labels_become_named_coloured_segments_referenced_to_the_target():
    scene = new_scene()
    target = add_volume_node(scene, random_volume(OBLIQUE), "CT 1")
    labels = blob_labels(OBLIQUE, (205, 500, 42))
    infos = label_tables.describe([205, 500, 42], table="mmwhs")
    segmentation = add_segmentation(scene, labels, infos, target, "CT 1 segmentation")
    segments = {s.name: s for s in describe_segments(segmentation)}
    assert set(segments) == {"LV myocardium", "LV blood pool", "Label 42"}
    np.testing.assert_allclose(segments["LV myocardium"].color, (192 / 255, 104 / 255, 88 / 255))
    assert "SCT^74281007^Myocardium" in segments["LV myocardium"].terminology
    assert segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is target
    assert segmentation.GetDisplayNode() is not None
    back = labels_from_segmentation(segmentation, target, label_values(segmentation))
    np.testing.assert_array_equal(back.array, labels.array)  # voxel-exact on the target's grid


def test_update_segmentation_replaces_every_segment_in_place():
    scene = new_scene()
    target = add_volume_node(scene, random_volume(OBLIQUE), "t")
    infos = label_tables.describe([205, 500, 600], table="mmwhs")
    segmentation = add_segmentation(scene, blob_labels(OBLIQUE), infos, target, "t segmentation")
    fewer = blob_labels(OBLIQUE)
    fewer.array[fewer.array == 600] = 0
    update_segmentation(segmentation, fewer, infos)
    assert sorted(s.name for s in describe_segments(segmentation)) == ["LV blood pool", "LV myocardium"]
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0  # no temporary left


def test_segmentation_saved_with_its_storage_node_reads_back_identical(tmp_path):
    scene = new_scene()
    target = add_volume_node(scene, random_volume(OBLIQUE), "t")
    labels = blob_labels(OBLIQUE)
    infos = label_tables.describe([205, 500, 600], table="mmwhs")
    segmentation = add_segmentation(scene, labels, infos, target, "t segmentation")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "t.seg.nrrd"))
    assert storage.WriteData(segmentation)
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(reader)
    reader.SetFileName(str(tmp_path / "t.seg.nrrd"))
    assert reader.ReadData(loaded)
    described = describe_segments(loaded)
    assert [s.name for s in described] == [s.name for s in describe_segments(segmentation)]
    assert [s.terminology for s in described] == [s.terminology for s in describe_segments(segmentation)]
    np.testing.assert_array_equal(labels_from_segmentation(loaded, target, label_values(loaded)).array, labels.array)


def test_segmentation_atlas_gets_table_values_by_segment_name(tmp_path):
    scene = new_scene()
    image = add_volume_node(scene, random_volume(OBLIQUE), "mr atlas")
    source = blob_labels(OBLIQUE, (1, 2, 3))
    infos = {1: label_tables.LabelInfo(1, "Left atrium", (1.0, 0.0, 0.0)),
             2: label_tables.LabelInfo(2, "My odd structure", (0.0, 1.0, 0.0)),
             3: label_tables.LabelInfo(3, "LV blood pool", (0.0, 0.0, 1.0))}
    segmentation = add_segmentation(scene, source, infos, image, "mr atlas segmentation")
    before = scene.GetNumberOfNodes()
    prepared = prepare_scene_atlases([SceneAtlas(image, segmentation)], tmp_path / "atlases")
    assert scene.GetNumberOfNodes() == before  # the export's temporary nodes are gone
    written = read_labels(prepared.files[0].labels)
    np.testing.assert_array_equal(written.array[source.array == 1], 420)  # MM-WHS code of "Left atrium"
    np.testing.assert_array_equal(written.array[source.array == 3], 500)
    odd = np.unique(written.array[source.array == 2])
    assert odd.size == 1 and odd[0] not in (0, 420, 500)
    assert prepared.known[420].name == "Left atrium" and prepared.known[420].color == (1.0, 0.0, 0.0)
    np.testing.assert_allclose(read_volume(prepared.files[0].image).ijk_to_ras, OBLIQUE.ijk_to_ras, atol=1e-5)


def test_labelmap_atlas_on_another_grid_is_put_on_its_image_grid(tmp_path):
    scene = new_scene()
    image = add_volume_node(scene, random_volume(OBLIQUE), "image")
    coarse = make_grid((5, 6, 7), (1.4, 2.6, 5.8), rotation_deg=(17.0, -23.0, 41.0), centre_ras=(12.0, -30.0, 55.0))
    labels = add_volume_node(scene, LabelMap(np.full(coarse.shape, 7, np.int32), coarse.ijk_to_ras), "lab",
                             labels=True)
    prepared = prepare_scene_atlases([SceneAtlas(image, labels)], tmp_path)
    written = read_labels(prepared.files[0].labels)
    assert written.array.shape == OBLIQUE.shape and set(np.unique(written.array)) <= {0, 7} and written.array.any()


def test_safe_names_are_unique_file_stems():
    taken = set()
    assert [safe_name(n, taken) for n in ("MR 1", "MR 1", "mr_1", "ü/..")] == ["MR_1", "MR_1_2", "mr_1_3", "atlas"]


def test_label_tables_are_chosen_only_where_values_leave_no_doubt():
    assert label_tables.choose_table([205, 500, 850]) == "mmwhs"
    assert label_tables.choose_table([2, 3, 41, 42, 17, 53]) == "aseg"
    assert label_tables.choose_table([1, 2, 3]) is None  # could be anything
    assert label_tables.resolve_table("totalsegmentator", [1, 2]) == "totalsegmentator"
    total = label_tables.describe([5, 999], table="totalsegmentator")
    assert total[5].name == "liver" and "SCT^10200004^Liver" in total[5].terminology
    assert total[999].name == "Label 999"
    with pytest.raises(ValueError, match=r"resolve_table\(\): 'choice' must be one of"):
        label_tables.resolve_table("snomed", [1])


def test_every_table_entry_has_a_name_and_a_colour():
    for name in label_tables.TABLE_FILES:
        table = label_tables.load_table(name)
        assert table and all(info.name and len(info.color) == 3 and all(0 <= c <= 1 for c in info.color)
                             for info in table.values())
    assert len(label_tables.load_table("totalsegmentator")) == 117


def test_parameters_persist_with_the_scene(tmp_path):
    scene = new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "CrossModalMAS")
    target = add_volume_node(scene, random_volume(OBLIQUE), "target")
    image = add_volume_node(scene, random_volume(OBLIQUE, 1), "atlas")
    labels = add_volume_node(scene, blob_labels(OBLIQUE), "atlas labels", labels=True)
    p = Parameters(node)
    p.target, p.fusion, p.select, p.refine, p.model = target, "loa", 2, 7, "instance-opt"
    p.atlases = [AtlasEntry(image, labels, True), AtlasEntry(image, None, False)]
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    loaded = slicer.vtkMRMLScene()
    loaded.SetURL(str(tmp_path / "scene.mrml"))
    assert loaded.Connect()
    q = Parameters(loaded.GetFirstNodeByClass("vtkMRMLScriptedModuleNode"))
    assert (q.target.GetName(), q.fusion, q.select, q.refine, q.model) == ("target", "loa", 2, 7, "instance-opt")
    assert [(e.image.GetName(), e.labels and e.labels.GetName(), e.enabled) for e in q.atlases] == [
        ("atlas", "atlas labels", True), ("atlas", None, False)]


@pytest.mark.parametrize("case, message", [
    ("no target", r"^Select a target volume\.$"),
    ("no atlas", r"^Add at least one atlas"),
    ("target as atlas", r"^Atlas 1: it uses the target target"),
    ("labels missing", r"^Atlas 1: pick both its volume and its label map"),
    ("same node", r"^Atlas 1: its volume and its labels are the same node\.$"),
    ("missing folder", r"^Atlas folder /nonexistent/atlases: does not exist\.$"),
])
def test_apply_blocker_says_why(case, message):
    scene = new_scene()
    p = Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "CrossModalMAS"))
    target = add_volume_node(scene, random_volume(OBLIQUE), "target")
    image = add_volume_node(scene, random_volume(OBLIQUE, 1), "atlas")
    labels = add_volume_node(scene, blob_labels(OBLIQUE), "atlas labels", labels=True)
    p.target = None if case == "no target" else target
    rows = {"no atlas": [], "target as atlas": [AtlasEntry(target, labels)], "labels missing": [AtlasEntry(image, None)],
            "same node": [AtlasEntry(image, image)]}
    p.atlases = rows.get(case, [AtlasEntry(image, labels)])
    if case == "missing folder":
        p.atlas_folder = "/nonexistent/atlases"
    assert re.search(message, apply_blocker(p)), apply_blocker(p)
    p.atlases, p.atlas_folder, p.target = [AtlasEntry(image, labels), AtlasEntry(None, None, False)], "", target
    assert apply_blocker(p) == ""  # an unticked empty row does not block


def test_roi_box_and_options_from_parameters():
    scene = new_scene()
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(10.0, 20.0, 30.0)
    roi.SetSize(40.0, 20.0, 10.0)
    np.testing.assert_allclose(roi_box(roi), (-10.0, 10.0, 25.0, 30.0, 30.0, 35.0), atol=1e-9)
    p = Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "CrossModalMAS"))
    p.roi, p.fusion, p.select, p.refine = roi, "mv", 0, -1
    options = segment_options(p)
    assert options.roi_ras == pytest.approx((-10.0, 10.0, 25.0, 30.0, 30.0, 35.0))
    assert options.fusion.value == "mv" and options.select is None and options.refine_iterations is None
    assert options.model is None
