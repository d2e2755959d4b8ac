"""segment() end to end on tiny phantoms: grid contract, progress, cancel, selection, inputs untouched;
and, where torch sees a GPU, CUDA out-of-memory for real (a capped process) answered as documented."""

import threading

import numpy as np
import pytest
import torch

from crossmodalmas.atlases import Atlas
from crossmodalmas.errors import CancelledError, InputError
from crossmodalmas.metrics import dice
from crossmodalmas.options import SegmentOptions
from crossmodalmas.phantoms import heart_tissue_map, make_grid, random_heart_anatomy, render, tissue_to_labels
from crossmodalmas.pipeline import segment
from crossmodalmas.volume import LabelMap

FAST = dict(refine_iterations=8, max_working_voxels=32 ** 3)


def _case(seed, modality, shape=(36, 40, 40), spacing=(2.6, 2.6, 2.6), rotation=(0.0, 0.0, 0.0)):
    rng = np.random.default_rng(seed)
    anatomy = random_heart_anatomy(rng)
    grid = make_grid(shape, spacing, rotation_deg=rotation)
    tissue = heart_tissue_map(anatomy, grid)
    return render(tissue, grid, modality, rng), tissue_to_labels(tissue, grid)


@pytest.fixture(scope="module")
def case():
    target, truth = _case(0, "ct", shape=(30, 44, 42), spacing=(2.4, 2.4, 3.0), rotation=(0.0, 0.0, 8.0))
    atlases = [Atlas(f"mr{i}", *_case(i, "mr")) for i in (1, 2)]
    return target, truth, atlases


def test_segment_cross_modality_on_the_target_grid(case):
    target, truth, atlases = case
    before = [a.image.array.copy() for a in atlases] + [target.array.copy()]
    messages = []
    result = segment(target, atlases, SegmentOptions(**FAST), progress=lambda f, m: messages.append((f, m)))
    assert result.labels.array.shape == target.array.shape
    assert np.array_equal(result.labels.ijk_to_ras, target.ijk_to_ras)
    assert set(np.unique(result.labels.array)) <= {0, 205, 420, 500, 550, 600, 820, 850}
    assert np.mean(list(dice(result.labels.array, truth.array).values())) > 0.6
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("atlas mr1" in m for _, m in messages) and any("atlas mr2" in m for _, m in messages)
    assert result.warped_images.shape == (2,) + result.working_grid.shape
    assert np.allclose(result.weights.sum(0), 1.0, atol=1e-4)
    assert all(q.folding_percent < 0.5 for q in result.qc)
    for original, now in zip(before, [a.image.array for a in atlases] + [target.array]):
        assert np.array_equal(original, now)


def test_segment_cancel_raises_and_select_keeps_k(case):
    target, _, atlases = case
    calls = []
    with pytest.raises(CancelledError):
        segment(target, atlases, SegmentOptions(**FAST), cancel=lambda: calls.append(1) or len(calls) > 4)
    result = segment(target, atlases, SegmentOptions(select=1, fusion="mv", **FAST))
    assert len(result.atlas_names) == 1 and len(result.qc) == 1


def test_segment_refuses_roi_outside_target_and_no_atlas(case):
    target, _, atlases = case
    with pytest.raises(InputError, match=r"--roi: the region .* lies outside the target"):
        segment(target, atlases, SegmentOptions(roi_ras=(900, 900, 900, 950, 950, 950), **FAST))
    with pytest.raises(InputError, match=r"atlases: no atlas given"):
        segment(target, [], SegmentOptions(**FAST))


def _align_all(target, atlases, workers, monkeypatch):
    from crossmodalmas import pipeline

    monkeypatch.setattr(pipeline, "MAX_ALIGN_WORKERS", workers)
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 8)
    messages = []
    run = pipeline._Run(lambda f, m: messages.append(m), None)
    run.step("affine", "affine alignment")
    aligned, unknown = pipeline._align_all(target, atlases, 0, run)
    return aligned, unknown, messages


def test_atlases_aligned_side_by_side_get_the_transforms_they_get_one_at_a_time(case, monkeypatch):
    target, _, atlases = case
    atlases = atlases + [Atlas("mr3", *_case(3, "mr"))]
    alone, unknown_alone, messages_alone = _align_all(target, atlases, 1, monkeypatch)
    side_by_side, unknown, messages = _align_all(target, atlases, 3, monkeypatch)
    assert [a.name for a in side_by_side] == ["mr1", "mr2", "mr3"]
    for one, other in zip(alone, side_by_side):
        assert one.transform.GetParameters() == other.transform.GetParameters()
        assert one.transform.GetFixedParameters() == other.transform.GetFixedParameters()
    assert np.array_equal(unknown, unknown_alone)
    assert messages == messages_alone


def test_each_atlas_in_work_gets_its_share_of_the_cores_for_its_fits(case, monkeypatch):
    """Few atlases leave cores idle: they go to each atlas's own fits (cores // atlases in work)."""
    from crossmodalmas import pipeline

    target, _, atlases = case
    shares = []

    class Recording(pipeline.AffineAligner):
        def __init__(self, target, fit_workers=None):
            shares.append(fit_workers)
            super().__init__(target, fit_workers)

    monkeypatch.setattr(pipeline, "AffineAligner", Recording)
    _align_all(target, atlases, 4, monkeypatch)  # 2 atlases on 8 cores
    _align_all(target, atlases[:1], 4, monkeypatch)
    _align_all(target, atlases, 1, monkeypatch)
    assert shares == [4, 8, 8]


def test_as_many_atlases_are_aligned_at_once_as_their_share_of_the_free_memory_holds(case, tmp_path, monkeypatch):
    """Up to one per core and MAX_ALIGN_WORKERS; fewer where the biggest atlas's bytes (by its
    file's header for one on disk) do not fit the free memory's share; unchanged where the
    memory or every size is unknown."""
    from crossmodalmas import pipeline
    from crossmodalmas.atlases import AtlasFiles
    from crossmodalmas.volume import Volume, write_volume

    _, _, atlases = case
    voxels = atlases[0].image.array.size
    on_disk = tmp_path / "big.nii.gz"
    big = np.zeros((60, 50, 40), np.float32)  # the biggest
    write_volume(Volume(big, np.eye(4)), on_disk)
    sources = [*atlases, AtlasFiles(on_disk, tmp_path / "big_seg.nii.gz")]
    per_file = big.size * pipeline._ALIGN_BYTES_PER_VOXEL["file"] / pipeline._ALIGN_MEMORY_SHARE
    monkeypatch.setattr(pipeline, "available_memory", lambda: None)
    assert pipeline._align_workers(sources, 8) == 3
    assert pipeline._align_workers(sources, 2) == 2
    monkeypatch.setattr(pipeline, "available_memory", lambda: int(2.5 * per_file))
    assert pipeline._align_workers(sources, 8) == 2
    monkeypatch.setattr(pipeline, "available_memory", lambda: int(0.5 * per_file))
    assert pipeline._align_workers(sources, 8) == 1  # never none
    per_atlas = voxels * pipeline._ALIGN_BYTES_PER_VOXEL["memory"] / pipeline._ALIGN_MEMORY_SHARE
    monkeypatch.setattr(pipeline, "available_memory", lambda: int(1.5 * per_atlas))
    assert pipeline._align_workers(atlases, 8) == 1
    unreadable = [AtlasFiles(tmp_path / "missing.nii.gz", tmp_path / "missing_seg.nii.gz")] * 3
    assert pipeline._align_workers(unreadable, 8) == 3  # no size known: its error comes when it is read


def test_a_bad_atlas_among_side_by_side_ones_is_named_in_list_order(case, monkeypatch):
    target, _, atlases = case
    bad = Atlas("small", atlases[0].image, LabelMap(np.zeros((2, 2, 2), np.int32), atlases[0].labels.ijk_to_ras))
    with pytest.raises(InputError, match=r"atlas small labels"):
        _align_all(target, [atlases[0], bad, atlases[1]], 3, monkeypatch)


def test_cancel_is_polled_while_an_atlas_is_aligned(case, monkeypatch):
    from crossmodalmas import pipeline

    target, _, atlases = case
    holding, release = threading.Event(), threading.Event()
    align_one = pipeline._align_one

    def held(*args):
        holding.set()
        release.wait(10)  # a long alignment; without polling, cancel would wait this out
        return align_one(*args)

    monkeypatch.setattr(pipeline, "_align_one", held)
    polled_while_held = []

    def cancel():
        if holding.is_set() and not release.is_set():
            polled_while_held.append(1)
            release.set()  # the held atlases finish, as a real alignment would
            return True
        return False

    with pytest.raises(CancelledError):
        segment(target, atlases, SegmentOptions(**FAST), cancel=cancel)
    assert polled_while_held


def needs_cuda(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


CUDA = dict(refine_iterations=8, max_working_voxels=64 ** 3, device="cuda")


@pytest.fixture(scope="module")
def cuda_case():
    """A target and six atlases big enough that each atlas takes tens of MB on CUDA."""
    target, _ = _case(0, "ct", shape=(64, 72, 72), spacing=(2.0, 2.0, 2.0))
    atlases = [Atlas(f"mr{i}", *_case(i, "mr", shape=(60, 70, 70), spacing=(2.0, 2.0, 2.0))) for i in range(1, 7)]
    return target, atlases


@pytest.fixture
def cuda_cap():
    """Caps this process's CUDA memory at the bytes given (out-of-memory beyond, as on a smaller
    card); lifted afterwards."""
    total = torch.cuda.get_device_properties(0).total_memory

    def cap(nbytes: int) -> None:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, nbytes / total))

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def _on_cuda(target, atlases, **options):
    """The result on CUDA and the run's peak CUDA memory allocated (bytes; a cap below it must
    fail: the allocator holds at least what is allocated)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = segment(target, atlases, SegmentOptions(**{**CUDA, **options}))
    return result, torch.cuda.max_memory_allocated()


def _fallbacks_said(result) -> list[str]:
    """The out-of-memory fallbacks the result reports. It says it ended on the CPU iff a step other
    than the network pass moved there (the pass's fields go back to the run's device)."""
    said = [w for w in result.warnings if "CUDA out of memory" in w]
    moved = any(w.endswith("running on the CPU") and not w.startswith("registration network") for w in said)
    assert result.device == ("cpu" if moved else "cuda"), (result.device, result.warnings)
    return said


@needs_cuda
def test_cuda_out_of_memory_for_real_retries_fewer_atlases_and_segments_the_same(cuda_case, cuda_cap):
    target, atlases = cuda_case
    _, one = _on_cuda(target, atlases[:1])
    free, every = _on_cuda(target, atlases)
    assert every > 1.5 * one, f"peak CUDA memory {every} B with 6 atlases, {one} B with one: no room for a cap"
    cuda_cap((one + every) // 2)
    capped, _ = _on_cuda(target, atlases)
    assert any("CUDA out of memory; retrying" in w for w in _fallbacks_said(capped)), capped.warnings
    assert np.mean(capped.labels.array == free.labels.array) > 0.999


@needs_cuda
def test_cuda_out_of_memory_for_real_where_nothing_fits_ends_on_the_cpu_and_says_so(cuda_case, cuda_cap):
    target, atlases = cuda_case
    _, one = _on_cuda(target, atlases[:2])
    on_cpu = segment(target, atlases[:2], SegmentOptions(**{**CUDA, "device": "cpu"}))
    cuda_cap(one // 4)
    capped, _ = _on_cuda(target, atlases[:2])
    assert _fallbacks_said(capped) and capped.device == "cpu"
    assert np.mean(capped.labels.array == on_cpu.labels.array) > 0.99
