"""Evaluation pieces without a segmentation run: the apex/mid/base split, the per-label figures,
the protocols' plans and the report files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from crossmodalmas.data import Case, Dataset
from crossmodalmas.errors import InputError
from crossmodalmas.evaluation import Protocol, fold_of_subjects, plan
from crossmodalmas.evaluation_metrics import ALL_LABELS, axial_thirds, evaluate_labels, thirds_dice
from crossmodalmas.evaluation_report import (COLUMNS, done_keys, format_number, read_rows, summary_markdown,
                                             write_boxplots, write_rows)
from crossmodalmas.volume import LabelMap


def cylinder(length: int, axis: int, shape=(18, 18, 18), start: int = 3) -> np.ndarray:
    """A cylinder of radius 4 voxels along array ``axis`` (0 K, 1 J, 2 I), voxels
    ``start .. start + length - 1`` on that axis."""
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    across = [g for a, g in enumerate(grids) if a != axis]
    mask = (across[0] - shape[0] / 2) ** 2 + (across[1] - shape[1] / 2) ** 2 <= 16
    along = grids[axis]
    return mask & (along >= start) & (along < start + length)


def matrix(columns, spacing=(1.5, 1.5, 1.5), origin=(10.0, -20.0, 5.0)) -> np.ndarray:
    """IJK -> RAS with unit column directions ``columns`` (for i, j, k) scaled by ``spacing``."""
    m = np.eye(4)
    m[:3, :3] = np.array(columns, float).T * np.asarray(spacing)
    m[:3, 3] = origin
    return m


RAS = matrix([(1, 0, 0), (0, 1, 0), (0, 0, 1)])
I_IS_SUPERIOR = matrix([(0, 0, 1), (0, 1, 0), (1, 0, 0)])  # i runs S, k runs R
I_IS_INFERIOR = matrix([(0, 0, -1), (0, 1, 0), (1, 0, 0)])  # i runs I (S decreases with i)


@pytest.mark.parametrize("ijk_to_ras, axis, inferior_first", [(RAS, 0, True), (I_IS_SUPERIOR, 2, True),
                                                               (I_IS_INFERIOR, 2, False)])
def test_thirds_follow_the_s_axis_of_the_direction_matrix(ijk_to_ras, axis, inferior_first):
    truth = cylinder(9, axis)
    slabs = axial_thirds(truth, ijk_to_ras)
    along = [int(slabs.take(n, axis=axis)[truth.take(n, axis=axis)].max(initial=-1)) for n in range(3, 12)]
    expected = [0, 0, 0, 1, 1, 1, 2, 2, 2] if inferior_first else [2, 2, 2, 1, 1, 1, 0, 0, 0]
    assert along == expected
    outside = np.ones(truth.shape, bool)
    index = [slice(None)] * 3
    index[axis] = slice(3, 12)
    outside[tuple(index)] = False
    assert np.all(slabs[outside] == -1)  # beyond the truth's S extent: no slab


def test_missing_apex_scores_zero_there_and_one_elsewhere_on_a_rotated_grid():
    truth = cylinder(9, 2)
    pred = truth.copy()
    pred[:, :, 9:12] = False  # the three highest i: with i running inferior, the apex
    scores = evaluate_labels(LabelMap(pred.astype(np.int32) * 3, I_IS_INFERIOR),
                             LabelMap(truth.astype(np.int32) * 3, I_IS_INFERIOR))
    assert [s.label for s in scores] == ["3", ALL_LABELS]
    for score in scores:
        assert score.dice_thirds == (0.0, 1.0, 1.0)
        assert score.dice == pytest.approx(2 * pred.sum() / (pred.sum() + truth.sum()))
        assert score.arvd == pytest.approx(1 / 3)


def test_identical_maps_score_one_zero_zero():
    rng = np.random.default_rng(0)
    labels = np.zeros((16, 14, 12), np.int32)
    labels[3:12, 2:9, 4:10] = 1
    labels[5:9, 8:12, 2:6] = 2
    labels[rng.random(labels.shape) < 0.02] = 7
    ijk_to_ras = matrix([(0.8, 0.6, 0), (-0.6, 0.8, 0), (0, 0, 1)], spacing=(0.7, 0.9, 3.0))
    scores = evaluate_labels(LabelMap(labels, ijk_to_ras), LabelMap(labels, ijk_to_ras))
    assert [s.label for s in scores] == ["1", "2", "7", ALL_LABELS]
    for score in scores:
        assert (score.dice, score.hd95_mm, score.arvd) == (1.0, 0.0, 0.0)
        assert all(d == 1.0 or math.isnan(d) for d in score.dice_thirds)
        assert any(d == 1.0 for d in score.dice_thirds)


def test_a_label_missing_from_the_prediction():
    truth = np.zeros((10, 10, 10), np.int32)
    truth[2:8, 2:5, 2:8], truth[2:8, 5:8, 2:8] = 1, 2
    pred = np.where(truth == 2, 0, truth)
    scores = {s.label: s for s in evaluate_labels(LabelMap(pred, RAS), LabelMap(truth, RAS))}
    assert scores["2"].dice == 0.0 and math.isinf(scores["2"].hd95_mm) and scores["2"].arvd == 1.0
    assert scores["2"].dice_thirds == (0.0, 0.0, 0.0) and scores["1"].dice_thirds == (1.0, 1.0, 1.0)
    assert scores[ALL_LABELS].dice == pytest.approx(2 * 108 / (108 + 216))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"evaluate_labels\(\): 'pred' \(4, 4, 4\) and 'truth' \(4, 4, 5\)"):
        evaluate_labels(LabelMap(np.ones((4, 4, 4)), RAS), LabelMap(np.ones((4, 4, 5)), RAS))
    with pytest.raises(ValueError, match=r"axial_thirds\(\): 'mask' must be 3-D"):
        axial_thirds(np.ones((4, 4), bool), RAS)
    assert np.all(axial_thirds(np.zeros((4, 4, 4), bool), RAS) == -1)
    empty = np.zeros((4, 4, 4), bool)
    assert all(math.isnan(d) for d in thirds_dice(empty, empty, np.zeros((4, 4, 4), np.int8)))


def dataset(*cases: tuple[str, str, str]) -> Dataset:
    """A dataset of (subject, modality, split) cases; plan() reads no file."""
    return Dataset(Path("/data"), "csv", tuple(
        Case(subject, Path(f"/data/{subject}_{modality}.nii.gz"), Path(f"/data/{subject}_{modality}_seg.nii.gz"),
             modality, split) for subject, modality, split in cases))


PAIRED = dataset(("p1", "t2", ""), ("p1", "adc", ""), ("p2", "t2", ""), ("p2", "adc", ""),
                 ("p3", "t2", ""), ("p3", "adc", ""), ("p4", "t2", ""))


def test_cross_modality_every_ordered_pair_and_never_the_same_subject():
    tasks = plan(PAIRED, "cross-modality")
    assert sorted({t.group for t in tasks}) == ["adc->t2", "t2->adc"]
    assert sorted((t.group, t.target.subject) for t in tasks) == sorted(
        [("adc->t2", s) for s in ("p1", "p2", "p3", "p4")] + [("t2->adc", s) for s in ("p1", "p2", "p3")])
    for task in tasks:
        atlas_modality, target_modality = task.group.split("->")
        assert task.target.modality == target_modality
        assert {a.modality for a in task.atlases} == {atlas_modality}
        expected = {c.subject for c in PAIRED.cases if c.modality == atlas_modality} - {task.target.subject}
        assert {a.subject for a in task.atlases} == expected
    assert len({t.target_id for t in tasks}) == len(tasks)


@pytest.mark.parametrize("folds", [2, 3, 4])
def test_kfold_targets_every_case_once_with_the_other_folds_as_atlases(folds):
    tasks = plan(PAIRED, "kfold", folds=folds, seed=4)
    assert sorted((t.target.subject, t.target.modality) for t in tasks) == sorted(
        (c.subject, c.modality) for c in PAIRED.cases)
    fold = fold_of_subjects(["p1", "p2", "p3", "p4"], folds, 4)
    assert sorted(set(fold.values())) == list(range(folds))
    for task in tasks:
        assert task.group == f"fold-{fold[task.target.subject]}"
        assert set(task.atlases) == {c for c in PAIRED.cases if fold[c.subject] != fold[task.target.subject]}
    assert plan(PAIRED, "kfold", folds=folds, seed=4) == tasks  # deterministic


def test_split_tests_targets_with_train_atlases():
    data = dataset(("a", "ct", "train"), ("b", "ct", "train"), ("c", "mr", "test"), ("b", "mr", "test"),
                   ("d", "ct", "val"))
    tasks = plan(data, Protocol.SPLIT)
    assert [(t.group, t.target.subject) for t in tasks] == [("test", "c"), ("test", "b")]
    assert [a.subject for a in tasks[0].atlases] == ["a", "b"] and [a.subject for a in tasks[1].atlases] == ["a"]


def test_atlases_per_target_is_a_seeded_draw_of_the_candidates():
    data = dataset(*[(f"s{n}", "ct", "") for n in range(8)], *[(f"s{n}", "mr", "") for n in range(8)])
    full = plan(data, "cross-modality")
    capped = plan(data, "cross-modality", atlases_per_target=3, seed=1)
    assert [len(t.atlases) for t in capped] == [3] * len(full)
    for whole, part in zip(full, capped):
        assert set(part.atlases) <= set(whole.atlases)
    assert plan(data, "cross-modality", atlases_per_target=3, seed=1) == capped
    assert plan(data, "cross-modality", atlases_per_target=3, seed=2) != capped


def test_protocols_refuse_datasets_that_do_not_fit():
    with pytest.raises(InputError, match=r"--protocol cross-modality: the dataset has one modality \(ct\)"):
        plan(dataset(("a", "ct", ""), ("b", "ct", "")), "cross-modality")
    with pytest.raises(InputError, match=r"--folds 5: must be between 2 and the dataset's number of subjects \(4\)"):
        plan(PAIRED, "kfold", folds=5)
    with pytest.raises(InputError, match=r"--protocol split: the dataset has 0 'test' and 0 'train' cases"):
        plan(PAIRED, "split")
    with pytest.raises(InputError, match=r"target /data/a_mr.nii.gz \(ct->mr\) has no atlas of another subject"):
        plan(dataset(("a", "ct", ""), ("a", "mr", "")), "cross-modality")
    with pytest.raises(InputError, match=r"--atlases-per-target 0: must be a positive integer"):
        plan(PAIRED, "kfold", folds=2, atlases_per_target=0)


def rows(group: str, subject: str, dice: float, hd95: float) -> list[dict[str, str]]:
    base = {"protocol": "kfold", "group": group, "target_subject": subject, "target_modality": "ct",
            "arvd": "0.1", "dice_apex": "nan", "dice_mid": "0.5", "dice_base": "0.5", "atlases": "3",
            "seconds": "1.0"}
    return [{**base, "label": label, "dice": format_number(dice), "hd95_mm": format_number(hd95)}
            for label in ("1", "10", "2", ALL_LABELS)]


def test_metrics_table_round_trip_summary_and_boxplots(tmp_path):
    table = rows("fold-0", "a", 0.8, 2.0) + rows("fold-0", "b", 0.6, math.inf) + rows("fold-1", "c", 0.7, 4.0)
    write_rows(tmp_path / "metrics.csv", table)
    back = read_rows(tmp_path / "metrics.csv")
    assert back == table and done_keys(back) == {("kfold", "fold-0", "a", "ct"), ("kfold", "fold-0", "b", "ct"),
                                                 ("kfold", "fold-1", "c", "ct")}
    summary = summary_markdown(back)
    lines = [line for line in summary.splitlines() if line.startswith("| kfold")]
    assert [line.split(" | ")[1:3] for line in lines[:4]] == [["fold-0", "1"], ["fold-0", "2"], ["fold-0", "10"],
                                                               ["fold-0", ALL_LABELS]]
    assert len(lines) == 12  # fold-0, fold-1 and all groups, 4 labels each
    fold0 = lines[0].split(" | ")
    assert fold0[3:8] == ["2", "0.700 ± 0.141", "0.700", "2.000 ± 0.000", "2.000"] and fold0[8] == "1"
    assert lines[-1].startswith("| kfold | (all groups) | all | 3 | 0.700 ± 0.100")
    write_boxplots(back, tmp_path / "boxplots.png")
    assert (tmp_path / "boxplots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_foreign_csv_is_not_taken_for_a_metrics_table(tmp_path):
    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"metrics.csv: not a metrics table of this version"):
        read_rows(tmp_path / "metrics.csv")
    assert read_rows(tmp_path / "absent.csv") == [] and COLUMNS[0] == "protocol"
