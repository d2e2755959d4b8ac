"""A segmentation job: scene nodes in, background run, scene nodes out.

:class:`SegmentationJob` writes the target and the scene atlases to a work folder (the inputs
are only read), starts the command line in the background (:class:`SegmentationRun`), and when
the run has succeeded adds the results to the scene: a segmentation node named after the
target and referenced to it, and the review previews. Nothing is added to the scene before
that, so a cancelled or failed job leaves the scene as it was; the work folder is removed in
every case.
"""

from __future__ import annotations

import shutil
from typing import Mapping, Optional, Sequence

from CrossModalMASLib import label_tables
from CrossModalMASLib.atlas_sources import SceneAtlas, prepare_scene_atlases
from CrossModalMASLib.background_process import Progress, RunState
from CrossModalMASLib.previews import add_previews
from CrossModalMASLib.review import Review
from CrossModalMASLib.segmentation_nodes import add_segmentation
from CrossModalMASLib.segmentation_run import SegmentationRun, new_work_folder
from CrossModalMASLib.volume_nodes import volume_from_node
from crossmodalmas.atlases import AtlasFiles
from crossmodalmas.options import SegmentOptions
from crossmodalmas.volume import write_volume


class JobFailed(RuntimeError):
    """The command line failed; the message is its one-line error."""


class SegmentationJob:
    """Segment ``target`` with scene and file atlases in a background process.

    Args:
        target: the volume node to segment (only read).
        scene_atlases: atlases in the scene (only read).
        file_atlases: atlas files (from a folder or CSV).
        options: the run options (ROI in the target's frame).
        label_table: which known table names the labels (``auto``, a table name or ``none``).
        previews: add the review previews when done.
        legend_logic: the Colors module logic, to show colour legends (None: no legend).
        python, env, work_parent: override the Python, environment and temporary folder.

    Raises:
        ValueError: an input node is unusable (the message names it).
    """

    def __init__(self, target, scene_atlases: Sequence[SceneAtlas] = (), file_atlases: Sequence[AtlasFiles] = (),
                 options: Optional[SegmentOptions] = None, label_table: str = label_tables.AUTO,
                 previews: bool = True, legend_logic=None, python: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None, work_parent: Optional[str] = None):
        if target is None:
            raise ValueError("SegmentationJob(): 'target' must be a volume node, got None")
        if not scene_atlases and not file_atlases:
            raise ValueError("SegmentationJob(): no atlas given (at least one is needed)")
        self.target, self.frame = target, target.GetParentTransformNode()
        self.label_table, self.make_previews, self.legend_logic = label_table, previews, legend_logic
        self.work = new_work_folder(work_parent)
        try:
            target_file = self.work / "in" / "target.nii.gz"
            target_file.parent.mkdir(parents=True)
            write_volume(volume_from_node(target, self.frame, "target"), target_file)
            taken = {f.name.lower() for f in file_atlases}
            self.prepared = prepare_scene_atlases(scene_atlases, self.work / "in" / "atlases", self.frame,
                                                  label_table, taken)
            self.run = SegmentationRun(self.work, target_file, [*self.prepared.files, *file_atlases],
                                       options or SegmentOptions(), python, env)
        except BaseException:
            self._remove_work()
            raise

    def _remove_work(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    @property
    def progress(self) -> Progress:
        return self.run.process.progress

    @property
    def state(self) -> RunState:
        return self.run.process.state

    def start(self) -> None:
        self.run.start()

    def poll(self) -> RunState:
        return self.run.poll()

    def wait(self, timeout: Optional[float] = None) -> RunState:
        return self.run.wait(timeout)

    def cancel(self) -> None:
        """Stop the run (the whole process tree) and remove its files; the scene is not touched."""
        self.run.cancel()
        self.run.cleanup()

    def finish(self) -> Optional[Review]:
        """Add the results to the scene once the run has ended; remove the work folder.

        Returns:
            The :class:`Review` of a successful run; None for a cancelled one.

        Raises:
            JobFailed: the run failed (the message is the command line's error).
            RuntimeError: the run is still going.
        """
        state = self.run.poll()
        if state is RunState.RUNNING:
            raise RuntimeError("SegmentationJob.finish(): the run is still going; wait for it or cancel it")
        try:
            if state is RunState.CANCELLED:
                return None
            if state is not RunState.SUCCEEDED:
                raise JobFailed(self.run.process.error_message)
            return self._import(self.run.result())
        finally:
            self.run.cleanup()

    def _import(self, result) -> Review:
        scene = self.target.GetScene()
        values = [int(v) for v in result.label_values[1:]]
        table = label_tables.resolve_table(self.label_table, values)
        infos = label_tables.describe(values, self.prepared.known, table)
        segmentation = add_segmentation(scene, result.labels, infos, self.target,
                                        f"{self.target.GetName()} segmentation", self.frame)
        previews = add_previews(scene, result, self.target, infos, self.legend_logic) if self.make_previews else None
        return Review(result, segmentation, previews, infos)
