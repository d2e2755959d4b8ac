"""One ``crossmodalmas segment`` run in a background process, in a work folder of its own.

The inputs are written to the work folder, the command line writes its outputs there (the
segmentation, the review state with ``--save-warped``, the report), the result is read back,
and the folder is removed in every case (:meth:`SegmentationRun.cleanup`), so a cancelled or
failed run leaves nothing behind. The command line is the stable contract between the module
and the compute package: the same ``segment()`` the scripts and benchmarks call.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

from CrossModalMASLib.background_process import BackgroundProcess, RunState
from crossmodalmas.atlases import AtlasFiles
from crossmodalmas.options import SegmentOptions
from crossmodalmas.result import Result

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding crossmodalmas/


def python_executable() -> str:
    """``PythonSlicer`` inside the Slicer application (Slicer's own Python with its
    environment), else the Python running this code (tests, a plain Python console)."""
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:
            found = shutil.which("PythonSlicer")
            if found:
                return found
    except ImportError:
        pass
    return sys.executable


def child_environment(base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the compute package importable.

    Inside Slicer the module's folder is on ``sys.path`` but not on ``PYTHONPATH``, so a child
    ``PythonSlicer`` would not find ``crossmodalmas`` without it.
    """
    env = dict(os.environ if base is None else base)
    parts = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def segment_arguments(target: Path, atlases: Sequence[AtlasFiles], options: SegmentOptions, output: Path,
                      warped: Path, report: Path) -> list[str]:
    """The ``crossmodalmas segment`` arguments for these files and options (after ``-m crossmodalmas``)."""
    args = ["segment", "--target", str(target)]
    for pair in atlases:
        args += ["--atlas", str(pair.image), str(pair.labels)]
    args += ["--output", str(output), "--save-warped", str(warped), "--report", str(report), "--progress-lines",
             "--device", options.device.value]
    if options.fusion is not None:  # None: the command line's own choice
        args += ["--fusion", options.fusion.value]
    if getattr(options, "similarity_model", None):
        args += ["--similarity-model", str(options.similarity_model)]
    if options.select is not None:
        args += ["--select", str(int(options.select))]
    if options.roi_ras is not None:
        args += ["--roi", *(repr(float(v)) for v in options.roi_ras)]
    if options.model:
        args += ["--model", str(options.model)]
    if options.refine_iterations is not None:
        args += ["--refine", str(int(options.refine_iterations))]
    return args


class SegmentationRun:
    """A background ``crossmodalmas segment`` run in its own work folder.

    Args:
        work: the work folder (created by :func:`new_work_folder`; removed by :meth:`cleanup`).
        target: the target image file.
        atlases: atlas file pairs.
        options: the run options.
        python: the Python to run (default: :func:`python_executable`).
        env: the child's environment (default: :func:`child_environment`).
    """

    def __init__(self, work: Path, target: Path, atlases: Sequence[AtlasFiles], options: SegmentOptions,
                 python: Optional[str] = None, env: Optional[Mapping[str, str]] = None):
        self.work = Path(work)
        self.output, self.warped, self.report = (self.work / "out" / "segmentation.nii.gz",
                                                 self.work / "out" / "review", self.work / "out" / "report.json")
        arguments = segment_arguments(target, atlases, options, self.output, self.warped, self.report)
        self.process = BackgroundProcess([python or python_executable(), "-m", "crossmodalmas", *arguments],
                                         env=child_environment() if env is None else env, cwd=str(self.work))

    def start(self) -> None:
        self.process.start()

    def poll(self) -> RunState:
        return self.process.poll()

    def wait(self, timeout: Optional[float] = None) -> RunState:
        return self.process.wait(timeout)

    def cancel(self) -> None:
        self.process.cancel()

    def result(self) -> Result:
        """The run's :class:`Result` (call after it succeeded).

        Raises:
            RuntimeError: the run has not succeeded.
        """
        if self.process.state is not RunState.SUCCEEDED:
            raise RuntimeError(f"SegmentationRun.result(): the run has not succeeded ({self.process.state.value})")
        from crossmodalmas.result_io import load_result  # the state `segment --save-warped` writes

        return load_result(self.warped)

    def cleanup(self) -> None:
        """Stop the process if it still runs and remove the work folder."""
        if self.process.state is RunState.RUNNING:
            self.process.cancel()
        shutil.rmtree(self.work, ignore_errors=True)


def new_work_folder(parent: Optional[str] = None) -> Path:
    """A new, empty work folder (under ``parent``, default the system's temporary folder)."""
    return Path(tempfile.mkdtemp(prefix="CrossModalMAS-", dir=parent))

