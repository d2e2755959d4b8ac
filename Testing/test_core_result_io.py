"""crossmodalmas.result_io: a Result on disk, whole (what the Slicer module re-fuses from)."""

import json
import math
from dataclasses import asdict, replace

import numpy as np
import pytest

from crossmodalmas.errors import InputError
from crossmodalmas.options import FusionMethod
from crossmodalmas.refusion import refuse
from crossmodalmas.result_io import ARRAYS_FILE, META_FILE, RESULT_ARRAYS, load_result, save_result

ARRAYS = RESULT_ARRAYS


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result


@pytest.fixture(scope="module")
def saved(result, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved_result")
    save_result(result, folder)
    return folder


def _qc_dicts(qc):
    """QC as dicts with NaN written as None, so that NaN compares equal to NaN."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(q).items()} for q in qc]


def _assert_same(a, b):
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert np.array_equal(a.labels.array, b.labels.array) and a.labels.array.dtype == b.labels.array.dtype
    assert np.array_equal(a.labels.ijk_to_ras, b.labels.ijk_to_ras)
    assert a.working_grid.shape == b.working_grid.shape
    assert np.array_equal(a.working_grid.ijk_to_ras, b.working_grid.ijk_to_ras)
    assert _qc_dicts(a.qc) == _qc_dicts(b.qc)
    for name in ("atlas_names", "fusion", "device", "registration", "similarity_model", "timings", "warnings"):
        assert getattr(a, name) == getattr(b, name), name
    assert (a.similarity is None) == (b.similarity is None)
    if a.similarity is not None:
        assert a.similarity.dtype == b.similarity.dtype and np.array_equal(a.similarity, b.similarity)


def test_round_trip_keeps_every_field(result, saved):
    loaded = load_result(saved)
    _assert_same(loaded, result)
    assert loaded.fusion is FusionMethod.MAJORITY_VOTE and loaded.similarity is None
    assert loaded.timings and loaded.timings == result.timings


def test_save_returns_both_paths_and_writes_strict_json(result, tmp_path):
    paths = save_result(result, tmp_path / "new" / "folder")
    assert paths == [tmp_path / "new" / "folder" / ARRAYS_FILE, tmp_path / "new" / "folder" / META_FILE]
    assert all(p.is_file() for p in paths)
    meta = json.loads(paths[1].read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {META_FILE}"))
    assert meta["format"] == "crossmodalmas-result" and meta["fusion"] == "mv"
    assert sorted(p.name for p in (tmp_path / "new" / "folder").iterdir()) == sorted([ARRAYS_FILE, META_FILE])


def test_nan_figures_and_similarity_round_trip(result, tmp_path):
    """NaN QC figures (e.g. before a fusion) go through JSON as null and come back NaN; cached
    similarity logits and their model's name come back too."""
    qc = [replace(result.qc[0], agreement=math.nan, weight_share=math.nan)] + result.qc[1:]
    logits = np.random.default_rng(0).normal(size=result.weights.shape).astype(np.float32)
    changed = replace(result, qc=qc, similarity=logits, similarity_model="hand-made", warnings=["one", "two"])
    save_result(changed, tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {META_FILE}"))
    assert meta["qc"][0]["agreement"] is None and meta["qc"][0]["weight_share"] is None
    loaded = load_result(tmp_path)
    _assert_same(loaded, changed)
    assert math.isnan(loaded.qc[0].agreement) and math.isnan(loaded.qc[0].weight_share)
    assert loaded.qc[1] == result.qc[1]


def test_saving_again_replaces_the_result(result, tmp_path):
    save_result(result, tmp_path)
    fewer = refuse(result, keep=[0, 1])
    save_result(fewer, tmp_path)
    _assert_same(load_result(tmp_path), fewer)


def test_load_then_refuse(result, saved):
    loaded = load_result(saved)
    again = refuse(loaded)
    assert np.array_equal(again.labels.array, result.labels.array)
    assert np.array_equal(again.weights, result.weights) and np.array_equal(again.uncertainty, result.uncertainty)
    names = loaded.atlas_names
    subset, direct = refuse(loaded, keep=[names[2], names[1]], method="loa"), refuse(result, keep=[1, 2], method="loa")
    assert np.array_equal(subset.labels.array, direct.labels.array) and np.array_equal(subset.weights, direct.weights)


def test_missing_folder_and_files_are_refused(saved, tmp_path):
    with pytest.raises(InputError, match=r"no-such-folder: holds no saved result \(result.json is missing\)"):
        load_result(tmp_path / "no-such-folder")
    (tmp_path / META_FILE).write_bytes((saved / META_FILE).read_bytes())
    with pytest.raises(InputError, match=r": holds no saved result \(result.npz is missing\)"):
        load_result(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("{", r"result.json: cannot be read as JSON: Expecting property name"),
    ("\xff", r"result.json: cannot be read as JSON"),
    ('{"format": "something-else"}', r"result.json: is not a crossmodalmas result \(no 'format': 'crossmodalmas-result'\)"),
    ("[1, 2]", r"result.json: is not a crossmodalmas result"),
])
def test_damaged_or_foreign_json_is_refused(saved, tmp_path, text, message):
    (tmp_path / ARRAYS_FILE).write_bytes((saved / ARRAYS_FILE).read_bytes())
    (tmp_path / META_FILE).write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match=message):
        load_result(tmp_path)


def _copy_with(saved, folder, meta=None, arrays=None):
    data = json.loads((saved / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps(meta(data) if meta else data))
    if arrays is None:
        (folder / ARRAYS_FILE).write_bytes((saved / ARRAYS_FILE).read_bytes())
    else:
        with np.load(saved / ARRAYS_FILE) as stored:
            np.savez(folder / ARRAYS_FILE, **arrays(dict(stored)))


def test_damaged_or_inconsistent_contents_are_refused(saved, tmp_path):
    def without(key):
        return lambda data: {k: v for k, v in data.items() if k != key}

    _copy_with(saved, tmp_path, meta=without("qc"))
    with pytest.raises(InputError, match=r"the saved result is incomplete or damaged \(KeyError: 'qc'\)"):
        load_result(tmp_path)
    _copy_with(saved, tmp_path, meta=lambda data: {**data, "fusion": "best"})
    with pytest.raises(InputError, match=r"incomplete or damaged \(ValueError: 'best' is not a valid FusionMethod\)"):
        load_result(tmp_path)
    _copy_with(saved, tmp_path, arrays=without("weights"))
    with pytest.raises(InputError, match=r"incomplete or damaged \(KeyError: 'weights"):
        load_result(tmp_path)
    _copy_with(saved, tmp_path, meta=lambda data: {**data, "atlas_names": data["atlas_names"][:2]})
    shape = tuple(json.loads((saved / META_FILE).read_text())["working_grid"]["shape_kji"])
    with pytest.raises(InputError, match=rf"'warped_images' has shape \(3, {', '.join(map(str, shape))}\), expected "
                                         rf"\(2, {', '.join(map(str, shape))}\) \(2 atlases on the working grid\)"):
        load_result(tmp_path)


def test_an_archive_that_is_not_numpy_or_holds_objects_is_refused(saved, tmp_path):
    (tmp_path / META_FILE).write_bytes((saved / META_FILE).read_bytes())
    (tmp_path / ARRAYS_FILE).write_bytes(b"not a zip file")
    with pytest.raises(InputError, match=r"result.npz: cannot be read as a numpy archive"):
        load_result(tmp_path)
    _copy_with(saved, tmp_path, arrays=lambda arrays: {**arrays, "label_values": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(InputError, match=r"result.npz: cannot be read as a numpy archive: .*allow_pickle=False"):
        load_result(tmp_path)
