"""CrossModalMAS.py's Logic and its self-test, run headless against slicer-core.

slicer-core has no Qt and no ``slicer.ScriptedLoadableModule``; the module file only needs them
for its Widget. This test gives it stand-ins for those names (empty ``qt``/``ctk`` modules and
the four scripted-module base classes, whose ``getParameterNode`` works as Slicer's does), a
real MRML scene as ``slicer.mrmlScene``, and then runs the real Logic and the module's own
``CrossModalMASTest`` end to end: background process, segmentation node, previews, re-fusion.
"""

from __future__ import annotations

import importlib
import sys
import types
import unittest

import pytest

from crossmodalmas.options import SegmentOptions
from test_slicer_fixtures import MODULE_DIR, new_scene, require_slicer_core

slicer = require_slicer_core()


def scripted_module_stand_ins() -> types.ModuleType:
    """``slicer.ScriptedLoadableModule``'s base classes, as much as the Logic and Test use."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__[: -len("Logic")]

        def getParameterNode(self):
            scene = slicer.mrmlScene
            for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
                node = scene.GetNthNodeByClass(index, "vtkMRMLScriptedModuleNode")
                if node.GetAttribute("ModuleName") == self.moduleName:
                    return node
            node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            print(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


@pytest.fixture
def module(monkeypatch):
    """The CrossModalMAS module file, imported with the stand-ins, and a fresh scene."""
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "ctk", types.ModuleType("ctk"))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted_module_stand_ins())
    monkeypatch.setattr(slicer, "mrmlScene", new_scene(), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    monkeypatch.delitem(sys.modules, "CrossModalMAS", raising=False)
    return importlib.import_module("CrossModalMAS")


def test_module_self_test_runs_the_logic_end_to_end(module):
    case = module.CrossModalMASTest()
    case.setUp()
    case.test_segment_tiny_phantom()
    nodes = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")
    assert nodes.GetNumberOfItems() == 1


def test_logic_refuse_and_qc_follow_the_ticked_atlases(module):
    pytest.importorskip("crossmodalmas.refusion", reason="the compute package has no re-fusion yet")
    case = module.CrossModalMASTest()
    target, atlases = case._tinyCase()
    logic = module.CrossModalMASLogic()
    options = SegmentOptions(model=module.INSTANCE_OPT, refine_iterations=2, device="cpu")
    review = logic.segment(target, atlases, options=options, wait=True)
    assert logic.qcTexts(atlases[0][0])[0] != "" and logic.qcTexts(None) == ["", "", "", ""]
    refused = logic.refuse([atlases[1][0]], "mv")
    assert refused.atlas_names == [atlases[1][0].GetName()] and refused.fusion.value == "mv"
    assert review.current is refused
    assert logic.qcTexts(atlases[0][0]) == ["", "", "", ""]  # left out of the re-fusion
    with pytest.raises(ValueError, match=r"Re-fuse: none of the run's atlases \(.*\) is ticked"):
        logic.refuse([])


def test_logic_refuses_a_second_run_while_one_runs_and_cancels_it(module):
    case = module.CrossModalMASTest()
    target, atlases = case._tinyCase()
    logic = module.CrossModalMASLogic()
    before = slicer.mrmlScene.GetNumberOfNodes()
    job = logic.segment(target, atlases, options=SegmentOptions(model="instance-opt", refine_iterations=3000,
                                                                device="cpu"))
    assert logic.isRunning()
    with pytest.raises(RuntimeError, match=r"A segmentation is already running; cancel it first\."):
        logic.segment(target, atlases)
    logic.cancel()
    assert not logic.isRunning() and job.state is module.RunState.CANCELLED
    assert slicer.mrmlScene.GetNumberOfNodes() == before and not job.work.exists()


def test_logic_runs_from_the_parameter_node(module):
    from CrossModalMASLib.parameters import AtlasEntry, Parameters

    case = module.CrossModalMASTest()
    target, atlases = case._tinyCase()
    logic = module.CrossModalMASLogic()
    p = Parameters(logic.getParameterNode())
    p.target, p.model, p.refine, p.device, p.fusion = target, "instance-opt", 2, "cpu", "mv"
    p.atlases = [AtlasEntry(image, labels) for image, labels in atlases] + [AtlasEntry(None, None, False)]
    review = logic.segmentWithParameters(p, wait=True)
    assert review.result.fusion.value == "mv"
    assert review.segmentation.GetName() == f"{target.GetName()} segmentation"
