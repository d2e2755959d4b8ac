"""The background runner for real: the command line on a tiny phantom case, progress, Cancel.

:class:`BackgroundProcess` and :class:`SegmentationRun` need no slicer-core (they are plain
Python); the job tests, which check that a cancelled run adds no node, do and skip without it.
The cancel tests run the command line through a launcher script too (``sh`` that starts Python
as its child and waits), as ``PythonSlicer`` starts the real Python: Cancel must end both.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import mean_dice, no_partial_files
from test_slicer_fixtures import child_env
from CrossModalMASLib.background_process import (EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ERROR, EXIT_OK,
                                                 BackgroundProcess, Progress, RunState, parse_progress)
from CrossModalMASLib.segmentation_run import SegmentationRun, new_work_folder, segment_arguments
from crossmodalmas.atlases import AtlasFiles
from crossmodalmas.options import SegmentOptions
from crossmodalmas.volume import read_labels

QUICK = SegmentOptions(model="instance-opt", refine_iterations=2, device="cpu")
SLOW = SegmentOptions(model="instance-opt", refine_iterations=3000, device="cpu")  # long enough to cancel


def tiny_run(tiny_case, tmp_path, options=QUICK, python=None) -> SegmentationRun:
    atlases = [AtlasFiles(image, labels) for image, labels in tiny_case.atlases]
    return SegmentationRun(new_work_folder(str(tmp_path)), tiny_case.target, atlases, options, python=python,
                           env=child_env())


def launcher(tmp_path) -> str:
    """A shell script that runs this Python as its child and waits (like the PythonSlicer launcher)."""
    path = tmp_path / "PythonLauncher"
    path.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\nexit $?\n')
    path.chmod(0o755)
    return str(path)


def group_members(group: int) -> list[int]:
    """Live (non-zombie) processes of process group ``group`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def run_until_registering(run: SegmentationRun, timeout=90.0) -> None:
    run.start()
    deadline = time.monotonic() + timeout
    while "instance optimisation" not in run.process.progress.message:
        assert run.poll() is RunState.RUNNING, f"the run ended early: {run.process.log[-5:]}"
        assert time.monotonic() < deadline, "no registration progress in time"
        time.sleep(0.05)


def test_exit_codes_are_the_command_lines():
    from crossmodalmas import cli

    assert (EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_CANCELLED) == (cli.EXIT_OK, cli.EXIT_ERROR,
                                                                     cli.EXIT_BAD_INPUT, cli.EXIT_CANCELLED)


def test_progress_lines_are_parsed_and_other_lines_are_not():
    assert parse_progress("PROGRESS 0.3300 registration network x") == Progress(0.33, "registration network x")
    assert parse_progress("PROGRESS 1.5 done") == Progress(1.0, "done")
    assert parse_progress("crossmodalmas: error: x") is None
    assert parse_progress("PROGRESS abc y") is None


def test_segment_arguments_carry_every_option(tmp_path):
    options = SegmentOptions(fusion="loa", select=2, roi_ras=(1, 2, 3, 4, 5, 6), model="m", refine_iterations=0,
                             device="cpu")
    args = segment_arguments(Path("t.nii.gz"), [AtlasFiles(Path("a.nii.gz"), Path("a_seg.nii.gz"))], options,
                             Path("o.nii.gz"), Path("w"), Path("r.json"))
    text = " ".join(args)
    for part in ("--atlas a.nii.gz a_seg.nii.gz", "--fusion loa", "--select 2", "--roi 1.0 2.0 3.0 4.0 5.0 6.0",
                 "--model m", "--refine 0", "--device cpu", "--progress-lines", "--save-warped w"):
        assert part in text


def test_run_reports_rising_progress_and_returns_the_result(tiny_case, tmp_path):
    run = tiny_run(tiny_case, tmp_path)
    run.start()
    fractions = []
    while run.poll() is RunState.RUNNING:
        fractions.append(run.process.progress.fraction)
        time.sleep(0.02)
    assert run.poll() is RunState.SUCCEEDED, run.process.error_message
    fractions.append(run.process.progress.fraction)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(set(fractions)) >= 3, fractions
    assert run.output.is_file() and run.report.is_file() and run.warped.is_dir()
    truth = read_labels(tiny_case.truth)
    assert mean_dice(read_labels(run.output).array, truth.array) > 0.5
    pytest.importorskip("crossmodalmas.result_io", reason="the compute package cannot load a run's review state yet")
    result = run.result()
    np.testing.assert_array_equal(result.labels.array, read_labels(run.output).array)
    assert sorted(result.atlas_names) == tiny_case.names and result.weights.shape[0] == 2
    run.cleanup()
    assert not run.work.exists()


def test_failed_run_reports_the_command_lines_error(tiny_case, tmp_path):
    bad = AtlasFiles(tmp_path / "missing.nii.gz", tmp_path / "missing_seg.nii.gz")
    run = SegmentationRun(new_work_folder(str(tmp_path)), tiny_case.target, [bad], QUICK, env=child_env())
    run.start()
    assert run.wait(timeout=120) is RunState.FAILED
    assert run.process.exit_code == EXIT_BAD_INPUT
    assert "missing.nii.gz: file does not exist" in run.process.error_message
    with pytest.raises(RuntimeError, match=r"SegmentationRun.result\(\): the run has not succeeded \(failed\)"):
        run.result()


@pytest.mark.skipif(not Path("/proc/self/stat").exists() or os.name == "nt", reason="reads process groups in /proc")
@pytest.mark.parametrize("through_launcher", [False, True], ids=["python", "launcher"])
def test_cancel_ends_the_process_tree_within_2_s_and_leaves_nothing(tiny_case, tmp_path, through_launcher):
    (tmp_path / "runs").mkdir()
    run = tiny_run(tiny_case, tmp_path / "runs", SLOW, python=launcher(tmp_path) if through_launcher else None)
    run_until_registering(run)
    group = run.process.pid
    assert len(group_members(group)) == (2 if through_launcher else 1)
    started = time.monotonic()
    run.cancel()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    assert group_members(group) == []
    assert run.poll() is RunState.CANCELLED and run.process.exit_code == EXIT_CANCELLED
    if not through_launcher:
        assert run.process.returncode in (EXIT_CANCELLED, -9)
        if run.process.returncode == EXIT_CANCELLED:
            # it stopped cleanly on SIGTERM within the grace (on a loaded machine a network pass can
            # outlast it, and SIGKILL ends the run before it says so: the checks above still hold)
            assert "crossmodalmas: cancelled; no output written" in run.process.log, run.process.log[-5:]
    assert not run.output.exists() and not run.report.exists() and not run.warped.exists()
    run.cleanup()
    assert not run.work.exists() and no_partial_files(tmp_path)
    with pytest.raises(RuntimeError, match=r"has not succeeded \(cancelled\)"):
        run.result()


def test_background_process_refuses_an_empty_command():
    with pytest.raises(ValueError, match=r"BackgroundProcess\(\): 'command' must name a program"):
        BackgroundProcess([])


def test_job_cancel_adds_no_node_and_removes_its_files(tiny_case, tmp_path):
    from test_slicer_fixtures import new_scene, require_slicer_core

    require_slicer_core()
    from CrossModalMASLib.atlas_sources import SceneAtlas
    from CrossModalMASLib.segmentation_job import SegmentationJob
    from CrossModalMASLib.volume_nodes import add_volume_node
    from crossmodalmas.volume import read_volume

    scene = new_scene()
    target = add_volume_node(scene, read_volume(tiny_case.target), "target")
    atlases = [SceneAtlas(add_volume_node(scene, read_volume(i), i.name[:-7]),
                          add_volume_node(scene, read_labels(l), l.name[:-7], labels=True)) for i, l in tiny_case.atlases]
    before = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    arrays = [np.array(volume.GetImageData().GetPointData().GetScalars()) for volume in (target, atlases[0].labels)]
    job = SegmentationJob(target, atlases, options=SLOW, env=child_env(), work_parent=str(tmp_path))
    run_until_registering(job.run)
    job.cancel()
    assert job.state is RunState.CANCELLED and job.finish() is None
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == before
    assert not job.work.exists() and no_partial_files(tmp_path)
    for node, array in zip((target, atlases[0].labels), arrays):  # inputs never modified
        np.testing.assert_array_equal(np.array(node.GetImageData().GetPointData().GetScalars()), array)
