"""crossmodalmas.atlas_warping: the deformable step one atlas at a time on the CPU gives what
one batch of every atlas gives; each chunk is registered, warped and judged on its own; CUDA
out-of-memory halves the chunk, then goes on on the CPU, and says so."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossmodalmas import atlas_warping, registration_engine
from crossmodalmas.atlas_warping import AtlasesOnGrid, deform_atlases
from crossmodalmas.errors import CancelledError
from crossmodalmas.features import mind_ssc
from crossmodalmas.phantoms import make_grid

SHAPE = (14, 15, 16)
GRID = make_grid(SHAPE, (2.0, 2.0, 2.0))


def _smooth(generator, n):
    noise = torch.rand((n, 1, *SHAPE), generator=generator)
    return F.avg_pool3d(noise, 5, stride=1, padding=2, count_include_pad=False)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(7)
    target, images = _smooth(g, 1), _smooth(g, 3)
    classes = (images[:, 0] > images.mean()).numpy().astype(np.uint8) + (images[:, 0] > 0.6).numpy()
    inside = np.ones((3, *SHAPE), bool)
    inside[1, :5] = False  # the second atlas covers part of the grid
    images[1, 0, :5] = 0.0
    atlases = AtlasesOnGrid(["a", "b", "c"], images[:, 0].numpy(), classes.astype(np.uint8), inside)
    return target, mind_ssc(target), atlases


def _deform(inputs, chunk, monkeypatch, progress=None):
    monkeypatch.setattr(registration_engine, "CPU_CHUNK", chunk)
    target, features, atlases = inputs
    return deform_atlases(None, target, features, atlases, GRID, 3, (4, 0.01),
                          progress=progress or (lambda f, which: None), cancel=lambda: False, warn=pytest.fail)


def test_one_atlas_at_a_time_gives_what_one_batch_gives(inputs, monkeypatch):
    alone, together = _deform(inputs, 1, monkeypatch), _deform(inputs, 3, monkeypatch)
    assert np.allclose(alone.images, together.images, atol=1e-5)
    assert np.array_equal(alone.classes, together.classes)
    for a, b in zip(alone.qc, together.qc):
        assert a.name == b.name
        assert a.similarity_after == pytest.approx(b.similarity_after, abs=1e-5)
        assert a.inverse_consistency_mm == pytest.approx(b.inverse_consistency_mm, abs=1e-4)


def test_each_chunk_is_registered_on_its_own_with_its_own_support(inputs, monkeypatch):
    seen = []
    real = atlas_warping.deformable_registration

    def spy(model, target, images, target_features, features, *args, support=None, **kwargs):
        seen.append((images.shape[0], features.shape[0], None if support is None else support.shape[0]))
        return real(model, target, images, target_features, features, *args, support=support, **kwargs)

    monkeypatch.setattr(atlas_warping, "deformable_registration", spy)
    _deform(inputs, 1, monkeypatch)
    assert seen == [(1, 1, None), (1, 1, 1), (1, 1, None)]  # only the second atlas has a field of view to keep to


def test_the_warped_atlases_keep_their_order_dtype_and_coverage(inputs, monkeypatch):
    reported, said = [], []
    warped = _deform(inputs, 1, monkeypatch, lambda f, which: reported.append(f) or said.append(which))
    atlases = inputs[2]
    assert warped.images.shape == warped.classes.shape == (3, *SHAPE)
    assert warped.images.dtype == np.float32 and warped.classes.dtype == np.uint8
    assert [item.name for item in warped.qc] == ["a", "b", "c"]
    assert [item.coverage for item in warped.qc] == pytest.approx([1.0, 1 - 5 / 14, 1.0])
    assert set(np.unique(warped.classes)) <= {0, 1, 2}
    assert reported == sorted(reported) and reported[-1] == pytest.approx(1.0)
    assert sorted(set(said)) == ["atlas a (1 of 3)", "atlas b (2 of 3)", "atlas c (3 of 3)"]
    assert atlases.classes.dtype == np.uint8 and atlases.images[1, :5].max() == 0.0  # inputs untouched


def test_the_progress_names_the_atlases_in_work():
    names = ["a", "b", "c", "d"]
    assert atlas_warping._in_work(names, slice(2, 3)) == "atlas c (3 of 4)"
    assert atlas_warping._in_work(names, slice(1, 3)) == "atlases 2-3 of 4"


def test_a_cancel_between_chunks_stops_before_the_next_atlas(inputs, monkeypatch):
    monkeypatch.setattr(registration_engine, "CPU_CHUNK", 1)
    done, real = [], atlas_warping._deform_chunk
    monkeypatch.setattr(atlas_warping, "_deform_chunk", lambda *args: done.append(args[4]) or real(*args))
    target, features, atlases = inputs
    with pytest.raises(CancelledError, match="segmentation cancelled"):
        deform_atlases(None, target, features, atlases, GRID, 3, (0, 0.01), progress=lambda f, which: None,
                       cancel=lambda: len(done) == 1, warn=pytest.fail)  # no refinement: nothing inside polls
    assert done == [slice(0, 1)]  # the first atlas done, no other begun


def _fake_cuda(monkeypatch, fits):
    """As on CUDA: every atlas in one chunk, and out-of-memory for each chunk size ``fits``
    refuses, until the step moves to the CPU. Returns the chunk sizes tried and the moves."""
    sizes, moved = [], []
    real_chunk, real_on_cpu = atlas_warping._deform_chunk, atlas_warping._on_cpu

    def deform_chunk(model, target, features, atlases, chunk, *args):
        sizes.append(chunk.stop - chunk.start)
        if not moved and not fits(chunk.stop - chunk.start):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_chunk(model, target, features, atlases, chunk, *args)

    monkeypatch.setattr(atlas_warping, "_deform_chunk", deform_chunk)
    monkeypatch.setattr(atlas_warping, "_on_cpu", lambda *args: moved.append(True) or real_on_cpu(*args))
    monkeypatch.setattr(atlas_warping, "atlases_per_pass", lambda count, device: 1 if moved else count)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return sizes, moved


def _deform_reporting(inputs):
    target, features, atlases = inputs
    warnings, reported = [], []
    warped = deform_atlases(None, target, features, atlases, GRID, 3, (4, 0.01),
                            progress=lambda f, which: reported.append((f, which)), cancel=lambda: False,
                            warn=warnings.append)
    fractions = [f for f, _ in reported]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)  # a retry never goes back
    return warped, {which for _, which in reported}, warnings


def test_cuda_out_of_memory_halves_the_chunk_and_says_so(inputs, monkeypatch):
    plain = _deform(inputs, 1, monkeypatch)
    sizes, moved = _fake_cuda(monkeypatch, fits=lambda size: size == 1)
    warped, said, warnings = _deform_reporting(inputs)
    assert sizes == [3, 1, 1, 1] and not moved
    assert said == {"atlas a (1 of 3)", "atlas b (2 of 3)", "atlas c (3 of 3)"}  # the failed chunk said nothing
    assert warnings == ["deformable step: CUDA out of memory; retrying 1 atlas(es) at a time"]
    assert np.array_equal(warped.classes, plain.classes) and np.allclose(warped.images, plain.images, atol=1e-6)
    assert [item.name for item in warped.qc] == ["a", "b", "c"]


def test_cuda_out_of_memory_with_one_atlas_goes_on_on_the_cpu(inputs, monkeypatch):
    sizes, moved = _fake_cuda(monkeypatch, fits=lambda size: False)
    warped, _, warnings = _deform_reporting(inputs)
    assert sizes == [3, 1, 1, 1, 1] and moved == [True]  # the first atlas tried twice on "CUDA", then all on the CPU
    assert warnings == ["deformable step: CUDA out of memory; retrying 1 atlas(es) at a time",
                        "deformable step: CUDA out of memory with one atlas; running on the CPU"]
    assert warped.device == torch.device("cpu") and [item.name for item in warped.qc] == ["a", "b", "c"]
