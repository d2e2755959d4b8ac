"""CrossModalMAS: cross-modality multi-atlas segmentation in 3D Slicer.

Module, Widget, Logic and Test only. The work runs in a background ``PythonSlicer -m
crossmodalmas segment`` process; everything Slicer-side without Qt lives in
``CrossModalMASLib``, the computation in ``crossmodalmas`` (which never imports slicer).
"""

import importlib.util
import logging

import ctk
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from CrossModalMASLib import dependencies, label_tables
from CrossModalMASLib.atlas_sources import SceneAtlas, folder_atlases
from CrossModalMASLib.background_process import RunState
from CrossModalMASLib.parameters import INSTANCE_OPT, AtlasEntry, Parameters, apply_blocker
from CrossModalMASLib.previews import clear_previews
from CrossModalMASLib.run_options import segment_options
from CrossModalMASLib.segmentation_job import SegmentationJob
from crossmodalmas.options import FusionMethod

POLL_MS = 200
QC_HEADERS = ("Weight share", "Agreement", "Folding %", "Inv. consistency (mm)")
QC_KEYS = ("weight_share", "agreement", "folding_percent", "inverse_consistency_mm")
PREVIEW_KINDS = (("image", "Warped atlas"), ("labels", "Warped labels"), ("weights", "Fusion weights"))
FUSION_TEXT = {"mv": "Majority vote", "nlwv": "Non-local weighted vote", "plf": "Similarity-network patch fusion",
               "loa": "Label-overlap weights (OASIS)", "loa-local": "Local label-overlap weights"}
STATUS_TEXT = {RunState.SUCCEEDED: "Importing the results...", RunState.FAILED: "Failed (see the error message).",
               RunState.CANCELLED: "Cancelled: nothing was added to the scene."}


class CrossModalMAS(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Cross-Modality MAS"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["CrossModalMAS authors"]
        self.parent.helpText = (
            "Segment a volume with labelled atlases, also of another modality (MR atlases for a CT, "
            "CT atlases for an MR): every atlas is registered to the target by a consistent registration "
            "network and the warped labels are fused. Review the warped atlases, fusion weights and "
            "uncertainty, untick a bad atlas and re-fuse in a second. "
            '<a href="https://github.com/crossmodalmas/SlicerCrossModalMAS">Documentation</a>.')
        self.parent.acknowledgementText = (
            "Follows the cross-modality MAS of Ding et al. (consistent registration network, similarity "
            "network patch fusion) and OASIS (one-pass label-constrained registration, label-overlap fusion).")


class CrossModalMASWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the UI to the parameter node, starts and follows the Logic's job."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updating = False
        self._timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CrossModalMAS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CrossModalMASLogic()
        self._fillChoices()
        self._setupAtlasTable()
        self.ui.atlasFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Files
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.onPoll)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for combo in (self.ui.targetSelector, self.ui.roiSelector):
            combo.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        for combo in (self.ui.fusionComboBox, self.ui.modelComboBox, self.ui.deviceComboBox,
                      self.ui.labelTableComboBox):
            combo.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        for spin in (self.ui.selectSpinBox, self.ui.refineSpinBox):
            spin.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.atlasFolderPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.atlasTable.itemChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.addAtlasButton.clicked.connect(self.onAddAtlas)
        self.ui.removeAtlasButton.clicked.connect(self.onRemoveAtlas)
        self.ui.applyButton.clicked.connect(self.onApplyOrCancel)
        self.ui.refuseButton.clicked.connect(self.onRefuse)
        self.ui.clearPreviewsButton.clicked.connect(self.onClearPreviews)
        self.ui.showUncertaintyButton.clicked.connect(self.onShowUncertainty)
        self.ui.previewSlider.valueChanged.connect(self.onPreviewChanged)
        self.ui.previewKindComboBox.currentIndexChanged.connect(self.onPreviewChanged)
        self.initializeParameterNode()

    def _fillChoices(self):
        """The combo boxes' items: (text, value stored in the parameter node)."""
        fusions = [("Automatic", "")] + [(FUSION_TEXT.get(m.value, m.value), m.value) for m in FusionMethod]
        models = [("Bundled default network", "")] + [(name, name) for name in self.logic.modelNames()]
        models.append(("Instance optimisation only (no network)", INSTANCE_OPT))
        devices = [("Automatic", "auto"), ("CPU", "cpu")] + ([("GPU (CUDA)", "cuda")] if self.logic.cudaAvailable() else [])
        tables = [("Automatic", label_tables.AUTO), ("MM-WHS heart codes", "mmwhs"), ("FreeSurfer aseg", "aseg"),
                  ("TotalSegmentator ids", "totalsegmentator"), ("None (Label N)", label_tables.NONE)]
        for combo, items in ((self.ui.fusionComboBox, fusions), (self.ui.modelComboBox, models),
                             (self.ui.deviceComboBox, devices), (self.ui.labelTableComboBox, tables),
                             (self.ui.previewKindComboBox, [(t, k) for k, t in PREVIEW_KINDS])):
            for text, value in items:
                combo.addItem(text, value)

    def _setupAtlasTable(self):
        table = self.ui.atlasTable
        table.setColumnCount(3 + len(QC_HEADERS))
        table.setHorizontalHeaderLabels(["Use", "Volume", "Labels", *QC_HEADERS])
        table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)

    def cleanup(self):
        if self._timer is not None:
            self._timer.stop()
        self.logic.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        parameters = Parameters(self._parameterNode)
        if parameters.target is None:
            parameters.target = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode is not None:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    @staticmethod
    def _selectData(combo, value):
        index = combo.findData(value)
        combo.currentIndex = index if index >= 0 else 0

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updating:
            return
        self._updating = True
        try:
            p = Parameters(self._parameterNode)
            self.ui.targetSelector.setCurrentNode(p.target)
            self.ui.roiSelector.setCurrentNode(p.roi)
            self.ui.atlasFolderPathLineEdit.currentPath = p.atlas_folder
            for combo, value in ((self.ui.fusionComboBox, p.fusion), (self.ui.modelComboBox, p.model),
                                 (self.ui.deviceComboBox, p.device), (self.ui.labelTableComboBox, p.label_table)):
                self._selectData(combo, value)
            self.ui.selectSpinBox.value = p.select
            self.ui.refineSpinBox.value = p.refine
            self._showAtlasRows(p.atlases)
            self._updateButtons(p)
        finally:
            self._updating = False

    def _showAtlasRows(self, entries):
        table = self.ui.atlasTable
        table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            use = qt.QTableWidgetItem()
            use.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
            use.setCheckState(qt.Qt.Checked if entry.enabled else qt.Qt.Unchecked)
            table.setItem(row, 0, use)
            for column, (types, node) in enumerate(((["vtkMRMLScalarVolumeNode"], entry.image),
                                                    (["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"], entry.labels)), 1):
                combo = table.cellWidget(row, column) or self._nodeCombo(types)
                table.setCellWidget(row, column, combo)
                combo.setCurrentNode(node)
            for column, text in enumerate(self.logic.qcTexts(entry.image), 3):
                table.setItem(row, column, qt.QTableWidgetItem(text))

    def _nodeCombo(self, types):
        combo = slicer.qMRMLNodeComboBox()
        combo.nodeTypes = types
        combo.showChildNodeTypes = False
        combo.addEnabled = combo.removeEnabled = False
        combo.noneEnabled = True
        combo.setMRMLScene(slicer.mrmlScene)
        combo.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        return combo

    def _updateButtons(self, parameters):
        running = self.logic.isRunning()
        blocker = "" if running else apply_blocker(parameters)
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = running or not blocker
        self.ui.applyButton.toolTip = "Stop the run" if running else (blocker or "Segment the target with the ticked atlases")
        self.ui.refuseButton.enabled = not running and self.logic.review is not None
        previews = self.logic.previewCount()
        self.ui.previewSlider.maximum = max(previews - 1, 0)
        self.ui.previewSlider.enabled = self.ui.previewKindComboBox.enabled = previews > 0

    def updateParameterNodeFromGUI(self, *args):
        if self._parameterNode is None or self._updating:
            return
        p = Parameters(self._parameterNode)
        wasModified = self._parameterNode.StartModify()
        try:
            p.target, p.roi = self.ui.targetSelector.currentNode(), self.ui.roiSelector.currentNode()
            p.atlas_folder = self.ui.atlasFolderPathLineEdit.currentPath
            p.fusion = self.ui.fusionComboBox.itemData(self.ui.fusionComboBox.currentIndex)
            p.model = self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex)
            p.device = self.ui.deviceComboBox.itemData(self.ui.deviceComboBox.currentIndex)
            p.label_table = self.ui.labelTableComboBox.itemData(self.ui.labelTableComboBox.currentIndex)
            p.select, p.refine = self.ui.selectSpinBox.value, self.ui.refineSpinBox.value
            p.atlases = [self._atlasRow(row) for row in range(self.ui.atlasTable.rowCount)]
        finally:
            self._parameterNode.EndModify(wasModified)

    def _atlasRow(self, row):
        table = self.ui.atlasTable
        use, image, labels = table.item(row, 0), table.cellWidget(row, 1), table.cellWidget(row, 2)
        return AtlasEntry(image.currentNode() if image else None, labels.currentNode() if labels else None,
                          use is None or use.checkState() == qt.Qt.Checked)

    def onAddAtlas(self):
        p = Parameters(self._parameterNode)
        p.atlases = list(p.atlases) + [AtlasEntry(None, None)]

    def onRemoveAtlas(self):
        rows = {index.row() for index in self.ui.atlasTable.selectionModel().selectedRows()}
        p = Parameters(self._parameterNode)
        p.atlases = [entry for row, entry in enumerate(p.atlases) if row not in rows]

    def onApplyOrCancel(self):
        if self.logic.isRunning():
            self.logic.cancel()
            self._timer.stop()
            self._showStatus("Cancelled: nothing was added to the scene.", 0)
        else:
            with slicer.util.tryWithErrorDisplay("Failed to start the segmentation.", waitCursor=True):
                self.logic.segmentWithParameters(Parameters(self._parameterNode))
                self._showStatus("Starting...", 0)
                self._timer.start()
        self.updateGUIFromParameterNode()

    def onPoll(self):
        state = self.logic.poll()
        if state is RunState.RUNNING:
            self._showStatus(self.logic.job.progress.message, self.logic.job.progress.fraction)
            return
        self._timer.stop()
        self._showStatus(STATUS_TEXT.get(state, state.value), 1.0 if state is RunState.SUCCEEDED else 0.0)
        with slicer.util.tryWithErrorDisplay("Segmentation failed.", waitCursor=True):
            review = self.logic.finish()
            if review is not None:
                Parameters(self._parameterNode).output_segmentation = review.segmentation
                self.ui.statusLabel.text = f"Done: {review.segmentation.GetName()}. Review the previews below."
                self.onPreviewChanged()
        self.updateGUIFromParameterNode()

    def _showStatus(self, message, fraction):
        self.ui.statusLabel.text = message
        self.ui.progressBar.value = int(round(fraction * self.ui.progressBar.maximum))

    def onRefuse(self):
        with slicer.util.tryWithErrorDisplay("Re-fusion failed.", waitCursor=True):
            p = Parameters(self._parameterNode)
            self.logic.refuse([e.image for e in p.atlases if e.enabled and e.image is not None], p.fusion or None)
            self._showStatus("Re-fused with the ticked atlases.", 1.0)
        self.updateGUIFromParameterNode()

    def onShowUncertainty(self):
        self.logic.showUncertainty()

    def onClearPreviews(self):
        self.logic.clearPreviews()
        self.updateGUIFromParameterNode()

    def onPreviewChanged(self, *args):
        kind = self.ui.previewKindComboBox.itemData(self.ui.previewKindComboBox.currentIndex)
        self.ui.previewLabel.text = self.logic.showPreview(self.ui.previewSlider.value, kind)


class CrossModalMASLogic(ScriptedLoadableModuleLogic):
    """Runs a segmentation job and the review; usable from the Python console without the Widget.

    Example::

        logic = slicer.util.getModuleLogic("CrossModalMAS")
        review = logic.segment(target, [(mr1, mr1Labels), (mr2, mr2Segmentation)], wait=True)
        logic.refuse([mr1])  # untick mr2: fuse again without registering again
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.job = None
        self.review = None
        self._atlasNames = {}  # atlas name in the run -> its image node ID

    @staticmethod
    def modelNames():
        from crossmodalmas.models import Task, read_manifest

        return [entry.name for entry in read_manifest() if entry.task is Task.REGISTRATION]

    @staticmethod
    def cudaAvailable():
        if not dependencies.torch_installed():
            return False
        import torch

        return bool(torch.cuda.is_available())

    def isRunning(self):
        return self.job is not None and self.job.state is RunState.RUNNING

    def segmentWithParameters(self, parameters, wait=False):
        """Start (or, with ``wait``, run) a job from the module's settings."""
        entries = [e for e in parameters.atlases if e.enabled]
        folder = parameters.atlas_folder.strip()
        frame = parameters.target.GetParentTransformNode() if parameters.target else None
        return self.segment(parameters.target, [(e.image, e.labels) for e in entries],
                            atlasFolder=folder or None, options=segment_options(parameters, frame),
                            labelTable=parameters.label_table, wait=wait)

    def segment(self, target, atlases=(), atlasFolder=None, options=None, labelTable=label_tables.AUTO,
                wait=False, previews=True, **runArguments):
        """Segment ``target`` with ``atlases`` ((volume, label map or segmentation) node pairs)
        and/or the atlases of ``atlasFolder`` (a folder or CSV) in a background process.

        Args:
            options: :class:`crossmodalmas.options.SegmentOptions` (default: the defaults).
            wait: block until done and return the :class:`CrossModalMASLib.review.Review`
                (else return at once; call :meth:`poll` and :meth:`finish`).
            runArguments: ``python``, ``env``, ``work_parent`` for :class:`SegmentationJob`.

        Raises:
            RuntimeError: a job is already running, or a dependency is missing.
            ValueError: an input is unusable.
        """
        if self.isRunning():
            raise RuntimeError("A segmentation is already running; cancel it first.")
        if hasattr(slicer, "app"):
            dependencies.ensure_dependencies(ask=not slicer.app.commandOptions().testingEnabled)
        sceneAtlases = [SceneAtlas(image, labels) for image, labels in atlases]
        files = folder_atlases(atlasFolder) if atlasFolder else []
        legend = slicer.modules.colors.logic() if hasattr(slicer, "modules") else None
        self.job = SegmentationJob(target, sceneAtlases, files, options, labelTable, previews, legend, **runArguments)
        self._atlasNames = dict(zip(self.job.prepared.names, (a.image.GetID() for a in sceneAtlases)))
        self.job.start()
        if not wait:
            return self.job
        self.job.wait()
        return self.finish()

    def poll(self):
        return self.job.poll() if self.job is not None else RunState.NOT_STARTED

    def finish(self):
        """Import a finished job's results (see :meth:`SegmentationJob.finish`)."""
        job, self.job = self.job, None
        review = job.finish() if job is not None else None
        if review is not None:
            self.review = review
        return review

    def cancel(self):
        if self.isRunning():
            self.job.cancel()
            logging.info("CrossModalMAS: segmentation cancelled")
        self.job = None

    def _runName(self, imageNode):
        return next((name for name, nodeID in self._atlasNames.items() if nodeID == imageNode.GetID()), None)

    def refuse(self, tickedImages, fusion=None):
        """Fuse again with the scene atlases whose image nodes are ``tickedImages`` and every folder
        atlas (which has no tick), without registering again; returns the new result."""
        if self.review is None:
            raise RuntimeError("Nothing to re-fuse: run a segmentation first.")
        folderAtlases = [name for name in self.review.result.atlas_names if name not in self._atlasNames]
        return self.review.refuse([self._runName(node) for node in tickedImages] + folderAtlases, fusion)

    def qcTexts(self, imageNode):
        """The QC columns of the atlas with this image node in the last run ("" where none)."""
        if self.review is None or imageNode is None:
            return [""] * len(QC_KEYS)
        result = self.review.current or self.review.result
        qc = next((q for q in result.qc if q.name == self._runName(imageNode)), None)
        return [f"{getattr(qc, key):.3g}" if qc else "" for key in QC_KEYS]

    def previewCount(self):
        previews = self.review.previews if self.review is not None else None
        return len(previews.atlases) if previews is not None else 0

    def showPreview(self, index, kind="image"):
        """Show atlas ``index``'s warped image, labels or weights over the target; returns its name."""
        if not self.previewCount() or not 0 <= index < self.previewCount():
            return ""
        atlas = self.review.previews.atlases[index]
        target = self.review.segmentation.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        if kind == "labels":
            slicer.util.setSliceViewerLayers(background=target, label=atlas.labels, labelOpacity=0.5)
        else:
            node = atlas.weights if kind == "weights" else atlas.image
            slicer.util.setSliceViewerLayers(background=target, foreground=node, foregroundOpacity=0.5, label=None)
        return atlas.name

    def showUncertainty(self):
        if self.review is not None and self.review.previews is not None:
            slicer.util.setSliceViewerLayers(foreground=self.review.previews.uncertainty, foregroundOpacity=0.6)

    def clearPreviews(self):
        if self.review is not None:
            self.review.previews = None
        return clear_previews(slicer.mrmlScene)


class CrossModalMASTest(ScriptedLoadableModuleTest):
    """Runs the Logic end to end on a tiny synthetic cross-modality case (never disabled)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_segment_tiny_phantom()

    def _tinyCase(self):
        import numpy as np
        from crossmodalmas.phantoms import heart_tissue_map, make_grid, random_heart_anatomy, render, tissue_to_labels
        from CrossModalMASLib.volume_nodes import add_volume_node

        nodes = []
        for seed, modality in ((1, "ct"), (6, "mr"), (9, "mr")):
            rng = np.random.default_rng(seed)
            anatomy = random_heart_anatomy(rng)
            grid = make_grid((32, 32, 32), (3.0, 3.0, 3.0), (0, 0, 0), anatomy.heart_centre_ras)
            tissue = heart_tissue_map(anatomy, grid)
            nodes.append(add_volume_node(slicer.mrmlScene, render(tissue, grid, modality, rng), f"{modality}{seed}"))
            if modality == "mr":
                nodes.append(add_volume_node(slicer.mrmlScene, tissue_to_labels(tissue, grid), f"{modality}{seed}-labels",
                                             labels=True))
        return nodes[0], [(nodes[1], nodes[2]), (nodes[3], nodes[4])]

    def test_segment_tiny_phantom(self):
        from crossmodalmas.options import SegmentOptions
        from CrossModalMASLib.segmentation_nodes import describe_segments

        self.delayDisplay("Segmenting a tiny phantom CT with two MR atlases")
        target, atlases = self._tinyCase()
        logic = CrossModalMASLogic()
        options = SegmentOptions(model=INSTANCE_OPT, refine_iterations=2, device="cpu")
        review = logic.segment(target, atlases, options=options, wait=True)
        segmentation = review.segmentation
        self.assertEqual(segmentation.GetName(), f"{target.GetName()} segmentation")
        self.assertEqual(segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()), target)
        names = {segment.name for segment in describe_segments(segmentation)}
        self.assertTrue({"LV myocardium", "LV blood pool"} <= names, names)
        self.assertEqual(logic.previewCount(), 2)
        if importlib.util.find_spec("crossmodalmas.refusion") is not None:
            self.delayDisplay("Re-fusing without the second atlas")
            refused = logic.refuse([atlases[0][0]])
            self.assertEqual(refused.atlas_names, [atlases[0][0].GetName()])
            self.assertGreater(segmentation.GetSegmentation().GetNumberOfSegments(), 0)
        self.assertEqual(logic.clearPreviews(), 1)
        self.delayDisplay("Test passed")
