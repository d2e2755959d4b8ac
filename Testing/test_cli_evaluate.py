"""``crossmodalmas evaluate`` end to end through ``crossmodalmas.cli.main``.

A tiny CSV dataset of two phantom subjects in two modalities (CT-like and MR-like renderings
of one anatomy each), and, where ``../shared/data`` is present, a Decathlon-format dataset
made from the MSD prostate label maps with two synthetic contrasts (the issue's test).
Segmentation is the quick engine (instance optimisation, 2 iterations, majority vote).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import no_partial_files, phantom
from crossmodalmas.errors import InputError
from crossmodalmas.evaluation_metrics import ALL_LABELS
from crossmodalmas.synth import SynthConfig, random_lookup, render
from crossmodalmas.volume import read_labels, read_volume, write_labels, write_volume

QUICK = ["--model", "instance-opt", "--refine", "2", "--fusion", "mv", "--device", "cpu"]
SHAPE, SPACING = (28, 28, 28), (3.5, 3.5, 3.5)
SUBJECTS = {"s1": (1, "test"), "s6": (6, "train")}  # phantom seed, split
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PROGRESS_LINE = re.compile(r"^PROGRESS (\d+(?:\.\d+)?) (\S.*)$")


def write_csv_dataset(folder: Path) -> Path:
    """Two subjects, each a CT-like and an MR-like image of one phantom anatomy; returns the CSV."""
    folder.mkdir(parents=True)
    with open(folder / "cases.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "labels", "modality", "subject", "split"])
        for subject, (seed, split) in SUBJECTS.items():
            for modality in ("ct", "mr"):
                image, labels = phantom(seed, modality, shape=SHAPE, spacing=SPACING)
                write_volume(image, folder / f"{subject}_{modality}.nii.gz")
                write_labels(labels, folder / f"{subject}_{modality}_seg.nii.gz")
                writer.writerow([f"{subject}_{modality}.nii.gz", f"{subject}_{modality}_seg.nii.gz", modality.upper(),
                                 subject, split])
    return folder / "cases.csv"


@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory) -> Path:
    return write_csv_dataset(tmp_path_factory.mktemp("evaluate") / "data")


@pytest.fixture(scope="module")
def evaluated(csv_dataset) -> Path:
    """One cross-modality evaluation of the CSV dataset (read-only for the tests: copy it)."""
    from crossmodalmas.cli import main

    out = csv_dataset.parent.parent / "out"
    code = main(["evaluate", "--dataset", str(csv_dataset), "--protocol", "cross-modality", "--out", str(out),
                 *QUICK])
    assert code == 0
    return out


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def copy_of(out: Path, tmp_path: Path) -> Path:
    """A copy of a results folder, file times kept."""
    return Path(shutil.copytree(out, tmp_path / "out", copy_function=shutil.copy2))


def case_times(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "cases").iterdir()}


def test_cross_modality_writes_cases_metrics_summary_and_plots(evaluated, csv_dataset):
    cases = sorted(p.name for p in (evaluated / "cases").iterdir())
    assert cases == ["s1_ct_from_mr.nii.gz", "s1_mr_from_ct.nii.gz", "s6_ct_from_mr.nii.gz", "s6_mr_from_ct.nii.gz"]
    for name in cases:  # on the target's own grid, with the atlases' label values
        subject, modality = name.split("_")[:2]
        target = read_volume(csv_dataset.parent / f"{subject}_{modality}.nii.gz")
        result = read_labels(evaluated / "cases" / name)
        assert result.grid.same_as(target.grid)
        assert set(np.unique(result.array)) - {0} <= {205, 420, 500, 550, 600, 820, 850}
    rows = read_table(evaluated / "metrics.csv")
    assert {(r["protocol"], r["group"], r["target_subject"], r["target_modality"]) for r in rows} == {
        ("cross-modality", "mr->ct", "s1", "ct"), ("cross-modality", "ct->mr", "s1", "mr"),
        ("cross-modality", "mr->ct", "s6", "ct"), ("cross-modality", "ct->mr", "s6", "mr")}
    for row in rows:
        assert 0.0 <= float(row["dice"]) <= 1.0 and row["atlases"] == "1" and float(row["seconds"]) > 0
    organ = [float(r["dice"]) for r in rows if r["label"] == ALL_LABELS]
    assert len(organ) == 4 and np.mean(organ) > 0.5, organ  # the whole heart: chance is far lower
    assert {"205", "500", "600"} <= {r["label"] for r in rows}
    summary = (evaluated / "summary.md").read_text()
    assert "| cross-modality | mr->ct | all | 2 |" in summary and "| cross-modality | (all groups) | 205 |" in summary
    assert (evaluated / "boxplots.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((evaluated / "evaluation.json").read_text())
    assert record["segment_options"]["fusion"] == "mv" and record["dataset"] == str(csv_dataset)
    assert no_partial_files(evaluated)


def test_a_rerun_skips_done_targets_and_redoes_deleted_rows(cli, evaluated, tmp_path):
    out = copy_of(evaluated, tmp_path)
    before, table = case_times(out), (out / "metrics.csv").read_text()
    run = cli("evaluate", "--dataset", evaluated.parent / "data" / "cases.csv", "--protocol", "cross-modality",
              "--out", out, *QUICK)
    assert run.code == 0, run.err
    assert "evaluated 0 targets, skipped 4" in run.out
    assert case_times(out) == before and (out / "metrics.csv").read_text() == table
    rows = read_table(out / "metrics.csv")
    kept = [r for r in rows if (r["target_subject"], r["target_modality"]) != ("s6", "mr")]
    with open(out / "metrics.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    time.sleep(0.01)
    run = cli("evaluate", "--dataset", evaluated.parent / "data" / "cases.csv", "--protocol", "cross-modality",
              "--out", out, *QUICK)
    assert run.code == 0, run.err
    assert "evaluated 1 targets, skipped 3" in run.out
    after = case_times(out)
    assert [name for name in after if after[name] != before[name]] == ["s6_mr_from_ct.nii.gz"]
    assert len(read_table(out / "metrics.csv")) == len(rows)


def test_split_protocol_into_the_same_folder_with_progress_lines(cli, evaluated, tmp_path):
    out = copy_of(evaluated, tmp_path)
    run = cli("evaluate", "--dataset", evaluated.parent / "data" / "cases.csv", "--protocol", "split",
              "--out", out, "--progress-lines", *QUICK)
    assert run.code == 0, run.err
    fractions = [float(m.group(1)) for m in map(PROGRESS_LINE.match, run.out.splitlines()) if m]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0, abs=0.05)
    split = [r for r in read_table(out / "metrics.csv") if r["protocol"] == "split"]
    assert {(r["group"], r["target_subject"], r["target_modality"], r["atlases"]) for r in split} == {
        ("test", "s1", "ct", "2"), ("test", "s1", "mr", "2")}
    assert "| split | test | all | 2 |" in (out / "summary.md").read_text()
    assert {"s1_ct_split.nii.gz", "s1_mr_split.nii.gz", "s1_ct_from_mr.nii.gz"} <= set(case_times(out))
    assert sorted(json.loads((out / "evaluation.json").read_text())["protocols"]) == ["cross-modality", "split"]


def test_other_settings_or_a_foreign_folder_are_refused(cli, evaluated, tmp_path):
    out = copy_of(evaluated, tmp_path)
    dataset = evaluated.parent / "data" / "cases.csv"
    run = cli("evaluate", "--dataset", dataset, "--protocol", "cross-modality", "--out", out,
              *QUICK[:-3], "nlwv", "--device", "cpu")
    assert run.code == 2
    assert re.search(r"--out .*out: holds an evaluation with other segment_options; use another folder",
                     run.error_line())
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    run = cli("evaluate", "--dataset", dataset, "--protocol", "cross-modality", "--out", foreign, *QUICK)
    assert run.code == 2 and "folder holds other files; give a new or empty folder" in run.error_line()
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_a_bad_dataset_exits_2_listing_every_bad_case(cli, csv_dataset, tmp_path):
    manifest = tmp_path / "bad.csv"
    text = csv_dataset.read_text().replace("s1_mr_seg", "missing_seg").replace("s6_ct.nii.gz", "nothing.nii.gz")
    manifest.write_text(text.replace("s1_", str(csv_dataset.parent / "s1_")).replace(
        "s6_", str(csv_dataset.parent / "s6_")).replace("nothing", str(csv_dataset.parent / "nothing")))
    run = cli("evaluate", "--dataset", manifest, "--protocol", "cross-modality", "--out", tmp_path / "out", *QUICK)
    assert run.code == 2
    assert re.search(r"dataset .*bad.csv: 2 of 4 cases are unusable", run.error_line())
    assert "missing_seg.nii.gz" in run.err and "nothing.nii.gz" in run.err and "Traceback" not in run.err
    assert not (tmp_path / "out").exists()


def test_a_target_the_pipeline_refuses_is_reported_and_the_others_are_done(cli, csv_dataset, tmp_path, monkeypatch):
    from crossmodalmas import pipeline

    segment = pipeline.segment

    def refuse_one(target, atlases, *args, **kwargs):
        if atlases[0].name == "s6_ct":  # the target s1_mr
            raise InputError("target: no atlas overlaps it")
        return segment(target, atlases, *args, **kwargs)

    monkeypatch.setattr(pipeline, "segment", refuse_one)
    out = tmp_path / "out"
    run = cli("evaluate", "--dataset", csv_dataset, "--protocol", "cross-modality", "--out", out, *QUICK)
    assert run.code == 2
    assert "crossmodalmas: target s1_mr_from_ct failed: target: no atlas overlaps it" in run.err
    assert re.search(r"cases.csv: 1 of 4 targets failed \(s1_mr_from_ct; see above\); a re-run tries them again",
                     run.error_line())
    assert len({r["target_subject"] + r["target_modality"] for r in read_table(out / "metrics.csv")}) == 3
    assert (out / "summary.md").is_file() and not (out / "cases" / "s1_mr_from_ct.nii.gz").exists()


def test_sigterm_exits_3_keeping_the_targets_done(cli, csv_dataset, tmp_path, monkeypatch):
    from crossmodalmas import evaluate_command

    write_rows = evaluate_command.write_rows

    def write_then_terminate(path, rows):  # SIGTERM right after the first target is saved
        write_rows(path, rows)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(evaluate_command, "write_rows", write_then_terminate)
    out = tmp_path / "out"
    run = cli("evaluate", "--dataset", csv_dataset, "--protocol", "cross-modality", "--out", out, *QUICK)
    assert run.code == 3
    assert "cancelled; 1 of 4 targets done, kept in" in run.err and "Traceback" not in run.err
    rows = read_table(out / "metrics.csv")
    assert len({(r["group"], r["target_subject"], r["target_modality"]) for r in rows}) == 1
    assert len(list((out / "cases").iterdir())) == 1 and not (out / "summary.md").exists()
    assert no_partial_files(out)


def downsampled_prostate(path: Path, spacing_mm: float = 2.4, margin_mm: float = 12.0) -> sitk.Image:
    """An MSD prostate label map cropped to its gland plus a margin, at ``spacing_mm`` in-plane
    (nearest neighbour), slices and direction kept."""
    labels = sitk.ReadImage(str(path))
    array = sitk.GetArrayViewFromImage(labels)
    _, j, i = np.nonzero(array)
    pad = [int(margin_mm / s) for s in labels.GetSpacing()[:2]]
    low = [max(0, int(i.min()) - pad[0]), max(0, int(j.min()) - pad[1])]
    high = [min(labels.GetSize()[0], int(i.max()) + 1 + pad[0]), min(labels.GetSize()[1], int(j.max()) + 1 + pad[1])]
    crop = labels[low[0]:high[0], low[1]:high[1], :]
    spacing = (spacing_mm, spacing_mm, crop.GetSpacing()[2])
    size = [int(round(n * s / t)) for n, s, t in zip(crop.GetSize(), crop.GetSpacing(), spacing)]
    return sitk.Resample(crop, size, sitk.Transform(), sitk.sitkNearestNeighbor, crop.GetOrigin(), spacing,
                         crop.GetDirection(), 0, crop.GetPixelID())


def with_body(labels: np.ndarray) -> np.ndarray:
    """Tissue classes for rendering: the gland's labels 1, 2 inside a body (3) filling the slab's
    central ellipse, air (0) around it; the truth keeps only 1 and 2."""
    _, rows, columns = labels.shape
    j, i = np.ogrid[:rows, :columns]
    body = ((j - rows / 2) / (0.48 * rows)) ** 2 + ((i - columns / 2) / (0.48 * columns)) ** 2 <= 1
    return np.where(labels > 0, labels, np.where(body[None], 3, 0)).astype(np.int64)


def write_prostate_decathlon(root: Path, names: list[str]) -> None:
    """A Decathlon Task05-like folder: 2-channel images ("T2", "ADC": a fixed random contrast per
    channel, per-case noise, bias, blur) rendered from downsampled MSD prostate label maps."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    config = SynthConfig(resolution_loss=1.0, gamma_std=0.1, intensity_std=0.08, noise_std=0.04)
    contrasts = [random_lookup(1, 4, config, torch.Generator().manual_seed(seed)) for seed in (11, 12)]
    for index, name in enumerate(names):
        labels = downsampled_prostate(SHARED_DATA / "labelmaps" / "msd_prostate" / f"{name}.nii.gz")
        tissue = torch.from_numpy(with_body(sitk.GetArrayFromImage(labels)))[None, None]
        channels = []
        for channel, lookup in enumerate(contrasts):
            generator = torch.Generator().manual_seed(100 * index + channel)
            image = sitk.GetImageFromArray(render(tissue, lookup, config, generator)[0, 0].numpy() * 1000)
            image.CopyInformation(labels)
            channels.append(image)
        sitk.WriteImage(sitk.JoinSeries(channels), str(root / "imagesTr" / f"{name}.nii.gz"))
        sitk.WriteImage(labels, str(root / "labelsTr" / f"{name}.nii.gz"))
    manifest = {"name": "PROSTATE", "tensorImageSize": "4D", "modality": {"0": "T2", "1": "ADC"},
                "labels": {"0": "background", "1": "PZ", "2": "TZ"}, "numTraining": len(names), "test": [],
                "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names]}
    (root / "dataset.json").write_text(json.dumps(manifest, indent=1))


@pytest.mark.shared_data
def test_cross_modality_on_a_decathlon_prostate_dataset(cli, tmp_path):
    """The issue's test: MSD layout, two channels as two modalities, T2 <-> ADC both ways."""
    if not (SHARED_DATA / "labelmaps" / "msd_prostate").is_dir():
        pytest.skip(f"needs {SHARED_DATA / 'labelmaps' / 'msd_prostate'}, absent here (a fresh checkout has no "
                    "shared data)")
    names = ["prostate_00", "prostate_01", "prostate_02"]
    write_prostate_decathlon(tmp_path / "Task05_Prostate", names)
    out = tmp_path / "out"
    argv = ["evaluate", "--dataset", tmp_path / "Task05_Prostate", "--protocol", "cross-modality", "--out", out,
            "--model", "instance-opt", "--refine", "5", "--fusion", "mv", "--device", "cpu"]
    run = cli(*argv)
    assert run.code == 0, run.err
    assert (out / "summary.md").is_file() and (out / "boxplots.png").is_file()
    rows = read_table(out / "metrics.csv")
    assert {(r["group"], r["target_subject"]) for r in rows} == {
        (group, name) for group in ("adc->t2", "t2->adc") for name in names}
    assert {r["atlases"] for r in rows} == {"2"}  # the same subject's other channel is never an atlas
    gland = [float(r["dice"]) for r in rows if r["label"] == ALL_LABELS]
    assert len(gland) == 6 and np.mean(gland) > 0.3, gland
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert "| cross-modality | t2->adc | all | 3 |" in (out / "summary.md").read_text()
    again = cli(*argv)
    assert again.code == 0 and "evaluated 0 targets, skipped 6" in again.out
