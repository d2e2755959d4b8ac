"""Dataset adapters (crossmodalmas.data): the four layouts, 4-D channel extraction, label
remapping, the all-bad-cases report, every error message, and that nothing is written.

Each layout is built in tmp_path from tiny seeded heart phantoms (16^3 voxels at 5 mm); the
Decathlon layout is also checked on the real MSD prostate label maps where ``../shared/data``
is present (``shared_data`` marker).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import phantom, write_atlas
from crossmodalmas.data import BUNDLED_LABEL_MAPS, open_dataset, read_label_map
from crossmodalmas.errors import InputError
from crossmodalmas.volume import LabelMap, Volume, read_volume, to_sitk, write_labels, write_volume

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = dict(shape=(16, 16, 16), spacing=(5.0, 5.0, 5.0))


def small(seed: int, modality: str = "mr", **kwargs) -> tuple[Volume, LabelMap]:
    return phantom(seed, modality, **{**SMALL, **kwargs})


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def csv_dataset(root: Path) -> Path:
    """Two atlases in root/images and a manifest: one row with every column, one with two."""
    write_atlas(root / "images", "a", *small(1, "ct"))
    write_atlas(root / "images", "b", *small(2, "mr"))
    return write_csv(root / "cases.csv", "image,labels,modality,subject,split",
                     ["images/a.nii.gz,images/a_seg.nii.gz,CT,patient_a,train",
                      "images/b.nii.gz,images/b_seg.nii.gz,,,"])


def four_d(volumes: list[Volume], vector: bool) -> sitk.Image:
    """The volumes as one multi-channel image: a vector image or a 4-D scalar image."""
    channels = [to_sitk(v.array, v.ijk_to_ras) for v in volumes]
    return sitk.Compose(channels) if vector else sitk.JoinSeries(channels)


def msd_dataset(root: Path, vector: bool = False, modality=None) -> Path:
    """A Decathlon folder: 2 training cases with 2-channel (T2, ADC) images, 1 test image."""
    modality = modality or {"0": "T2", "1": "ADC"}
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    training = []
    for n in range(2):
        t2, labels = small(10 + n, "mr", rotation=(10.0, 0.0, 5.0))
        adc = Volume(labels.array * 3.0 + np.float32(n), t2.ijk_to_ras)
        sitk.WriteImage(four_d([t2, adc], vector), str(root / "imagesTr" / f"prostate_{n:02d}.nii.gz"))
        write_labels(labels, root / "labelsTr" / f"prostate_{n:02d}.nii.gz")
        training.append({"image": f"./imagesTr/prostate_{n:02d}.nii.gz", "label": f"./labelsTr/prostate_{n:02d}.nii.gz"})
    write_volume(small(20)[0], root / "imagesTs" / "prostate_99.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "tiny", "modality": modality, "training": training,
                                                   "test": ["./imagesTs/prostate_99.nii.gz"]}))
    return root


def mmwhs_dataset(root: Path) -> Path:
    """ct_train (2 cases), mr_train (1), ct_test with one labelled and one unlabelled image."""
    for folder, seeds in (("ct_train", (1001, 1002)), ("mr_train", (1001,)), ("ct_test", (2001,))):
        for seed in seeds:
            image, labels = small(seed % 97, folder[:2])
            (root / folder).mkdir(parents=True, exist_ok=True)
            write_volume(image, root / folder / f"{folder}_{seed}_image.nii.gz")
            write_labels(labels, root / folder / f"{folder}_{seed}_label.nii.gz")
    write_volume(small(5, "ct")[0], root / "ct_test" / "ct_test_2002_image.nii.gz")
    return root


def folder_dataset(root: Path) -> Path:
    for name, seed in (("s1", 3), ("s2", 4)):
        image, labels = small(seed)
        root.mkdir(parents=True, exist_ok=True)
        write_volume(image, root / f"{name}_img.nii.gz")
        write_labels(labels, root / f"{name}_lab.nii.gz")
    write_volume(small(6)[0], root / "unlabelled_img.nii.gz")
    return root


# --- the four layouts -----------------------------------------------------------------------------

def test_csv_layout_reads_columns_and_defaults(tmp_path):
    manifest = csv_dataset(tmp_path)
    dataset = open_dataset(manifest)
    assert dataset.layout == "csv" and dataset.root == manifest
    first, second = dataset.cases
    assert (first.subject, first.modality, first.split, first.channel) == ("patient_a", "ct", "train", None)
    assert (second.subject, second.modality, second.split) == ("b", "unknown", "")
    assert first.image == tmp_path / "images" / "a.nii.gz" and first.image.is_absolute()
    image, labels = dataset.load(first)
    expected_image, expected_labels = small(1, "ct")
    np.testing.assert_allclose(image.array, expected_image.array, rtol=1e-6)
    np.testing.assert_array_equal(labels.array, expected_labels.array)
    assert labels.grid.same_as(image.grid)


def test_csv_default_modality_fills_empty_cells(tmp_path):
    dataset = open_dataset(csv_dataset(tmp_path), modality="MR")
    assert [case.modality for case in dataset.cases] == ["ct", "mr"]
    assert dataset.modalities() == ["ct", "mr"]


@pytest.mark.parametrize("vector", [False, True], ids=["4d-scalar", "vector"])
def test_msd_multichannel_gives_one_case_per_channel_with_geometry_kept(tmp_path, vector):
    dataset = open_dataset(msd_dataset(tmp_path, vector=vector))
    assert dataset.layout == "msd"
    assert [(c.subject, c.modality, c.channel, c.split) for c in dataset.cases] == [
        ("prostate_00", "t2", 0, "train"), ("prostate_00", "adc", 1, "train"),
        ("prostate_01", "t2", 0, "train"), ("prostate_01", "adc", 1, "train")]
    t2_expected, labels_expected = small(11, "mr", rotation=(10.0, 0.0, 5.0))
    t2, labels = dataset.load(dataset.cases[2])
    adc, _ = dataset.load(dataset.cases[3])
    np.testing.assert_allclose(t2.array, t2_expected.array, rtol=1e-6)
    np.testing.assert_allclose(adc.array, labels_expected.array * 3.0 + 1.0)
    np.testing.assert_allclose(t2.ijk_to_ras, t2_expected.ijk_to_ras, atol=1e-4)
    np.testing.assert_allclose(adc.ijk_to_ras, t2_expected.ijk_to_ras, atol=1e-4)
    np.testing.assert_array_equal(labels.array, labels_expected.array)
    dataset.validate()


def test_msd_single_channel_cases_have_no_channel(tmp_path):
    root = tmp_path / "msd"
    (root / "imagesTr").mkdir(parents=True)
    write_atlas(root / "imagesTr", "spleen_1", *small(3, "ct"))
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "training": [
        {"image": "./imagesTr/spleen_1.nii.gz", "label": "./imagesTr/spleen_1_seg.nii.gz"}]}))
    (case,) = open_dataset(root).cases
    assert (case.subject, case.modality, case.channel) == ("spleen_1", "ct", None)
    np.testing.assert_allclose(open_dataset(root).load(case)[0].array, small(3, "ct")[0].array, rtol=1e-6)


def test_mmwhs_layout_and_bundled_remap(tmp_path):
    dataset = open_dataset(mmwhs_dataset(tmp_path), label_map="mmwhs")
    assert dataset.layout == "mmwhs"
    assert [(c.subject, c.modality, c.split) for c in dataset.cases] == [
        ("ct_train_1001", "ct", "train"), ("ct_train_1002", "ct", "train"),
        ("mr_train_1001", "mr", "train"), ("ct_test_2001", "ct", "test")]
    assert BUNDLED_LABEL_MAPS["mmwhs"] == {205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}
    _, labels = dataset.load(dataset.cases[2])
    original = small(1001 % 97, "mr")[1].array
    expected = np.zeros_like(original)
    for code, value in BUNDLED_LABEL_MAPS["mmwhs"].items():
        expected[original == code] = value
    np.testing.assert_array_equal(labels.array, expected)
    assert set(np.unique(labels.array)) == set(range(8))


def test_mmwhs_training_image_without_labels_is_reported(tmp_path):
    root = mmwhs_dataset(tmp_path)
    (root / "ct_train" / "ct_train_1002_label.nii.gz").unlink()
    with pytest.raises(InputError, match=r"1 of 4 cases are unusable:\n  ct_train_1002 \(ct\): "
                                         r".*ct_train_1002_label\.nii\.gz: file does not exist$"):
        open_dataset(root).validate()


def test_folder_layout_pairs_suffixes(tmp_path):
    dataset = open_dataset(folder_dataset(tmp_path / "f"), image_suffix="_img", label_suffix="_lab", modality="MR")
    assert dataset.layout == "folder"
    assert [(c.subject, c.modality, c.image.name, c.labels.name) for c in dataset.cases] == [
        ("s1", "mr", "s1_img.nii.gz", "s1_lab.nii.gz"), ("s2", "mr", "s2_img.nii.gz", "s2_lab.nii.gz")]
    np.testing.assert_array_equal(dataset.load(dataset.cases[1])[1].array, small(4)[1].array)


@pytest.mark.parametrize("make, layout", [(csv_dataset, "csv"), (msd_dataset, "msd"), (mmwhs_dataset, "mmwhs"),
                                          (folder_dataset, "folder")])
def test_auto_detection_and_nothing_written(tmp_path, make, layout):
    source = make(tmp_path / "data")
    folder = source if source.is_dir() else source.parent
    before = snapshot(folder)
    kwargs = {"image_suffix": "_img", "label_suffix": "_lab"} if layout == "folder" else {}
    dataset = open_dataset(source, **kwargs)
    assert dataset.layout == layout
    dataset.validate()
    for case in dataset.cases:
        dataset.load(case)
    assert snapshot(folder) == before


# --- remapping and label-map files ---------------------------------------------------------------

def test_read_label_map_and_custom_remap(tmp_path):
    path = tmp_path / "map.json"
    path.write_text('{"500": 1, "205": 2}')
    assert read_label_map(path) == {500: 1, 205: 2}
    dataset = open_dataset(csv_dataset(tmp_path / "d"), label_map=path)
    _, labels = dataset.load(dataset.cases[1])
    original = small(2, "mr")[1].array
    np.testing.assert_array_equal(labels.array, np.where(original == 500, 1, np.where(original == 205, 2, 0)))


@pytest.mark.parametrize("text, message", [
    ("{", r"map\.json: label map is not valid JSON \(Expecting"),
    ("[1, 2]", r"map\.json: label map must be a non-empty JSON object like"),
    ("{}", r"map\.json: label map must be a non-empty JSON object like"),
    ('{"lv": 1}', r"map\.json: label map key 'lv' is not a label value \(a non-negative integer\)"),
    ('{"-3": 1}', r"map\.json: label map key '-3' is not a label value"),
    ('{"500": 1.5}', r"map\.json: label map value 1\.5 of key '500' is not a non-negative integer"),
    ('{"500": -1}', r"map\.json: label map value -1 of key '500' is not a non-negative integer"),
])
def test_read_label_map_errors(tmp_path, text, message):
    (tmp_path / "map.json").write_text(text)
    with pytest.raises(InputError, match=message):
        read_label_map(tmp_path / "map.json")


def test_label_map_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(InputError, match=r"nothere\.json: label map file does not exist"):
        read_label_map(tmp_path / "nothere.json")
    with pytest.raises(InputError, match=r"^label map heart: no such file and not a bundled map \(mmwhs\)$"):
        open_dataset(csv_dataset(tmp_path), label_map="heart")


def test_remap_to_nothing_is_reported_per_case(tmp_path):
    path = tmp_path / "map.json"
    path.write_text('{"7": 1}')
    dataset = open_dataset(csv_dataset(tmp_path / "d"), label_map=path)
    with pytest.raises(InputError, match=r"2 of 2 cases are unusable:\n  patient_a \(ct\): .*a_seg\.nii\.gz: label map "
                                         r"is empty after remapping \(its labels \[205, 420, .*\n  b \(unknown\): "):
        dataset.validate()


# --- validation: every bad case in one report ----------------------------------------------------

def test_validate_names_every_bad_case(tmp_path):
    write_atlas(tmp_path, "good", *small(1))
    write_atlas(tmp_path, "moved", *small(2))
    image, labels = small(3)
    write_volume(image, tmp_path / "regrid.nii.gz")
    write_labels(LabelMap(labels.array[:, :, :12], labels.ijk_to_ras), tmp_path / "regrid_seg.nii.gz")
    manifest = write_csv(tmp_path / "cases.csv", "image,labels,modality",
                         ["good.nii.gz,good_seg.nii.gz,mr", "moved.nii.gz,gone_seg.nii.gz,mr",
                          "regrid.nii.gz,regrid_seg.nii.gz,mr"])
    with pytest.raises(InputError) as caught:
        open_dataset(manifest).validate()
    lines = str(caught.value).splitlines()
    assert lines[0] == f"dataset {manifest}: 2 of 3 cases are unusable:"
    assert lines[1] == f"  moved (mr): {tmp_path / 'gone_seg.nii.gz'}: file does not exist"
    assert lines[2].startswith(f"  regrid (mr): {tmp_path / 'regrid_seg.nii.gz'}: label map grid (shape "
                               "(16, 16, 12)")
    assert lines[2].endswith("resample it onto the image first") and len(lines) == 3


def test_validate_reports_unreadable_and_constant_images(tmp_path):
    write_atlas(tmp_path, "a", *small(1))
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    image, labels = small(2)
    write_volume(Volume(np.zeros_like(image.array), image.ijk_to_ras), tmp_path / "flat.nii.gz")
    write_labels(labels, tmp_path / "flat_seg.nii.gz")
    manifest = write_csv(tmp_path / "c.csv", "image,labels", ["broken.nii.gz,a_seg.nii.gz", "flat.nii.gz,flat_seg.nii.gz"])
    with pytest.raises(InputError, match=r"2 of 2 cases are unusable:\n  broken \(unknown\): .*broken\.nii\.gz: cannot be "
                                         r"read as an image .*\n  flat \(unknown\): .*flat\.nii\.gz: image is constant"):
        open_dataset(manifest).validate()


def test_msd_missing_channel_is_reported(tmp_path):
    root = msd_dataset(tmp_path / "m", modality={"0": "T2", "1": "ADC", "2": "DWI"})
    with pytest.raises(InputError, match=r"2 of 6 cases are unusable:\n  prostate_00 \(dwi\): .*prostate_00\.nii\.gz: "
                                         r"image has 2 channel\(s\) .*; channel 2 is needed"):
        open_dataset(root).validate()


# --- subsets ---------------------------------------------------------------------------------------

def test_subset_by_modality_and_split(tmp_path):
    dataset = open_dataset(mmwhs_dataset(tmp_path))
    assert [c.subject for c in dataset.subset(modality="CT", split="train").cases] == ["ct_train_1001", "ct_train_1002"]
    assert [c.subject for c in dataset.subset(split="test").cases] == ["ct_test_2001"]
    assert dataset.subset(modality="mr").modalities() == ["mr"]
    with pytest.raises(InputError, match=r"no case with modality 'mr' and split 'test' \(modalities: ct, mr; "
                                         r"splits: test, train\)"):
        dataset.subset(modality="mr", split="test")


# --- errors when opening ------------------------------------------------------------------------

def test_csv_missing_columns_names_csv_and_its_columns(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", "img,labels,site", ["a.nii.gz,a_seg.nii.gz,x"])
    with pytest.raises(InputError, match=r"^.*m\.csv: a dataset CSV needs columns 'image' and 'labels' \(optional: "
                                         r"modality, subject, split\); it has 'img', 'labels', 'site'$"):
        open_dataset(manifest)


@pytest.mark.parametrize("rows, message", [
    (["a.nii.gz,a_seg.nii.gz,holdout"], r"m\.csv: line 2: split 'holdout' is not train, val, test or empty"),
    (["a.nii.gz,,train"], r"m\.csv: line 2: the 'labels' cell is empty"),
    ([], r"m\.csv: dataset \(csv layout\) holds no case; the CSV has no row"),
])
def test_csv_row_errors(tmp_path, rows, message):
    with pytest.raises(InputError, match=message):
        open_dataset(write_csv(tmp_path / "m.csv", "image,labels,split", rows))


def test_duplicate_subject_is_refused(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", "image,labels,subject,modality",
                         ["a.nii.gz,a_seg.nii.gz,p1,mr", "b.nii.gz,b_seg.nii.gz,p1,MR", "c.nii.gz,c_seg.nii.gz,p1,ct"])
    with pytest.raises(InputError, match=r"m\.csv: each subject may appear once per modality; listed 'p1' \(mr\) 2 times$"):
        open_dataset(manifest)


@pytest.mark.parametrize("content, message", [
    ("{", r"dataset\.json: cannot be read as JSON"),
    ('{"modality": {"0": "T2"}}', r"dataset\.json: needs a 'training' list of"),
    ('{"training": [{"image": "./a.nii.gz"}]}', r"dataset\.json: training entry 0 needs 'image' and 'label' paths"),
    ('{"modality": {"1": "T2"}, "training": []}', r"dataset\.json: 'modality' must map channel numbers 0\.\.n-1 to names"),
    ('{"training": []}', r"dataset \(msd layout\) holds no case; dataset\.json lists no training case"),
])
def test_msd_manifest_errors(tmp_path, content, message):
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(InputError, match=message):
        open_dataset(tmp_path)


def test_open_errors(tmp_path):
    with pytest.raises(InputError, match=r"nothing: dataset does not exist$"):
        open_dataset(tmp_path / "nothing")
    with pytest.raises(InputError, match=r"^layout 'nifti': must be one of auto, csv, msd, mmwhs, folder$"):
        open_dataset(tmp_path, layout="nifti")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"notes\.txt: not a dataset \(give a CSV manifest or a dataset folder\)$"):
        open_dataset(tmp_path / "notes.txt")
    with pytest.raises(InputError, match=r"notes\.txt: the msd layout needs a folder$"):
        open_dataset(tmp_path / "notes.txt", layout="msd")
    with pytest.raises(InputError, match=r": dataset \(folder layout\) holds no case; expected pairs like X\.nii\.gz "
                                         r"with X_seg\.nii\.gz$"):
        open_dataset(tmp_path)
    with pytest.raises(InputError, match=r": dataset \(mmwhs layout\) holds no case; expected ct_train/"):
        open_dataset(tmp_path, layout="mmwhs")
    with pytest.raises(InputError, match=r"^label suffix '_x': must be non-empty and differ from the image suffix '_x'$"):
        open_dataset(tmp_path, image_suffix="_x", label_suffix="_x")


# --- the real MSD prostate label maps ------------------------------------------------------------

@pytest.mark.shared_data
def test_msd_prostate_labels_in_decathlon_layout(tmp_path):
    source = SHARED_DATA / "labelmaps" / "msd_prostate"
    if not source.is_dir():
        pytest.skip(f"needs {source}, absent here (a fresh checkout has no shared data)")
    real = json.loads((source / "dataset.json").read_text())
    root = tmp_path / "Task05_Prostate"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for path in sorted(source.glob("prostate_*.nii.gz"))[:3]:
        labels = read_volume(path)  # a float copy of the label map, geometry included
        channels = [to_sitk((np.choose(labels.array.astype(int), means) + rng.normal(0, 5, labels.array.shape))
                            .astype(np.int16), labels.ijk_to_ras) for means in ((20, 120, 80), (200, 60, 140))]
        sitk.WriteImage(sitk.JoinSeries(channels), str(root / "imagesTr" / path.name))  # 4-D: T2, ADC
        shutil.copy(path, root / "labelsTr" / path.name)
        training.append({"image": f"./imagesTr/{path.name}", "label": f"./labelsTr/{path.name}"})
    (root / "dataset.json").write_text(json.dumps({**real, "training": training, "numTraining": 3}))
    dataset = open_dataset(root)
    assert dataset.modalities() == ["adc", "t2"] and len(dataset.cases) == 6
    dataset.validate()
    t2, labels = dataset.load(dataset.cases[0])
    assert dataset.cases[0].modality == "t2" and set(np.unique(labels.array)) <= {0, 1, 2}
    assert t2.grid.same_as(labels.grid) and t2.array[labels.array == 1].mean() > t2.array[labels.array == 0].mean()
