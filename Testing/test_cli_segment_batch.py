"""``crossmodalmas segment-batch``: outputs on each target's grid, shards that cover every target
once, resume, bad targets reported while the others are done, exit codes, cancellation, and
every up-front error message.

Targets are tiny CT-like phantoms on different grids, segmented with the two MR atlases of
``tiny_case`` by a few instance-optimisation steps and majority vote (about a second each).
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from conftest import no_partial_files, phantom
from crossmodalmas.volume import Volume, read_labels, read_volume, write_volume

FAST = ["--model", "instance-opt", "--refine", "2", "--fusion", "mv", "--device", "cpu"]
# subject -> (seed, grid): each target on its own grid, so "on the target's grid" means something.
TARGETS = {"t1": (1, {}), "t2": (2, {"rotation": (0.0, 0.0, 15.0)}),
           "t3": (3, {"spacing": (3.0, 2.5, 2.0)}), "t4": (4, {"shape": (36, 40, 44)})}


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, tiny_case) -> Path:
    """targets/<subject>.nii.gz for each of TARGETS, targets.csv (t1's subject from its file
    name), atlases.csv (tiny_case's two MR atlases, absolute paths)."""
    folder = tmp_path_factory.mktemp("cohort")
    (folder / "targets").mkdir()
    for subject, (seed, grid) in TARGETS.items():
        write_volume(phantom(seed, "ct", **grid)[0], folder / "targets" / f"{subject}.nii.gz")
    write_csv(folder / "targets.csv", "image,subject",
              ["targets/t1.nii.gz,"] + [f"targets/{s}.nii.gz,{s}" for s in list(TARGETS)[1:]])
    write_csv(folder / "atlases.csv", "image,labels", [f"{image},{labels}" for image, labels in tiny_case.atlases])
    return folder


def batch(cli, cohort: Path, out: Path, *extra, targets: Path = None):
    return cli("segment-batch", "--targets", targets or cohort / "targets.csv", "--atlases", cohort / "atlases.csv",
               "--out", out, *FAST, *extra)


def outputs(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()} if out.exists() else set()


def test_shards_cover_every_target_once_on_its_grid_then_resume_skips(cli, cohort, tmp_path):
    out = tmp_path / "out"
    per_shard = []
    for index in range(3):
        before = outputs(out)
        run = batch(cli, cohort, out, "--shard", f"{index}/3")
        assert run.code == 0, run.err
        new = outputs(out) - before
        per_shard.append({name.split(".")[0] for name in new})
        assert new == {f"{s}.{ext}" for s in per_shard[-1] for ext in ("nii.gz", "json")}
        assert run.out.splitlines()[-1] == f"{len(per_shard[-1])} segmented, 0 skipped (done), 0 failed"
    assert per_shard == [{"t1", "t4"}, {"t2"}, {"t3"}]  # rows i with i % 3 == I
    for subject in TARGETS:
        target = read_volume(cohort / "targets" / f"{subject}.nii.gz")
        labels = read_labels(out / f"{subject}.nii.gz")
        assert labels.grid.same_as(target.grid) and set(labels.labels) <= {205, 420, 500, 550, 600, 820, 850}
        report = json.loads((out / f"{subject}.json").read_text())
        assert report["subject"] == subject and report["target"] == str(cohort / "targets" / f"{subject}.nii.gz")
        assert report["device"] == "cpu" and report["total_s"] > 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    run = batch(cli, cohort, out)
    assert run.code == 0 and run.out.splitlines()[-1] == "0 segmented, 4 skipped (done), 0 failed"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    (out / "t2.json").unlink()  # as if stopped between its label map and its report
    run = batch(cli, cohort, out)
    assert run.code == 0 and run.out.splitlines()[-1] == "1 segmented, 3 skipped (done), 0 failed"
    assert (out / "t2.json").is_file() and no_partial_files(out)


def test_bad_targets_are_reported_and_the_others_done(cli, cohort, tmp_path):
    flat = tmp_path / "flat.nii.gz"
    target = read_volume(cohort / "targets" / "t1.nii.gz")
    write_volume(Volume(np.full(target.array.shape, 7.0, np.float32), target.ijk_to_ras), flat)
    targets = write_csv(tmp_path / "targets.csv", "image",
                        [str(flat), str(tmp_path / "gone.nii.gz"), str(cohort / "targets" / "t3.nii.gz")])
    out = tmp_path / "out"
    run = batch(cli, cohort, out, targets=targets)
    assert run.code == 2
    errors = [line for line in run.err.splitlines() if line.startswith("crossmodalmas: error:")]
    assert errors == [f"crossmodalmas: error: target flat: {flat}: image is constant (7 everywhere)",
                      f"crossmodalmas: error: target gone: {tmp_path / 'gone.nii.gz'}: file does not exist"]
    assert run.out.splitlines()[-1] == "1 segmented, 0 skipped (done), 2 failed: flat, gone"
    assert outputs(out) == {"t3.nii.gz", "t3.json"}


def test_cancel_leaves_no_file_of_the_target_in_progress(cli, cohort, tmp_path, monkeypatch):
    import crossmodalmas.pipeline as pipeline

    real, calls = pipeline.segment, []

    def segment_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # SIGTERM during the second target: the pipeline's next poll stops it
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "segment", segment_then_sigterm)
    out = tmp_path / "out"
    run = batch(cli, cohort, out)
    assert run.code == 3 and len(calls) == 2
    assert "crossmodalmas: cancelled at target t2 (no output for it); 1 segmented in this run are kept" in run.err.splitlines()
    assert outputs(out) == {"t1.nii.gz", "t1.json"} and no_partial_files(out)


def test_duplicate_subjects_are_refused_before_any_work(cli, cohort, tmp_path):
    targets = write_csv(tmp_path / "targets.csv", "image,subject",
                        ["a/x.nii.gz,", "b/x.nii.gz,", "c.nii.gz,y", "d.nii.gz,y", "e.nii.gz,z"])
    run = batch(cli, cohort, tmp_path / "out", targets=targets)
    assert run.code == 2 and not (tmp_path / "out").exists()
    assert run.error_line() == f"crossmodalmas: error: --targets {targets}: subject(s) listed more than once: x, y"


@pytest.mark.parametrize("header, rows, message", [
    ("path,subject", ["a.nii.gz,a"], r"--targets .*targets\.csv: needs an 'image' column \(and optionally 'subject'\); "
                                    r"it has 'path', 'subject'$"),
    ("image,subject", [",a"], r"--targets .*targets\.csv: line 2: the 'image' cell is empty$"),
    ("image,subject", ["a.nii.gz,../a"], r"--targets .*targets\.csv: line 2: subject '\.\./a' cannot be a file name "
                                        r"\(no path separators, no leading dot\)$"),
    ("image", [], r"--targets .*targets\.csv: lists no target$"),
])
def test_targets_csv_errors(cli, cohort, tmp_path, header, rows, message):
    run = batch(cli, cohort, tmp_path / "out", targets=write_csv(tmp_path / "targets.csv", header, rows))
    assert run.code == 2
    assert re.search(message, run.error_line())


def test_up_front_errors_stop_the_batch_before_any_target(cli, cohort, tmp_path):
    out = tmp_path / "out"
    run = cli("segment-batch", "--targets", tmp_path / "none.csv", "--atlases", cohort / "atlases.csv", "--out", out)
    assert run.code == 2 and run.error_line() == f"crossmodalmas: error: --targets {tmp_path / 'none.csv'}: CSV does not exist"
    run = batch(cli, cohort, out, "--model", "no-such-net")
    assert run.code == 2 and run.error_line().startswith("crossmodalmas: error: --model no-such-net: no such registration model")
    bad_atlases = write_csv(tmp_path / "atlases.csv", "image,labels", [f"{cohort / 'targets' / 't1.nii.gz'},missing_seg.nii.gz"])
    run = cli("segment-batch", "--targets", cohort / "targets.csv", "--atlases", bad_atlases, "--out", out, *FAST)
    assert run.code == 2 and run.error_line() == f"crossmodalmas: error: {tmp_path / 'missing_seg.nii.gz'}: file does not exist"
    assert outputs(out) == set()


def test_an_input_in_the_output_folder_is_never_overwritten(cli, cohort):
    run = batch(cli, cohort, cohort / "targets")
    assert run.code == 2
    assert run.error_line() == (f"crossmodalmas: error: --out {cohort / 'targets' / 't1.nii.gz'}: is also an input; "
                                "refusing to overwrite it")


@pytest.mark.parametrize("shard", ["3/3", "1", "a/2", "1/-2", "0/0"])
def test_bad_shard_is_a_usage_error(cli, cohort, tmp_path, capsys, shard):
    with pytest.raises(SystemExit) as caught:
        batch(cli, cohort, tmp_path / "out", "--shard", shard)
    assert caught.value.code == 2
    assert f"argument --shard: must be I/N with 0 <= I < N (e.g. 0/10), got {shard}" in capsys.readouterr().err
