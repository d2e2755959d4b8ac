"""``crossmodalmas segment`` and ``crossmodalmas demo`` end to end on tiny phantom cases.

In-process through ``crossmodalmas.cli.main`` for most cases; as a real process for what only
a process shows (its exit code, ``--progress-lines`` on stdout, SIGTERM cancellation).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import (MMWHS_CODES, QUICK, TINY_SPACING, atlas_args, mean_dice, no_partial_files, phantom,
                      process_env, run_process, sha256, write_atlas)
from crossmodalmas.result_io import load_result
from crossmodalmas.volume import read_labels, read_volume, write_labels, write_volume

PROGRESS_LINE = re.compile(r"^PROGRESS (\d+(?:\.\d+)?) (\S.*)$")


def assert_on_grid_of(output, reference) -> None:
    """``output`` has ``reference``'s exact grid: size, spacing, origin and direction (SimpleITK, LPS)."""
    out, ref = sitk.ReadImage(str(output)), sitk.ReadImage(str(reference))
    assert out.GetDimension() == 3
    assert out.GetSize() == ref.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), ref.GetSpacing(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), ref.GetOrigin(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(out.GetDirection(), ref.GetDirection(), rtol=0, atol=1e-5)


def assert_good_segmentation(output, truth_path, minimum=0.5) -> np.ndarray:
    labels, truth = read_labels(output).array, read_labels(truth_path).array
    values = set(np.unique(labels).tolist()) - {0}
    assert values <= MMWHS_CODES, f"label values {sorted(values)} are not the atlases' MM-WHS codes"
    assert {205, 500, 600} <= values
    score = mean_dice(labels, truth)
    assert score > minimum, f"mean Dice {score:.3f} vs truth; chance is near 0"
    return labels


def test_segment_writes_labels_on_the_target_grid_with_the_atlas_codes(cli, tiny_case, tmp_path):
    out = tmp_path / "seg.nii.gz"
    run = cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases), "--output", out, *QUICK)
    assert run.code == 0, run.err
    assert_on_grid_of(out, tiny_case.target)
    assert_good_segmentation(out, tiny_case.truth)
    assert sitk.ReadImage(str(out)).GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkInt32)
    assert "Traceback" not in run.err
    assert no_partial_files(tmp_path)


def test_segment_with_atlases_csv(cli, tiny_case, tmp_path):
    manifest = tmp_path / "atlases.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "labels"])
        for image, labels in tiny_case.atlases:
            writer.writerow([image, labels])  # absolute paths
    out = tmp_path / "seg.nii.gz"
    run = cli("segment", "--target", tiny_case.target, "--atlases", manifest, "--output", out, "--report",
              tmp_path / "r.json", *QUICK)
    assert run.code == 0, run.err
    assert_good_segmentation(out, tiny_case.truth)
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(a["name"] for a in report["atlases"]) == tiny_case.names


def test_segment_with_atlases_csv_of_relative_paths(cli, tiny_case, tmp_path):
    (tmp_path / "lists" / "data").mkdir(parents=True)
    for pair in tiny_case.atlases:
        for path in pair:
            shutil.copy(path, tmp_path / "lists" / "data" / path.name)
    manifest = tmp_path / "lists" / "atlases.csv"  # paths relative to the CSV's own folder
    manifest.write_text("image,labels\n" + "".join(f"data/{i.name},data/{s.name}\n" for i, s in tiny_case.atlases))
    out = tmp_path / "seg.nii.gz"
    run = cli("segment", "--target", tiny_case.target, "--atlases", manifest, "--output", out, *QUICK)
    assert run.code == 0, run.err
    assert_on_grid_of(out, tiny_case.target)


def test_segment_with_atlas_dir(cli, tiny_case, tmp_path):
    out = tmp_path / "seg.nii.gz"
    report = tmp_path / "r.json"
    run = cli("segment", "--target", tiny_case.target, "--atlas-dir", tiny_case.folder / "atlases",
              "--output", out, "--report", report, *QUICK)
    assert run.code == 0, run.err
    assert_good_segmentation(out, tiny_case.truth)
    assert sorted(a["name"] for a in json.loads(report.read_text())["atlases"]) == tiny_case.names


def test_report_holds_timings_device_and_per_atlas_qc(cli, tiny_case, tmp_path):
    report = tmp_path / "reports" / "run.json"
    run = cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases),
              "--output", tmp_path / "seg.nii.gz", "--report", report, "--fusion", "nlwv", *QUICK)
    assert run.code == 0, run.err
    data = json.loads(report.read_text())
    assert data["device"] == "cpu"
    assert data["fusion"] == "nlwv"
    assert {"affine", "register", "fuse"} <= set(data["timings_s"])
    assert all(isinstance(v, (int, float)) and v >= 0 for v in data["timings_s"].values())
    assert data["total_s"] > 0
    assert set(data["labels"]) == MMWHS_CODES
    assert [a["name"] for a in data["atlases"]] and len(data["atlases"]) == 2
    for qc in data["atlases"]:
        assert {"weight_share", "agreement", "folding_percent", "inverse_consistency_mm",
                "similarity_before", "similarity_after", "coverage"} <= set(qc)
        assert 0.0 <= qc["weight_share"] <= 1.0 and 0.0 <= qc["agreement"] <= 1.0
        assert 0.0 <= qc["coverage"] <= 1.0 and qc["folding_percent"] >= 0.0
    assert sum(qc["weight_share"] for qc in data["atlases"]) == pytest.approx(1.0, abs=0.05)
    assert no_partial_files(report.parent)


def test_save_warped_writes_every_preview(cli, tiny_case, tmp_path):
    folder, out = tmp_path / "warped", tmp_path / "new" / "deeper" / "seg.nii.gz"  # folders are created
    run = cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases),
              "--output", out, "--save-warped", folder, *QUICK)
    assert run.code == 0, run.err
    assert out.exists()
    expected = {f"{name}_warped_{kind}.nii.gz" for name in tiny_case.names for kind in ("image", "labels", "weights")}
    names = {p.name for p in folder.iterdir()}
    # unknown.nii.gz only where part of the target lies outside both atlases' fields of view
    assert expected | {"uncertainty.nii.gz", "result.npz", "result.json"} == names - {"unknown.nii.gz"}
    if "unknown.nii.gz" in names:
        unknown = read_labels(folder / "unknown.nii.gz").array.astype(bool)
        assert unknown.any() and not read_labels(out).array[unknown].any()
    saved = load_result(folder)
    assert saved.atlas_names == list(tiny_case.names)
    np.testing.assert_array_equal(saved.labels.array, read_labels(out).array)
    shape = read_volume(folder / "uncertainty.nii.gz").array.shape
    weights = [read_volume(folder / f"{name}_warped_weights.nii.gz").array for name in tiny_case.names]
    np.testing.assert_allclose(weights[0] + weights[1], 1.0, atol=1e-4)
    for name in tiny_case.names:
        warped = read_labels(folder / f"{name}_warped_labels.nii.gz")
        assert warped.array.shape == shape
        assert set(np.unique(warped.array).tolist()) - {0} <= MMWHS_CODES
        assert read_volume(folder / f"{name}_warped_image.nii.gz").array.shape == shape


@pytest.mark.parametrize("fusion", ["mv", "nlwv", "loa", "loa-local"])
def test_each_fusion_method_segments(cli, tiny_case, tmp_path, fusion):
    out, report = tmp_path / "seg.nii.gz", tmp_path / "r.json"
    run = cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases), "--output", out,
              "--fusion", fusion, "--report", report, *QUICK)
    assert run.code == 0, run.err
    assert json.loads(report.read_text())["fusion"] == fusion
    assert_good_segmentation(out, tiny_case.truth)


def test_an_unknown_similarity_model_is_refused_before_any_work(cli, tiny_case, tmp_path):
    out = tmp_path / "seg.nii.gz"
    run = cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases), "--output", out,
              "--fusion", "plf", "--similarity-model", "no-such-net", *QUICK)
    assert run.code == 2, run.err
    assert re.search(r"--similarity-model no-such-net: no such similarity model", run.error_line())
    assert "Traceback" not in run.err and "PROGRESS 0.02" not in run.out
    assert not out.exists()


def _foreground_ras(labels_path):
    labels = read_labels(labels_path)
    ijk = np.argwhere(labels.array != 0)[:, ::-1]
    return labels.grid.ijk_to_points(ijk)


def test_roi_restricts_the_working_region(cli, tiny_case, tmp_path):
    truth_ras = _foreground_ras(tiny_case.truth)
    centre = 0.5 * (truth_ras.min(0) + truth_ras.max(0))
    low, high = centre - [14.0, 12.0, 10.0], centre + [14.0, 12.0, 10.0]
    out, report = tmp_path / "seg.nii.gz", tmp_path / "r.json"
    run = cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases), "--output", out,
              "--roi", *high, *low, "--report", report, *QUICK)  # corners in any order
    assert run.code == 0, run.err
    assert_on_grid_of(out, tiny_case.target)
    found = _foreground_ras(out)
    assert len(found) > 100
    tolerance = 2.0 * max(TINY_SPACING)  # the region snaps outwards to target voxels
    assert np.all(found >= low - tolerance) and np.all(found <= high + tolerance)
    assert np.any(truth_ras < low - tolerance)  # the ROI does cut the anatomy
    working = json.loads(report.read_text())["working_grid"]["shape_kji"]
    assert np.prod(working) < 0.5 * np.prod(read_volume(tiny_case.target).array.shape)


def test_roi_outside_the_target_is_refused(cli, tiny_case, tmp_path):
    run = cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases), "--output",
              tmp_path / "seg.nii.gz", "--roi", "900", "900", "900", "950", "950", "950", *QUICK)
    assert run.code == 2
    assert re.search(r"--roi: .*outside the target", run.error_line())


def test_progress_lines_rise_to_one_in_a_real_process(tiny_case, tmp_path):
    out = tmp_path / "seg.nii.gz"
    done = run_process("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases), "--output", out,
                       "--progress-lines", *QUICK)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, "no PROGRESS line on stdout"
    matches = [PROGRESS_LINE.match(line) for line in lines]
    assert all(matches), f"stdout lines that are not 'PROGRESS <f> <msg>': {[l for l, m in zip(lines, matches) if not m]}"
    fractions = [float(m.group(1)) for m in matches]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert all(b >= a for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] == 1.0
    assert len(lines) >= 8  # at least one per step
    assert any("registration" in m.group(2) for m in matches)
    assert out.exists()


def test_exit_code_of_a_real_process_is_zero_on_success(tiny_case, tmp_path):
    out = tmp_path / "seg.nii.gz"
    done = run_process("segment", "--target", tiny_case.target, "--atlas-dir", tiny_case.folder / "atlases",
                       "--output", out, *QUICK)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert_on_grid_of(out, tiny_case.target)


def test_sigterm_cancels_with_exit_3_and_leaves_no_output(tiny_case, tmp_path):
    out, report, warped = tmp_path / "out" / "seg.nii.gz", tmp_path / "out" / "r.json", tmp_path / "out" / "warped"
    command = [sys.executable, "-m", "crossmodalmas", "segment", "--target", str(tiny_case.target),
               *atlas_args(tiny_case.atlases), "--output", str(out), "--report", str(report),
               "--save-warped", str(warped), "--progress-lines", "--refine", "2000", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                               errors="replace", env=process_env())
    try:
        deadline = time.monotonic() + 60
        for line in process.stdout:
            if re.match(r"^PROGRESS \S+ registration network \S+, atlas mr6 \(1 of 2\)$", line.strip()):  # refining
                break
            assert time.monotonic() < deadline, "no registration progress within 60 s"
        else:
            pytest.fail(f"the run ended before registration: {process.wait()} {process.stderr.read()}")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    assert code == 3, stderr
    assert "cancelled" in stderr and "Traceback" not in stderr
    assert not out.exists() and not report.exists() and not warped.exists()
    assert no_partial_files(tmp_path)


def test_different_target_and_atlas_grids(cli, tmp_path):
    """Anisotropic, rotated target; atlases with other spacings, directions, origins and axes."""
    target, truth = phantom(1, "ct", shape=(26, 40, 36), spacing=(2.3, 2.6, 3.7), rotation=(12.0, -8.0, 20.0),
                            offset_mm=(3.0, -4.0, 2.0))
    write_volume(target, tmp_path / "target.nrrd")
    write_labels(truth, tmp_path / "truth.nii.gz")
    atlases = [
        write_atlas(tmp_path, "a", *phantom(2, "mr", shape=(36, 36, 36), spacing=(2.8, 2.8, 2.8),
                                            rotation=(-10.0, 6.0, -15.0), offset_mm=(-5.0, 5.0, 3.0), axes="RAS")),
        write_atlas(tmp_path, "b", *phantom(9, "mr", shape=(44, 36, 40), spacing=(2.5, 2.2, 2.4),
                                            rotation=(0.0, 15.0, 5.0), offset_mm=(4.0, 0.0, -6.0))),
    ]
    out = tmp_path / "seg.nii.gz"
    run = cli("segment", "--target", tmp_path / "target.nrrd", *atlas_args(atlases), "--output", out, *QUICK)
    assert run.code == 0, run.err
    assert_on_grid_of(out, tmp_path / "target.nrrd")
    assert_good_segmentation(out, tmp_path / "truth.nii.gz")


def test_inputs_are_never_modified(cli, tiny_case, tmp_path):
    manifest = tmp_path / "atlases.csv"
    manifest.write_text("image,labels\n" + "".join(f"{i},{s}\n" for i, s in tiny_case.atlases))
    inputs = tiny_case.inputs() + [manifest, tiny_case.folder / "atlases"]
    before = {p: sha256(p) for p in inputs}
    stamps = {p: p.stat().st_mtime_ns for p in tiny_case.inputs()}
    run = cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases[:1]), "--atlases", manifest,
              "--output", tmp_path / "seg.nii.gz", "--save-warped", tmp_path / "warped", "--report",
              tmp_path / "r.json", *QUICK)
    assert run.code == 0, run.err
    assert {p: sha256(p) for p in inputs} == before
    assert {p: p.stat().st_mtime_ns for p in tiny_case.inputs()} == stamps


def test_two_runs_give_the_same_segmentation(cli, tiny_case, tmp_path):
    """The pipeline is deterministic (its options carry a seed): same inputs, same output voxels."""
    outputs = [tmp_path / "first.nii.gz", tmp_path / "second.nii.gz"]
    for out in outputs:
        run = cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases), "--output", out, *QUICK)
        assert run.code == 0, run.err
    first, second = (read_labels(out).array for out in outputs)
    assert np.array_equal(first, second), f"{int((first != second).sum())} voxels differ between two identical runs"


def test_demo_writes_segmentation_and_overview(cli, tmp_path):
    """``crossmodalmas demo --out DIR --atlases 1`` in-process, with its own options (seconds on 2 cores)."""
    folder = tmp_path / "demo"
    run = cli("demo", "--out", folder, "--atlases", "1")
    assert run.code == 0, run.err
    assert (folder / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_on_grid_of(folder / "segmentation.nii.gz", folder / "target_ct.nii.gz")
    assert re.search(r"mean\s+\d\.\d{3}", run.out)
    assert_good_segmentation(folder / "segmentation.nii.gz", folder / "target_truth.nii.gz")
    assert no_partial_files(folder)
