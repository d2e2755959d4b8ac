"""Label-map sources for synthetic training: fixed split, exact shapes, contiguous labels, fill.

File sources are checked on tiny label files written here (no shared data needed), and on the
real ``../shared/data/labelmaps`` where it is present (``shared_data`` marker).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from crossmodalmas.label_sources import EVAL_SEED_START, LabelMapBank, LabelSource, Split, split_files
from crossmodalmas.phantoms import make_grid
from crossmodalmas.volume import LabelMap, write_labels

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PARAMETRIC = [LabelSource.HEART, LabelSource.ABDOMEN, LabelSource.SHAPES]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_contiguous(labels: torch.Tensor, shape, max_labels: int = 64) -> None:
    assert labels.dtype == torch.int64 and tuple(labels.shape) == tuple(shape)
    values = torch.unique(labels)
    assert torch.equal(values, torch.arange(len(values))) and len(values) <= max_labels


def write_prostate_like(root: Path, count: int = 6) -> Path:
    """``count`` files in ``root/labelmaps/msd_prostate``: a 40 x 20 x 20 mm box (R-L, A-P, S-I)
    of label 7 with a 4 mm cube of label 9 inside, on 0.5 x 0.5 x 2 mm voxels."""
    folder = root / "labelmaps" / "msd_prostate"
    folder.mkdir(parents=True)
    grid = make_grid((20, 80, 120), (0.5, 0.5, 2.0))
    for n in range(count):
        array = np.zeros(grid.shape, dtype=np.int32)
        array[5:15, 20:60, 20:100] = 7
        array[9:11, 36:44, 56:64] = 9
        write_labels(LabelMap(array, grid.ijk_to_ras), folder / f"case_{n:02d}.nii.gz")
    return root


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return write_prostate_like(tmp_path_factory.mktemp("tiny_labelmaps"))


@pytest.fixture(scope="module")
def data_root() -> Path:
    if not (SHARED_DATA / "labelmaps").is_dir():
        pytest.skip(f"needs {SHARED_DATA / 'labelmaps'}, absent here (a fresh checkout has no shared data)")
    return SHARED_DATA


def test_split_files_every_fifth_sorted_file_is_eval(tiny_root):
    folder = tiny_root / "labelmaps" / "msd_prostate"
    train, evaluation = split_files(folder, Split.TRAIN), split_files(folder, "eval")
    assert [p.name for p in evaluation] == ["case_04.nii.gz"]
    assert not set(train) & set(evaluation) and len(train) + len(evaluation) == 6


def test_train_bank_never_loads_an_eval_file(tiny_root):
    train = LabelMapBank([LabelSource.PROSTATE], Split.TRAIN, (16, 16, 16), data_root=tiny_root)
    evaluation = LabelMapBank(["prostate"], "eval", (16, 16, 16), data_root=tiny_root)
    assert evaluation.names(LabelSource.PROSTATE) == ["prostate/case_04"]
    assert "prostate/case_04" not in train.names(LabelSource.PROSTATE)
    assert {train.pick(gen(seed)) for seed in range(40)} <= set(train.names(LabelSource.PROSTATE))
    with pytest.raises(ValueError, match=r"LabelMapBank.make\(\): 'name' 'prostate/case_04' is not a 'train' map"):
        train.make("prostate/case_04", gen(0))


def test_file_map_is_resampled_isotropically_and_centred(tiny_root):
    bank = LabelMapBank([LabelSource.PROSTATE], Split.EVAL, (24, 32, 32), data_root=tiny_root, background_shapes=0)
    labels = bank.make("prostate/case_04", gen(0))
    assert_contiguous(labels, (24, 32, 32))
    assert set(torch.unique(labels).tolist()) == {0, 1, 2}
    # Box + 20 mm margins: 80 (R-L) x 60 (A-P) x 60 (S-I) mm in 32 x 32 x 24 voxels: 2.5 mm isotropic,
    # so the box is 16 x 8 x 8 voxels (W, H, D), centred, and the 4 mm cube about 2 voxels.
    box = np.argwhere(labels.numpy() != 0)
    np.testing.assert_array_equal(box.max(axis=0) - box.min(axis=0) + 1, [8, 8, 16])
    np.testing.assert_allclose((box.max(axis=0) + box.min(axis=0)) / 2, [11.5, 15.5, 15.5], atol=0.5)
    assert 4 <= int((labels == 2).sum()) <= 27


def test_background_shapes_fill_around_the_foreground_and_keep_air(tiny_root):
    plain = LabelMapBank([LabelSource.PROSTATE], Split.EVAL, (24, 32, 32), data_root=tiny_root, background_shapes=0)
    textured = LabelMapBank([LabelSource.PROSTATE], Split.EVAL, (24, 32, 32), data_root=tiny_root,
                            background_shapes=4)
    before, after = plain.make("prostate/case_04", gen(1)), textured.make("prostate/case_04", gen(1))
    assert_contiguous(after, (24, 32, 32))
    assert 4 <= len(torch.unique(after)) <= 7
    assert torch.equal(after[before != 0], before[before != 0])  # structures keep their labels 1, 2
    assert int((after[before == 0] > 2).sum()) > 0 and after[0, 0, 0] == 0  # shapes around, air outside
    assert torch.equal(after, textured.make("prostate/case_04", gen(1)))


def test_too_many_labels_merge_the_smallest_into_background(tiny_root):
    bank = LabelMapBank([LabelSource.PROSTATE], Split.EVAL, (16, 16, 16), data_root=tiny_root,
                        max_labels=2, background_shapes=0)
    labels = bank.make("prostate/case_04", gen(0))
    assert set(torch.unique(labels).tolist()) == {0, 1}
    assert int((labels == 1).sum()) > 100  # the big box stays, the small cube went to background


@pytest.mark.parametrize("shape", [(32, 32, 32), (24, 40, 28)])
def test_parametric_maps_have_the_exact_shape_and_contiguous_labels(shape):
    bank = LabelMapBank(PARAMETRIC, Split.EVAL, shape, max_labels=20, background_shapes=4)
    items = bank.fixed(6)
    assert [name for name, _ in items] == ["heart/seed1000000", "abdomen/seed1000000", "shapes/seed1000000",
                                           "heart/seed1000001", "abdomen/seed1000001", "shapes/seed1000001"]
    for name, labels in items:
        assert_contiguous(labels, shape, max_labels=20)
        assert len(torch.unique(labels)) >= 6, name


def test_fixed_and_draw_are_deterministic():
    bank = LabelMapBank(PARAMETRIC, Split.TRAIN, (24, 24, 24))
    first, second = bank.fixed(3), bank.fixed(3)
    assert [n for n, _ in first] == ["heart/seed0", "abdomen/seed0", "shapes/seed0"]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, second))
    assert torch.equal(bank.draw(gen(5)), bank.draw(gen(5)))


def test_train_draws_never_give_an_eval_seed():
    train = LabelMapBank(PARAMETRIC, Split.TRAIN, (16, 16, 16))
    evaluation = LabelMapBank(PARAMETRIC, Split.EVAL, (16, 16, 16))
    generator = gen(0)
    train_seeds = {int(train.pick(generator).split("seed")[1]) for _ in range(300)}
    eval_seeds = {int(evaluation.pick(generator).split("seed")[1]) for _ in range(300)}
    assert max(train_seeds) < EVAL_SEED_START <= min(eval_seeds)
    with pytest.raises(ValueError, match=r"LabelMapBank.make\(\): 'name' 'heart/seed1000003' is not a 'train' map: "
                                         r"'seed<n>' with n below 1000000 for train, from 1000000 for eval"):
        train.make("heart/seed1000003", gen(0))
    with pytest.raises(ValueError, match=r"'name' 'abdomen/seed7' is not a 'eval' map"):
        evaluation.make("abdomen/seed7", gen(0))


def test_heart_keeps_its_tissues_and_the_abdomen_fills_only_soft_tissue():
    heart = LabelMapBank([LabelSource.HEART], Split.EVAL, (40, 40, 40), background_shapes=4).fixed(1)[0][1]
    assert len(torch.unique(heart)) >= 12  # 7 MM-WHS structures + fat, soft, lung, bone, blood (+ air)
    plain = LabelMapBank([LabelSource.ABDOMEN], Split.EVAL, (32, 32, 32), background_shapes=0).fixed(1)[0][1]
    textured = LabelMapBank([LabelSource.ABDOMEN], Split.EVAL, (32, 32, 32), background_shapes=6).fixed(1)[0][1]
    assert len(torch.unique(plain)) == 10  # air, 7 organs, body wall, other soft tissue
    assert torch.equal(plain == 0, textured == 0)  # air stays air
    assert torch.equal(plain[plain < 9], textured[plain < 9])  # organs and wall untouched
    assert 10 < len(torch.unique(textured)) <= 9 + 6


def test_max_labels_caps_parametric_maps():
    bank = LabelMapBank(PARAMETRIC, Split.TRAIN, (24, 24, 24), max_labels=5, background_shapes=2)
    for _, labels in bank.fixed(3):
        assert_contiguous(labels, (24, 24, 24), max_labels=5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sources=[]), ValueError, r"LabelMapBank\(\): 'sources' must hold at least one LabelSource, got none"),
    (dict(sources="heart"), TypeError, r"LabelMapBank\(\): 'sources' must be a sequence of LabelSource, got str"),
    (dict(sources=["liver"]), ValueError, r"LabelMapBank\(\): 'sources' must hold LabelSource values \['brain', "
                                          r"'prostate', 'heart', 'abdomen', 'shapes'\], got \['liver'\]"),
    (dict(split="test"), ValueError, r"LabelMapBank\(\): 'split' must be 'train' or 'eval', got 'test'"),
    (dict(shape=(16, 16)), ValueError, r"LabelMapBank\(\): 'shape' must be 3 positive integers \(D, H, W\)"),
    (dict(background_shapes=-1), ValueError, r"LabelMapBank\(\): 'background_shapes' must be an integer >= 0, got -1"),
    (dict(max_labels=9), ValueError, r"LabelMapBank\(\): 'max_labels' must be an integer >= 10, got 9"),
    (dict(sources=["brain"]), ValueError, r"LabelMapBank\(\): source 'brain' needs 'data_root' "
                                          r"\(the folder that holds labelmaps/\), got None"),
])
def test_bank_refuses_bad_arguments(kwargs, error, match):
    arguments = dict(sources=["heart"], split="train", shape=(16, 16, 16)) | kwargs
    with pytest.raises(error, match=match):
        LabelMapBank(**arguments)


def test_bank_refuses_missing_or_empty_folders_and_bad_files(tmp_path, tiny_root):
    with pytest.raises(ValueError, match=r"LabelMapBank\(\): source 'brain' needs the folder .*synthseg_brain, "
                                         r"which does not exist"):
        LabelMapBank(["brain"], "train", (16, 16, 16), data_root=tmp_path)
    folder = write_prostate_like(tmp_path, count=3) / "labelmaps" / "msd_prostate"
    with pytest.raises(ValueError, match=r"LabelMapBank\(\): source 'prostate' folder .*msd_prostate holds no "
                                         r"\.nii\.gz file in the 'eval' split"):
        LabelMapBank(["prostate"], "eval", (16, 16, 16), data_root=tmp_path)
    grid = make_grid((4, 4, 4), (1.0, 1.0, 1.0))
    write_labels(LabelMap(np.zeros(grid.shape), grid.ijk_to_ras), folder / "case_00.nii.gz")
    with pytest.raises(ValueError, match=r"LabelMapBank\(\): .*case_00.nii.gz holds no foreground label"):
        LabelMapBank(["prostate"], "train", (16, 16, 16), data_root=tmp_path)


def test_bank_methods_refuse_bad_arguments(tiny_root):
    bank = LabelMapBank(["heart", "prostate"], "train", (16, 16, 16), data_root=tiny_root)
    with pytest.raises(TypeError, match=r"LabelMapBank.pick\(\): 'generator' must be a torch.Generator, got int"):
        bank.pick(0)
    with pytest.raises(TypeError, match=r"LabelMapBank.make\(\): 'generator' must be a torch.Generator, got NoneType"):
        bank.make("heart/seed1", None)
    with pytest.raises(ValueError, match=r"LabelMapBank.make\(\): 'name' must start with one of this bank's sources "
                                         r"\['heart', 'prostate'\], got 'brain/training_seg_01'"):
        bank.make("brain/training_seg_01", gen(0))
    with pytest.raises(ValueError, match=r"LabelMapBank.make\(\): 'name' 'heart/one' is not a 'train' map"):
        bank.make("heart/one", gen(0))
    with pytest.raises(ValueError, match=r"LabelMapBank.fixed\(\): 'count' must be an integer >= 0, got -1"):
        bank.fixed(-1)


@pytest.mark.shared_data
@pytest.mark.parametrize("source, folder, total", [(LabelSource.BRAIN, "synthseg_brain", 20),
                                                   (LabelSource.PROSTATE, "msd_prostate", 32)])
def test_shared_label_files_split_is_fixed_and_disjoint(data_root, source, folder, total):
    path = data_root / "labelmaps" / folder
    train, evaluation = split_files(path, Split.TRAIN), split_files(path, Split.EVAL)
    names = sorted(p.name for p in path.glob("*.nii.gz"))
    assert len(names) == total and not {p.name for p in train} & {p.name for p in evaluation}
    assert [p.name for p in evaluation] == names[4::5] and len(train) == total - len(evaluation)


@pytest.mark.shared_data
def test_shared_eval_maps_load_with_exact_shape_and_contiguous_labels(data_root):
    bank = LabelMapBank([LabelSource.BRAIN, LabelSource.PROSTATE], Split.EVAL, (32, 32, 32), data_root=data_root)
    items = bank.fixed(4)
    assert [name for name, _ in items] == ["brain/training_seg_05", "prostate/prostate_06",
                                           "brain/training_seg_10", "prostate/prostate_16"]
    for name, labels in items:
        assert_contiguous(labels, (32, 32, 32))
        assert labels[0, 0, 0] == 0, name  # air outside
    assert len(torch.unique(items[0][1])) > 30  # a brain keeps most of its ~53 labels
    train = LabelMapBank([LabelSource.PROSTATE], Split.TRAIN, (16, 16, 16), data_root=data_root)
    assert not set(train.names(LabelSource.PROSTATE)) & set(bank.names(LabelSource.PROSTATE))


@pytest.mark.parametrize("axes, rotation", [("RAS", (0.0, 0.0, 0.0)), ("LPS", (90.0, 0.0, 0.0)),
                                            ("LPS", (0.0, 0.0, 90.0))])
def test_file_maps_come_out_in_lps_axes_whatever_the_file_orientation(tmp_path, axes, rotation):
    """A 40 (R-L) x 20 (A-P) x 10 (S-I) mm box: (D, H, W) are (S, P, L) for any file orientation."""
    maps = []
    for name, file_axes, file_rotation in (("lps", "LPS", (0.0, 0.0, 0.0)), ("other", axes, rotation)):
        root = tmp_path / name
        folder = root / "labelmaps" / "msd_prostate"
        folder.mkdir(parents=True)
        grid = make_grid((60, 60, 60), (1.0, 1.0, 1.0), file_rotation, axes=file_axes)
        ras = grid.ijk_to_points(np.argwhere(np.ones(grid.shape))[:, ::-1])
        inside = (np.abs(ras[:, 0]) < 20) & (np.abs(ras[:, 1]) < 10) & (np.abs(ras[:, 2]) < 5)
        right = inside & (ras[:, 0] > 10)  # a second label on the patient's right end
        array = (inside.astype(np.int32) + right).reshape(grid.shape)
        write_labels(LabelMap(array, grid.ijk_to_ras), folder / "case_00.nii.gz")
        bank = LabelMapBank(["prostate"], "train", (24, 32, 32), data_root=root, background_shapes=0)
        maps.append(bank.make("prostate/case_00", gen(0)))
    torch.testing.assert_close(maps[1], maps[0], rtol=0, atol=0)
    box = np.argwhere(maps[0].numpy() != 0)
    np.testing.assert_array_equal(box.max(axis=0) - box.min(axis=0) + 1, [4, 8, 16])  # 2.5 mm voxels
    right_end = np.argwhere(maps[0].numpy() == 2)[:, 2]
    assert right_end.max() < 16  # W runs to the patient's left: the right end is at low W
