"""``crossmodalmas segment`` on bad input: exit 2 and one line naming the input, never a traceback.

Where an input is usable after a fix-up (a label header off by rounding, float labels holding
integers) or only partly usable (an atlas that misses the target, atlases with other label
sets) the run goes on, says so, and exits 0.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import QUICK, atlas_args, no_partial_files, phantom, run_process, sha256, write_atlas
from crossmodalmas.volume import LabelMap, read_labels, read_volume, to_sitk, write_volume


def assert_refused(run, pattern: str) -> str:
    """Exit 2, one ``crossmodalmas: error:`` line matching ``pattern``, no traceback."""
    assert run.code == 2, f"exit {run.code}\nstderr:\n{run.err}"
    line = run.error_line()
    assert re.search(pattern, line), f"{line!r} does not match {pattern!r}"
    assert "Traceback" not in run.err
    return line


def segment(cli, target, atlases, out, *extra):
    return cli("segment", "--target", target, *atlas_args(atlases), "--output", out, *QUICK, *extra)


def _write_sitk(image: sitk.Image, path) -> None:
    sitk.WriteImage(image, str(path))


# --- files that cannot be used as images -----------------------------------------------------

def test_missing_target_file(cli, tiny_case, tmp_path):
    missing = tmp_path / "nosuch.nii.gz"
    run = segment(cli, missing, tiny_case.atlases, tmp_path / "seg.nii.gz")
    assert_refused(run, rf"{re.escape(str(missing))}: .*does not exist")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_missing_atlas_label_file(cli, tiny_case, tmp_path):
    missing = tmp_path / "mr2_seg.nii.gz"
    run = segment(cli, tiny_case.target, [(tiny_case.atlases[0][0], missing)], tmp_path / "seg.nii.gz")
    assert_refused(run, rf"{re.escape(str(missing))}: .*does not exist")


def test_text_file_named_like_an_image(cli, tiny_case, tmp_path):
    fake = tmp_path / "notes.nii.gz"
    fake.write_text("this is not an image\n")
    run = segment(cli, fake, tiny_case.atlases, tmp_path / "seg.nii.gz")
    assert_refused(run, rf"{re.escape(str(fake))}: cannot be read as an image")


def test_two_dimensional_image(cli, tiny_case, tmp_path):
    flat = tmp_path / "slice.nii.gz"
    _write_sitk(sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32)), flat)
    run = segment(cli, flat, tiny_case.atlases, tmp_path / "seg.nii.gz")
    assert_refused(run, rf"{re.escape(str(flat))}: image is 2-D .*3-D volume is needed")


def test_four_dimensional_image(cli, tiny_case, tmp_path):
    frames = [sitk.GetImageFromArray(np.random.default_rng(i).random((8, 8, 8)).astype(np.float32)) for i in (0, 1)]
    series = tmp_path / "series.nii.gz"
    _write_sitk(sitk.JoinSeries(frames), series)
    run = segment(cli, series, tiny_case.atlases, tmp_path / "seg.nii.gz")
    assert_refused(run, rf"{re.escape(str(series))}: image is 4-D .*3-D volume is needed")


def test_rgb_image(cli, tiny_case, tmp_path):
    rgb = tmp_path / "colour.nrrd"
    array = np.random.default_rng(0).integers(0, 255, (8, 8, 8, 3)).astype(np.uint8)
    _write_sitk(sitk.GetImageFromArray(array, isVector=True), rgb)
    run = segment(cli, tiny_case.target, [(rgb, tiny_case.atlases[0][1])], tmp_path / "seg.nii.gz")
    assert_refused(run, rf"{re.escape(str(rgb))}: image has 3 components per voxel .*scalar image is needed")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_in_the_target(cli, tiny_case, tmp_path, bad):
    target = read_volume(tiny_case.target)
    target.array[3, 4, 5] = bad
    target.array[10, 11, 12] = bad
    path = tmp_path / "target_bad.nrrd"  # ITK's NIfTI reader turns NaN and inf into 0
    write_volume(target, path)
    run = segment(cli, path, tiny_case.atlases, tmp_path / "seg.nii.gz")
    assert_refused(run, r"target.*: image holds 2 NaN or infinite voxels")


# --- label maps ------------------------------------------------------------------------------

def _atlas_with_labels(tmp_path, tiny_case, labels: LabelMap, name="odd"):
    """An atlas made of the first tiny atlas's image and the given label map (written as-is)."""
    image = tmp_path / f"{name}.nii.gz"
    shutil.copy(tiny_case.atlases[0][0], image)
    path = tmp_path / f"{name}_seg.nii.gz"
    _write_sitk(to_sitk(labels.array, labels.ijk_to_ras), path)
    return image, path


def test_empty_label_map(cli, tiny_case, tmp_path):
    grid = read_volume(tiny_case.atlases[0][0]).grid
    atlas = _atlas_with_labels(tmp_path, tiny_case, LabelMap(np.zeros(grid.shape, np.uint8), grid.ijk_to_ras))
    run = segment(cli, tiny_case.target, [atlas], tmp_path / "seg.nii.gz")
    assert_refused(run, r"atlas odd labels: label map is empty")


def test_label_map_on_another_grid_is_refused(cli, tiny_case, tmp_path):
    labels = read_labels(tiny_case.atlases[0][1])
    matrix = labels.ijk_to_ras.copy()
    matrix[:3, :3] *= 1.2  # other spacing, same shape
    atlas = _atlas_with_labels(tmp_path, tiny_case, LabelMap(labels.array, matrix))
    run = segment(cli, tiny_case.target, [atlas], tmp_path / "seg.nii.gz")
    assert_refused(run, r"atlas odd labels: label map grid .* differs from its image's .*resample")


def test_label_map_of_another_shape_is_refused(cli, tiny_case, tmp_path):
    labels = read_labels(tiny_case.atlases[0][1])
    atlas = _atlas_with_labels(tmp_path, tiny_case, LabelMap(labels.array[:-2], labels.ijk_to_ras))
    run = segment(cli, tiny_case.target, [atlas], tmp_path / "seg.nii.gz")
    assert_refused(run, r"atlas odd labels: label map grid \(shape \(38, 40, 40\).* differs from its image's")


def test_label_map_off_by_rounding_is_accepted(cli, tiny_case, tmp_path):
    labels = read_labels(tiny_case.atlases[0][1])
    matrix = labels.ijk_to_ras.copy()
    matrix[:3, 3] += 0.1 * matrix[:3, :3] @ np.array([1.0, -1.0, 1.0])  # origin off by 0.1 voxel
    atlas = _atlas_with_labels(tmp_path, tiny_case, LabelMap(labels.array, matrix))
    out = tmp_path / "seg.nii.gz"
    run = segment(cli, tiny_case.target, [atlas, tiny_case.atlases[1]], out)
    assert run.code == 0, run.err
    assert out.exists()


def test_float_label_map_holding_integers_is_accepted(cli, tiny_case, tmp_path):
    labels = read_labels(tiny_case.atlases[0][1])
    atlas = _atlas_with_labels(tmp_path, tiny_case, LabelMap(labels.array, labels.ijk_to_ras))
    _write_sitk(to_sitk(labels.array.astype(np.float32), labels.ijk_to_ras), atlas[1])
    assert sitk.ReadImage(str(atlas[1])).GetPixelID() == sitk.sitkFloat32
    out = tmp_path / "seg.nii.gz"
    run = segment(cli, tiny_case.target, [atlas, tiny_case.atlases[1]], out)
    assert run.code == 0, run.err
    assert set(np.unique(read_labels(out).array).tolist()) <= set(np.unique(labels.array).tolist())


def test_float_label_map_holding_fractions_is_refused(cli, tiny_case, tmp_path):
    labels = read_labels(tiny_case.atlases[0][1])
    atlas = _atlas_with_labels(tmp_path, tiny_case, LabelMap(labels.array, labels.ijk_to_ras))
    fractions = labels.array.astype(np.float32)
    fractions[fractions == 500] = 0.5
    _write_sitk(to_sitk(fractions, labels.ijk_to_ras), atlas[1])
    run = segment(cli, tiny_case.target, [atlas], tmp_path / "seg.nii.gz")
    assert_refused(run, rf"{re.escape(str(atlas[1]))}: label map holds non-integer values")


def test_negative_labels_are_refused(cli, tiny_case, tmp_path):
    labels = read_labels(tiny_case.atlases[0][1])
    array = labels.array.astype(np.int16)
    array[array == 205] = -1
    atlas = _atlas_with_labels(tmp_path, tiny_case, LabelMap(array, labels.ijk_to_ras))
    _write_sitk(to_sitk(array, labels.ijk_to_ras), atlas[1])
    run = segment(cli, tiny_case.target, [atlas], tmp_path / "seg.nii.gz")
    assert_refused(run, r"atlas odd labels: label map holds negative values")


# --- atlases that do not fit -------------------------------------------------------------------

def _far_atlas(tmp_path):
    """An MR atlas with a wide field of view whose only label sits in a far corner (~15 cm from the heart)."""
    image, _ = phantom(3, "mr", shape=(40, 40, 40), spacing=(5.0, 5.0, 5.0))
    labels = np.zeros(image.array.shape, np.int32)
    labels[:4, :4, :4] = 205
    return write_atlas(tmp_path / "far", "far", image, LabelMap(labels, image.ijk_to_ras))


@pytest.mark.filterwarnings("ignore:atlases have different label sets")
def test_atlas_missing_the_target_is_dropped_with_a_warning(cli, tiny_case, tmp_path):
    out, report = tmp_path / "seg.nii.gz", tmp_path / "r.json"
    with pytest.warns(UserWarning, match=r"atlas far: no labelled voxel overlaps the target after alignment; dropped"):
        run = segment(cli, tiny_case.target, [_far_atlas(tmp_path), tiny_case.atlases[0]], out, "--report", report)
    assert run.code == 0, run.err
    data = json.loads(report.read_text())
    assert [a["name"] for a in data["atlases"]] == tiny_case.names[:1]
    assert any("atlas far" in w and "dropped" in w for w in data["warnings"])
    assert 500 in np.unique(read_labels(out).array)


def test_dropped_atlas_warning_reaches_stderr_of_a_real_process(tiny_case, tmp_path):
    out = tmp_path / "seg.nii.gz"
    done = run_process("segment", "--target", tiny_case.target,
                       *atlas_args([_far_atlas(tmp_path), tiny_case.atlases[0]]), "--output", out, *QUICK)
    assert done.returncode == 0, done.stderr
    assert re.search(r"atlas far: no labelled voxel overlaps the target after alignment; dropped", done.stderr)
    assert "Traceback" not in done.stderr and out.exists()


def test_no_atlas_overlapping_the_target_is_refused(cli, tiny_case, tmp_path):
    out = tmp_path / "seg.nii.gz"
    run = segment(cli, tiny_case.target, [_far_atlas(tmp_path)], out)
    assert_refused(run, r"^crossmodalmas: error: atlases: .*(none overlaps the target|lies outside the target)")
    assert not out.exists()


def test_atlases_with_different_label_sets_fuse_the_union(cli, tmp_path):
    """Three atlases made of the target itself: one lacks 850, one lacks 820, one has all."""
    target, truth = phantom(21, "ct", shape=(32, 32, 32), spacing=(3.0, 3.0, 3.0))
    write_volume(target, tmp_path / "target.nii.gz")
    atlases = []
    for name, missing in (("no850", 850), ("no820", 820), ("full", None)):
        labels = truth.array.copy()
        labels[labels == missing] = 0
        atlases.append(write_atlas(tmp_path / "atlases", name, target, LabelMap(labels, truth.ijk_to_ras)))
    out, report = tmp_path / "seg.nii.gz", tmp_path / "r.json"
    with pytest.warns(UserWarning, match=r"atlases have different label sets; fusing the union"):
        run = segment(cli, tmp_path / "target.nii.gz", atlases, out, "--fusion", "mv", "--report", report)
    assert run.code == 0, run.err
    union = sorted(set(np.unique(truth.array).tolist()) - {0})
    assert json.loads(report.read_text())["labels"] == union
    assert set(np.unique(read_labels(out).array).tolist()) - {0} == set(union)


# --- outputs and options -----------------------------------------------------------------------

@pytest.mark.parametrize("which", ["target", "atlas labels"])
def test_output_equal_to_an_input_is_refused(cli, tiny_case, tmp_path, which):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_case.folder, folder)
    target = folder / "target.nii.gz"
    atlases = [(folder / "atlases" / p[0].name, folder / "atlases" / p[1].name) for p in tiny_case.atlases]
    victim = target if which == "target" else atlases[0][1]
    before = sha256(victim)
    run = segment(cli, target, atlases, victim)
    assert_refused(run, rf"--output {re.escape(str(victim))}: is also an input")
    assert sha256(victim) == before


def test_report_equal_to_an_input_is_refused(cli, tiny_case, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_case.folder, folder)
    target = folder / "target.nii.gz"
    before = sha256(target)
    run = segment(cli, target, tiny_case.atlases, tmp_path / "seg.nii.gz", "--report", target)
    assert_refused(run, rf"--report {re.escape(str(target))}: .*input")
    assert sha256(target) == before
    assert not (tmp_path / "seg.nii.gz").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(cli, tiny_case, tmp_path):
    run = cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases), "--output",
              tmp_path / "seg.nii.gz", "--refine", "5", "--device", "cuda")
    assert_refused(run, r"--device cuda: .*no CUDA device")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_unknown_model(cli, tiny_case, tmp_path):
    run = segment(cli, tiny_case.target, tiny_case.atlases, tmp_path / "seg.nii.gz", "--model", "nosuch")
    assert_refused(run, r"--model nosuch: no such registration model \(available: ")


def test_no_atlas_at_all(cli, tiny_case, tmp_path):
    run = segment(cli, tiny_case.target, [], tmp_path / "seg.nii.gz")
    assert_refused(run, r"--atlas/--atlases/--atlas-dir: no atlas given")


def test_missing_atlas_csv(cli, tiny_case, tmp_path):
    run = segment(cli, tiny_case.target, [], tmp_path / "seg.nii.gz", "--atlases", tmp_path / "none.csv")
    assert_refused(run, rf"{re.escape(str(tmp_path / 'none.csv'))}: atlas CSV does not exist")


def test_atlas_csv_without_the_columns(cli, tiny_case, tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("img,seg\na.nii.gz,a_seg.nii.gz\n")
    run = segment(cli, tiny_case.target, [], tmp_path / "seg.nii.gz", "--atlases", manifest)
    assert_refused(run, rf"{re.escape(str(manifest))}: atlas CSV needs a header with 'image' and 'labels'")


def test_atlas_dir_without_pairs(cli, tiny_case, tmp_path):
    (tmp_path / "empty").mkdir()
    shutil.copy(tiny_case.target, tmp_path / "empty" / "lonely.nii.gz")
    run = segment(cli, tiny_case.target, [], tmp_path / "seg.nii.gz", "--atlas-dir", tmp_path / "empty")
    assert_refused(run, rf"{re.escape(str(tmp_path / 'empty'))}: no atlas found")


@pytest.mark.parametrize("flag, value, message", [
    ("--select", "0", r"argument --select: must be a positive integer, got 0"),
    ("--refine", "-3", r"argument --refine: must be an integer >= 0, got -3"),
    ("--fusion", "best", r"argument --fusion: invalid choice: 'best'"),
])
def test_bad_option_values_are_usage_errors(cli, capsys, tiny_case, tmp_path, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        cli("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases), "--output",
            tmp_path / "seg.nii.gz", flag, value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(rf"crossmodalmas segment: error: {message}", err), err
    assert "Traceback" not in err
    assert not (tmp_path / "seg.nii.gz").exists()


def test_select_zero_in_a_real_process(tiny_case, tmp_path):
    done = run_process("segment", "--target", tiny_case.target, *atlas_args(tiny_case.atlases),
                       "--output", tmp_path / "seg.nii.gz", "--select", "0")
    assert done.returncode == 2
    assert re.search(r"argument --select: must be a positive integer, got 0", done.stderr)
    assert "Traceback" not in done.stderr


def test_bad_input_exit_code_of_a_real_process(tiny_case, tmp_path):
    missing = tmp_path / "nosuch.nii.gz"
    done = run_process("segment", "--target", missing, *atlas_args(tiny_case.atlases),
                       "--output", tmp_path / "seg.nii.gz", *QUICK)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("crossmodalmas: error:")]
    assert len(errors) == 1 and re.search(rf"{re.escape(str(missing))}: .*does not exist", errors[0])
    assert "Traceback" not in done.stderr
    assert no_partial_files(tmp_path) and not (tmp_path / "seg.nii.gz").exists()
