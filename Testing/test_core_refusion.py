"""crossmodalmas.refusion: fusing a result again (another method, a subset of the atlases)
without registering again, exactly as the pipeline's own fusion step would."""

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from crossmodalmas.errors import InputError
from crossmodalmas.fusion import fuse, patch_label_fusion
from crossmodalmas.options import FusionMethod
from crossmodalmas.preprocess import resample_probabilities
from crossmodalmas.refusion import class_dtype, fused_fields, refuse
from crossmodalmas.result_io import RESULT_ARRAYS

ARRAYS = RESULT_ARRAYS


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result


def _snapshot(result):
    return {**{name: getattr(result, name).copy() for name in ARRAYS}, "labels": result.labels.array.copy(),
            "names": list(result.atlas_names), "qc": copy.deepcopy(result.qc)}


def _same_fusion(a, b):
    assert np.array_equal(a.labels.array, b.labels.array)
    assert np.array_equal(a.labels.ijk_to_ras, b.labels.ijk_to_ras)
    assert np.array_equal(a.weights, b.weights)
    assert np.array_equal(a.uncertainty, b.uncertainty)
    assert a.qc == b.qc and a.fusion is b.fusion and a.atlas_names == b.atlas_names


def _fresh(result, method, keep, **arguments):
    """A fusion of the kept atlases' stored classes by crossmodalmas.fusion directly, and its
    labels on the target's grid."""
    classes = torch.from_numpy(result.warped_classes[keep].astype(np.int64))[:, None]
    fused = fuse(method, classes, len(result.label_values), **arguments)
    labels = resample_probabilities(fused.probabilities.numpy(), result.working_grid, result.labels.grid)
    return fused, result.label_values[labels]


def test_the_fixture_is_a_three_atlas_majority_vote(result):
    assert sorted(result.atlas_names) == ["mr4", "mr6", "mr9"]
    assert result.fusion is FusionMethod.MAJORITY_VOTE and result.similarity is None
    assert result.warped_classes.dtype == np.uint8 == class_dtype(len(result.label_values))
    assert (result.warped_classes != result.warped_classes[:1]).any()  # the atlases disagree somewhere


def test_every_atlas_and_the_same_method_give_the_result_again(result):
    again = refuse(result)
    _same_fusion(again, result)
    assert again.timings == {} and again.warnings == result.warnings
    shuffled = refuse(result, keep=list(reversed(result.atlas_names)))  # any order: kept in the result's
    _same_fusion(shuffled, result)
    _same_fusion(refuse(result, keep=[2, 0, 1], method="mv"), result)


@pytest.mark.parametrize("by_name", [True, False], ids=["by-name", "by-index"])
def test_leaving_an_atlas_out_is_a_fresh_fusion_of_the_others(result, by_name):
    names = result.atlas_names
    keep = [names[0], names[2]] if by_name else [0, 2]
    refused = refuse(result, keep=keep)
    assert refused.atlas_names == [names[0], names[2]]
    assert np.array_equal(refused.warped_images, result.warped_images[[0, 2]])
    assert np.array_equal(refused.warped_classes, result.warped_classes[[0, 2]])
    assert [q.name for q in refused.qc] == [names[0], names[2]]
    for new, old in zip(refused.qc, [result.qc[0], result.qc[2]]):  # registration figures kept, fusion ones new
        assert replace(new, weight_share=old.weight_share, agreement=old.agreement) == old
    fused, labels = _fresh(result, "mv", [0, 2])
    assert np.array_equal(refused.labels.array, labels)
    assert np.array_equal(refused.weights, fused.weights.numpy())
    assert np.array_equal(refused.uncertainty, fused.uncertainty.numpy())
    assert refused.weights.shape == (2, *result.working_grid.shape)
    assert np.any(refused.labels.array != result.labels.array), "leaving an atlas out changed nothing"
    # by name and by index agree
    _same_fusion(refused, refuse(result, keep=[names[2], names[0]]))


def test_a_method_switch_and_back_returns_the_original(result):
    loa = refuse(result, method="loa")
    assert loa.fusion is FusionMethod.LABEL_OVERLAP
    fused, labels = _fresh(result, "loa", [0, 1, 2])
    assert np.array_equal(loa.labels.array, labels) and np.array_equal(loa.weights, fused.weights.numpy())
    assert not np.array_equal(loa.weights, result.weights)
    back = refuse(loa, method=FusionMethod.MAJORITY_VOTE)
    _same_fusion(back, result)
    for name in ARRAYS:
        assert np.array_equal(getattr(back, name), getattr(result, name)), name


def test_non_local_weighted_vote_refusion(result):
    nlwv = refuse(result, keep=[1, 2], method="nlwv")
    assert nlwv.fusion is FusionMethod.NON_LOCAL_WEIGHTED_VOTE and nlwv.atlas_names == result.atlas_names[1:]
    np.testing.assert_allclose(nlwv.weights.sum(0), 1.0, atol=1e-5)
    assert not np.array_equal(nlwv.weights, refuse(result, keep=[1, 2]).weights)  # per-voxel, not 1/2
    fresh = fused_fields("nlwv", result.working_grid, result.labels.grid, result.label_values, result.target_image,
                         result.warped_images[1:], result.warped_classes[1:], result.qc[1:], "cpu")
    assert np.array_equal(nlwv.labels.array, fresh["labels"].array)
    assert np.array_equal(nlwv.weights, fresh["weights"])
    assert nlwv.similarity is None and nlwv.similarity_model is None


@pytest.mark.parametrize("keep, message", [
    (["nope"], r"refuse\(\): atlas 'nope' is not in this result \(atlases: {names}\)"),
    ([], r"refuse\(\): 'keep' selects no atlas; at least one is needed"),
    ([0, "{first}"], r"refuse\(\): 'keep' names an atlas twice: \[0, '{first}'\]"),
    ([1, 1], r"refuse\(\): 'keep' names an atlas twice: \[1, 1\]"),
    ([3], r"refuse\(\): 'keep' must hold atlas names or indices in \[0, 3\), got 3"),
    ([-1], r"refuse\(\): 'keep' must hold atlas names or indices in \[0, 3\), got -1"),
    ([True], r"refuse\(\): 'keep' must hold atlas names or indices in \[0, 3\), got True"),
    ([1.0], r"refuse\(\): 'keep' must hold atlas names or indices in \[0, 3\), got 1.0"),
])
def test_bad_keeps_are_refused(result, keep, message):
    first = result.atlas_names[0]
    keep = [first if item == "{first}" else item for item in keep]
    with pytest.raises(InputError, match=message.format(names=", ".join(result.atlas_names), first=first)):
        refuse(result, keep=keep)


def test_an_unknown_method_is_refused(result):
    with pytest.raises(InputError, match=r"refuse\(\): 'method' must be one of mv, nlwv, plf, loa, loa-local, "
                                         r"got 'vote'"):
        refuse(result, method="vote")


def test_numpy_indices_are_accepted(result):
    _same_fusion(refuse(result, keep=np.array([0, 2])), refuse(result, keep=[0, 2]))


def test_the_input_result_is_not_modified(result):
    before = _snapshot(result)
    refuse(result, keep=[0, 1], method="loa")
    refuse(result, method="nlwv")
    refuse(replace(result, similarity=np.zeros_like(result.weights), similarity_model="hand-made"), method="plf")
    after = _snapshot(result)
    for name, value in before.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, after[name]) and value.dtype == after[name].dtype, name
        else:
            assert value == after[name], name
    assert result.fusion is FusionMethod.MAJORITY_VOTE and result.similarity is None


def _logits(result, seed=0):
    """Hand-made similarity logits (no similarity network needed)."""
    return np.random.default_rng(seed).normal(size=result.weights.shape).astype(np.float32)


def test_plf_uses_the_logits_it_is_given(result):
    logits = _logits(result)
    fields = fused_fields("plf", result.working_grid, result.labels.grid, result.label_values, result.target_image,
                          result.warped_images, result.warped_classes, result.qc, "cpu", similarity=logits,
                          similarity_model="hand-made")
    assert fields["fusion"] is FusionMethod.PATCH_LABEL_FUSION and fields["similarity_model"] == "hand-made"
    assert np.array_equal(fields["similarity"], logits)
    classes = torch.from_numpy(result.warped_classes.astype(np.int64))[:, None]
    expected = patch_label_fusion(classes, len(result.label_values), torch.from_numpy(logits))
    assert np.array_equal(fields["weights"], expected.weights.numpy())
    labels = resample_probabilities(expected.probabilities.numpy(), result.working_grid, result.labels.grid)
    assert np.array_equal(fields["labels"].array, result.label_values[labels])
    # the logits do decide: other logits, other weights
    other = fused_fields("plf", result.working_grid, result.labels.grid, result.label_values, result.target_image,
                         result.warped_images, result.warped_classes, result.qc, "cpu",
                         similarity=_logits(result, seed=1))
    assert not np.array_equal(other["weights"], fields["weights"])


def test_plf_without_logits_needs_a_similarity_model(result):
    with pytest.raises(InputError, match=r"^--similarity-model no-such-net: no such similarity model"):
        fused_fields("plf", result.working_grid, result.labels.grid, result.label_values, result.target_image,
                     result.warped_images, result.warped_classes, result.qc, "cpu", similarity_model="no-such-net")
    with pytest.raises(InputError, match=r"no such similarity model"):
        refuse(result, method="plf", similarity_model="no-such-net")


def test_refusion_keeps_the_similarity_cache_across_methods(result):
    """A result whose logits are cached: PLF reads them (the named model does not exist, so a
    network pass would fail), other methods carry them along, and PLF comes back exactly."""
    logits = _logits(result)
    cached = replace(result, similarity=logits, similarity_model="hand-made")
    plf = refuse(cached, method="plf")
    assert plf.fusion is FusionMethod.PATCH_LABEL_FUSION and plf.similarity_model == "hand-made"
    assert np.array_equal(plf.similarity, logits)
    mv = refuse(plf, method="mv")
    _same_fusion(mv, result)
    assert np.array_equal(mv.similarity, logits) and mv.similarity_model == "hand-made"
    again = refuse(mv, method="plf")
    _same_fusion(again, plf)
    subset = refuse(mv, keep=[0, 2], method="plf")
    assert np.array_equal(subset.similarity, logits[[0, 2]])
    classes = torch.from_numpy(result.warped_classes[[0, 2]].astype(np.int64))[:, None]
    expected = patch_label_fusion(classes, len(result.label_values), torch.from_numpy(logits[[0, 2]]))
    assert np.array_equal(subset.weights, expected.weights.numpy())
    assert not math.isnan(subset.qc[0].weight_share)


def test_cached_logits_serve_their_own_network_and_another_is_computed_afresh(result):
    cached = replace(result, similarity=_logits(result), similarity_model="hand-made")
    same = refuse(cached, method="plf", similarity_model="hand-made")
    assert np.array_equal(same.similarity, cached.similarity) and same.similarity_model == "hand-made"
    with pytest.raises(InputError, match=r"^--similarity-model another-net: no such similarity model"):
        refuse(cached, method="plf", similarity_model="another-net")  # not the cache's network: computed

def test_cuda_out_of_memory_fuses_again_on_the_cpu_and_says_so(result, monkeypatch):
    """``device="cuda"`` that runs out of memory: the fusion runs again on the CPU, gives what a
    CPU re-fusion gives, and the new result's warnings (not the first result's) say so."""
    from crossmodalmas import refusion

    on_cpu, before = refuse(result, keep=["mr9", "mr4"]), list(result.warnings)
    real, tried = refusion.fused_fields, []

    def fused_fields(*args):
        tried.append(torch.device(args[8]).type)
        if tried[-1] == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args)

    monkeypatch.setattr(refusion, "fused_fields", fused_fields)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with pytest.warns(UserWarning, match="re-fusion: CUDA out of memory; running on the CPU"):
        again = refuse(result, keep=["mr9", "mr4"], device=torch.device("cuda"))
    assert tried == ["cuda", "cpu"]
    _same_fusion(again, on_cpu)
    assert again.warnings == before + ["re-fusion: CUDA out of memory; running on the CPU"]
    assert result.warnings == before


def test_the_device_is_resolved_as_a_run_resolves_it_and_a_bad_one_named(result, monkeypatch):
    _same_fusion(refuse(result, device="auto" if not torch.cuda.is_available() else "cpu"), result)
    with pytest.raises(InputError, match=r"refuse\(\): 'device' must be one of auto, cpu, cuda or a torch device, "
                                         r"got 'gpu'"):
        refuse(result, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="torch sees no CUDA device on this machine"):
        refuse(result, device="cuda")
