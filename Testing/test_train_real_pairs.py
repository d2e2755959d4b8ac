"""crossmodalmas.train.real_pairs and training on a dataset's real pairs: the crop grid, label
renumbering, the held-out split, cross-modality pairing, augmentation, the refusals, and both
trainers on tiny CT/MR heart-phantom datasets (crossmodalmas.phantom_dataset, CSV layout)."""

import json

import numpy as np
import pytest
import torch

from conftest import phantom
from crossmodalmas.data import Case, open_dataset
from crossmodalmas.errors import InputError
from crossmodalmas.phantom_dataset import write_phantom_dataset
from crossmodalmas.synth import SynthConfig, SynthPair
from crossmodalmas.train.config import TrainRegistrationConfig
from crossmodalmas.train.real_pairs import (RealCase, RealPairs, augment, crop_case, crop_grid, held_out,
                                            open_real_pairs, pair_labels)
from crossmodalmas.train.registration import _loss_terms, train_registration
from crossmodalmas.train.similarity import train_similarity
from crossmodalmas.train.similarity_config import TrainSimilarityConfig
from crossmodalmas.volume import Grid

NET = {"channels": [4, 8], "output_level": 0, "input_downsample": 2, "mode": "paper"}
# "brain" without data_root cannot be loaded: a real-only run must never build a label-map bank.
TINY = dict(name="tiny-real", sources=["brain"], shape=[16, 16, 16], steps=3, validate_every=3, validation_pairs=2,
            max_loss_labels=4, seed=1, threads=1, lambda_supervised=0.1, real_fraction=1.0, crop_labels=[205],
            crop_margin_mm=8.0, net=NET)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("hearts"))


def test_the_phantom_dataset_opens_with_two_modalities_and_is_never_overwritten(dataset):
    opened = open_dataset(dataset)
    assert opened.layout == "csv" and opened.modalities() == ["ct", "mr"]
    assert [(c.subject, c.modality, c.split) for c in opened.cases][-3:] == [("s4", "mr", "train"), ("s5", "ct", "val"),
                                                                             ("s6", "mr", "val")]
    image, labels = opened.load(opened.cases[0])
    assert image.array.shape == (24, 24, 24) and 205 in labels.array
    before = dataset.read_bytes()
    with pytest.raises(InputError, match=r"cases.csv: already exists; choose an empty folder \(nothing was "
                                         r"overwritten\)$"):
        write_phantom_dataset(dataset.parent)
    assert dataset.read_bytes() == before


def _config(source, **changes) -> TrainRegistrationConfig:
    return TrainRegistrationConfig.from_dict({**TINY, "dataset": str(source), **changes})


def test_the_crop_grid_is_isotropic_centred_and_holds_the_box():
    # An oblique grid with anisotropic voxels (1 x 2 x 3 mm along i, j, k) and a box of voxels.
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([1.0, 2.0, 3.0])
    matrix[:3, 3] = (10.0, -5.0, 7.0)
    grid = Grid((20, 30, 40), matrix)
    mask = np.zeros(grid.shape, bool)
    mask[4:9, 10:21, 2:33] = True  # k 4..8 (12 mm), j 10..20 (20 mm), i 2..32 (30 mm)
    crop = crop_grid(grid, mask, margin_mm=5.0, shape=(8, 9, 11))
    assert crop.shape == (8, 9, 11)
    np.testing.assert_allclose(crop.spacing, [4.0, 4.0, 4.0])  # (30 + 10) mm over 10 intervals along i
    np.testing.assert_allclose(crop.ijk_to_ras[:3, :3] / 4.0, rotation)  # the image's orientation
    centre = grid.ijk_to_points(np.array([[17.0, 15.0, 6.0]]))[0]
    np.testing.assert_allclose(crop.ijk_to_points(np.array([[5.0, 4.0, 3.5]]))[0], centre)
    box = grid.ijk_to_points(np.argwhere(mask)[:, ::-1])
    inside = crop.points_to_ijk(box)
    assert inside.min() >= -1e-9 and np.all(inside.max(0) <= np.array([10, 8, 7]) + 1e-9)


def test_a_case_is_cropped_around_its_chosen_labels():
    image, labels = phantom(1, "ct", shape=(32, 32, 32), spacing=(3.0, 3.0, 3.0))
    array, label_array = crop_case(image, labels, (205,), 6.0, (16, 16, 16))
    assert array.shape == label_array.shape == (16, 16, 16) and array.dtype == np.float32
    assert 0.0 <= array.min() and array.max() == pytest.approx(1.0)
    assert 205 in label_array and set(np.unique(label_array)) <= set(np.unique(labels.array))
    assert (label_array == 205).mean() > 3 * (labels.array == 205).mean()  # zoomed onto the myocardium
    with pytest.raises(ValueError, match=r"^none of the crop labels \[999\] is in its labels \(it has \[205, "):
        crop_case(image, labels, (999,), 6.0, (16, 16, 16))


def test_pair_labels_are_renumbered_alike_with_background_kept():
    a = torch.tensor([[0, 205, 500], [500, 205, 0]])
    b = torch.tensor([[820, 500, 500], [0, 0, 820]])
    la, lb, k = pair_labels(a, b)
    assert k == 4  # 0, 205, 500, 820
    assert la.tolist() == [[0, 1, 2], [2, 1, 0]] and lb.tolist() == [[3, 2, 2], [0, 0, 3]]
    _, _, only = pair_labels(torch.tensor([[3, 3]]), torch.tensor([[4, 4]]))
    assert only == 3  # no background voxel: index 0 is still kept for it


def _case(subject, modality="mr", split=""):
    return Case(subject, f"/x/{subject}_{modality}.nii.gz", f"/x/{subject}_{modality}_seg.nii.gz", modality, split)


def test_the_held_out_cases_are_the_val_split_else_a_fixed_share_of_subjects():
    listed = [_case("a", split="train"), _case("b", split="val"), _case("c", split="test"), _case("d")]
    train, val = held_out(listed)
    assert [c.subject for c in train] == ["a", "d"] and [c.subject for c in val] == ["b"]  # test never used
    subjects = [_case(f"p{n:02d}", modality) for n in range(10) for modality in ("t2", "adc")]
    train, val = held_out(subjects)
    assert len({c.subject for c in val}) == 2 and len(val) == 4  # 20 % of 10 subjects, both channels each
    assert not {c.subject for c in train} & {c.subject for c in val}
    assert {c.subject for c in held_out(list(reversed(subjects)))[1]} == {c.subject for c in val}  # order-free


def _real(subject, modality, value):
    labels = torch.full((4, 4, 4), value, dtype=torch.int32)
    return RealCase(subject, modality, torch.rand(4, 4, 4), labels)


def test_pairs_are_of_two_subjects_and_two_modalities(tmp_path):
    train = [_real("a", "ct", 1), _real("a", "mr", 2), _real("b", "ct", 3), _real("c", "mr", 4)]
    pairs = RealPairs(tmp_path, train, [_real("v", "ct", 5), _real("w", "ct", 6)])
    generator = torch.Generator().manual_seed(0)
    seen = {tuple(case.name for case in pairs._pick("train", generator)) for _ in range(200)}
    assert seen == {("a (ct)", "c (mr)"), ("a (mr)", "b (ct)"), ("b (ct)", "a (mr)"), ("b (ct)", "c (mr)"),
                    ("c (mr)", "a (ct)"), ("c (mr)", "b (ct)")}
    batch = pairs.draw(3, generator)
    assert batch.forward is None and batch.backward is None and batch.image_a.shape == (3, 1, 4, 4, 4)
    assert batch.labels_a.dtype == torch.int64 and set(batch.labels_a.unique().tolist()) <= {1, 2}
    names = [item.name for item in pairs.validation_pairs(4, seed=3, device="cpu")]
    assert set(names) <= {"v (ct) -> w (ct)", "w (ct) -> v (ct)"}  # one modality held out: any two subjects
    assert names == [item.name for item in pairs.validation_pairs(4, seed=3, device="cpu")]
    with pytest.raises(InputError, match=r"its val cases \(1\) give no pair: a pair needs two subjects"):
        RealPairs(tmp_path, train, [_real("v", "ct", 5)])


def test_augmentation_with_zero_ranges_is_the_identity_and_otherwise_moves_both_alike():
    labels = torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)
    labels[..., 4:12, 5:11, 3:13] = 1
    pair = SynthPair(labels.float(), labels, labels.float() * 0.5, labels, None, None)
    still = SynthConfig(velocity_std=0.0, rotation_deg=0.0, scaling=0.0, shear=0.0, translation=0.0)
    same = augment(pair, still, torch.Generator().manual_seed(0))
    assert torch.equal(same.labels_a, labels) and torch.allclose(same.image_a, labels.float(), atol=1e-5)
    assert same.forward is None
    moved = augment(pair, SynthConfig(translation=0.1), torch.Generator().manual_seed(0))
    assert not torch.equal(moved.labels_a, labels) and not torch.equal(moved.labels_a, moved.labels_b)
    # image a is the labels as floats: after the same deformation they still agree where they are not a boundary
    agree = (moved.image_a.round() == moved.labels_a.float()).float().mean()
    assert agree > 0.95


def test_the_end_point_term_is_skipped_for_real_pairs():
    config = TrainRegistrationConfig(lambda_supervised=0.5, max_loss_labels=4)
    labels = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    labels[..., 2:6, 2:6, 2:6] = 1
    fields = torch.zeros(1, 3, 8, 8, 8)
    synthetic = SynthPair(labels.float(), labels, labels.float(), labels, fields + 1.0, fields)
    real = SynthPair(labels.float(), labels, labels.float(), labels, None, None)
    generator = torch.Generator().manual_seed(0)
    with_term = _loss_terms(config, synthetic, fields, fields, generator)
    without = _loss_terms(config, real, fields, fields, generator)
    assert with_term["end_point_error"].item() == pytest.approx(3 ** 0.5)
    assert "end_point_error" not in without
    assert with_term["total"].item() == pytest.approx(without["total"].item() + 0.5 * 3 ** 0.5)


@pytest.mark.parametrize("values, message", [
    ({"real_fraction": 1.5}, r"'real_fraction' must be in \[0, 1\], got 1.5"),
    ({"dataset": None}, r"'real_fraction' 1.0 needs a 'dataset' \(none given\)"),
    ({"dataset_layout": "nifti"}, r"'dataset_layout' must be one of auto, csv, msd, mmwhs, folder, got 'nifti'"),
    ({"crop_margin_mm": -1}, r"'crop_margin_mm' must be >= 0, got -1"),
    ({"workers": -1}, r"'workers' must be None or an integer >= 0, got -1"),
    ({"crop_labels": ["myo"]}, r"invalid literal for int\(\) with base 10: 'myo'"),
])
def test_bad_real_data_settings_are_refused(dataset, values, message):
    with pytest.raises(InputError, match=r"^config: " + message):
        TrainRegistrationConfig.from_dict({**TINY, "dataset": str(dataset), **values})


def test_unusable_datasets_are_refused_with_every_bad_case(dataset, tmp_path):
    with pytest.raises(InputError, match=r"cases are unusable for training: s1 \(ct\): none of the crop labels "
                                         r"\[7\] is in its labels .*; s2 \(mr\): none of the crop labels"):
        open_real_pairs(_config(dataset, crop_labels=[7]))
    small = write_phantom_dataset(tmp_path / "small", subjects=3, val=0, shape=(16, 16, 16), spacing_mm=(6.0, 6.0, 6.0))
    with pytest.raises(InputError, match=r"real pairs need 2 or more subjects to train on and 2 or more held out "
                                         r"\(split 'val', else 20% of the subjects\), outside the 'test' split; "
                                         r"found 1 and 2"):
        open_real_pairs(_config(small))
    with pytest.raises(InputError, match=r"no-such.csv: dataset does not exist"):
        open_real_pairs(_config(tmp_path / "no-such.csv"))


def test_registration_trains_on_real_pairs_only(dataset, tmp_path):
    entry_path = train_registration(_config(dataset), tmp_path, show_progress=False)
    entry = json.loads(entry_path.read_text())
    assert entry["training"]["data"] == [f"dataset:{dataset}"]
    assert entry["training"]["recipe"]["real_fraction"] == 1.0 and entry["training"]["recipe"]["crop_labels"] == [205]
    assert set(entry["accuracy"]) == {"real_validation"}
    assert 0.0 < entry["accuracy"]["real_validation"]["val_real_dice_before"] <= 1.0
    header, row = (tmp_path / "log.csv").read_text().splitlines()
    assert header.endswith("val_real_dice_before,val_real_dice,val_real_folding_percent")
    values = dict(zip(header.split(","), row.split(",")))
    assert values["val_dice"] == "" and values["val_real_dice"] != ""  # no synthetic validation
    assert "real pairs of" in entry["description"] and "synthetic" not in entry["description"]


def test_similarity_trains_on_real_pairs(dataset, tmp_path):
    config = TrainSimilarityConfig.from_dict(dict(
        name="tiny-sim-real", sources=["brain"], shape=[24, 24, 24], max_offset=1, candidates=4, queries=32, steps=2,
        validate_every=2, validation_pairs=1, threads=1, seed=1, positive_dice=0.6, negative_dice=0.4,
        net={"channels": [4, 8, 8, 8], "embedding": 4}, dataset=str(dataset), real_fraction=1.0, crop_margin_mm=4.0))
    entry = json.loads(train_similarity(config, tmp_path, show_progress=False).read_text())
    assert set(entry["accuracy"]) == {"real_validation"}
    assert set(entry["accuracy"]["real_validation"]) == {"val_real_spearman", "val_real_spearman_within",
                                                         "val_real_triplet_accuracy"}
    assert (tmp_path / "log.csv").read_text().splitlines()[0].endswith("val_real_triplet_accuracy")
