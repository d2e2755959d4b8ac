"""Label fusion: majority vote, non-local weighted vote, label-overlap weights (crossmodalmas.fusion)."""

import math

import pytest
import torch

from crossmodalmas import fusion as fusion_module
from crossmodalmas.fusion import (
    Fused,
    fuse,
    label_overlap_vote,
    majority_vote,
    non_local_weighted_vote,
    pairwise_overlap,
    patch_label_fusion,
)
from crossmodalmas.options import FusionMethod

SHAPE = (8, 8, 8)


def _random_labels(n, num_classes, shape=SHAPE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (n, 1, *shape), generator=generator)


def _cube(shape, start, size, value=1):
    labels = torch.zeros(shape, dtype=torch.int64)
    k, j, i = start
    labels[k:k + size, j:j + size, i:i + size] = value
    return labels


def _random_features(n, channels=4, shape=SHAPE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, channels, *shape), generator=generator)


def _check_normalised(fused: Fused, n, num_classes, shape=SHAPE):
    assert fused.probabilities.shape == (num_classes, *shape)
    assert fused.weights.shape == (n, *shape)
    assert fused.uncertainty.shape == shape
    assert fused.labels.shape == shape and fused.labels.dtype == torch.int64
    assert fused.probabilities.dtype == fused.weights.dtype == fused.uncertainty.dtype == torch.float32
    torch.testing.assert_close(fused.probabilities.sum(0), torch.ones(shape))
    torch.testing.assert_close(fused.weights.sum(0), torch.ones(shape))
    assert fused.uncertainty.min() >= 0 and fused.uncertainty.max() <= 1


def _run(method, labels, num_classes):
    features = _random_features(labels.shape[0] + 1, seed=3)
    runs = {
        "mv": lambda: majority_vote(labels, num_classes),
        "nlwv": lambda: non_local_weighted_vote(labels, num_classes, features[:1], features[1:]),
        "nlwv-no-search": lambda: non_local_weighted_vote(labels, num_classes, features[:1], features[1:],
                                                          search_radius=0),
        "loa": lambda: label_overlap_vote(labels, num_classes),
        "loa-local": lambda: label_overlap_vote(labels, num_classes, window=3),
    }
    return runs[method]()


# With a search window NLWV also counts the neighbours' labels (by design), so it is
# unanimous only without one.
@pytest.mark.parametrize("method", ["mv", "nlwv-no-search", "loa", "loa-local"])
def test_unanimous_atlases_give_their_label_with_zero_uncertainty(method):
    single = _random_labels(1, 4)
    labels = single.expand(3, -1, -1, -1, -1).clone()
    fused = _run(method, labels, 4)
    _check_normalised(fused, 3, 4)
    assert torch.equal(fused.labels, single[0, 0])
    torch.testing.assert_close(fused.uncertainty, torch.zeros(SHAPE))


@pytest.mark.parametrize("method", ["mv", "nlwv", "nlwv-no-search", "loa", "loa-local"])
def test_probabilities_and_weights_sum_to_one(method):
    labels = _random_labels(4, 5, seed=1)
    _check_normalised(_run(method, labels, 5), 4, 5)


def test_majority_vote_of_three_with_two_agreeing():
    agreed = _random_labels(1, 3, seed=2)[0]
    other = (agreed + 1) % 3
    fused = majority_vote(torch.stack([agreed, other, agreed]), 3)
    assert torch.equal(fused.labels, agreed[0])
    chosen = fused.probabilities.gather(0, agreed).squeeze(0)
    torch.testing.assert_close(chosen, torch.full(SHAPE, 2 / 3))
    torch.testing.assert_close(fused.weights, torch.full((3, *SHAPE), 1 / 3))
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(3)
    torch.testing.assert_close(fused.uncertainty, torch.full(SHAPE, entropy))


def test_nlwv_favours_the_atlas_whose_features_match_the_target():
    target = _random_features(1, seed=4)
    noise = 0.01 * _random_features(1, seed=5)
    atlas_features = torch.cat([target + noise, _random_features(1, seed=6)])
    good = _cube(SHAPE, (1, 1, 1), 4, value=1)
    bad = _cube(SHAPE, (3, 3, 3), 5, value=2)
    labels = torch.stack([good, bad]).unsqueeze(1)
    fused = non_local_weighted_vote(labels, 3, target, atlas_features)
    _check_normalised(fused, 2, 3)
    assert fused.weights[0].min() > 0.9
    disagree = good != bad
    assert disagree.sum() > 50
    assert torch.equal(fused.labels[disagree], good[disagree])


def test_nlwv_without_search_and_identical_features_is_majority_vote():
    labels = _random_labels(3, 4, seed=7)
    target = _random_features(1, seed=8)
    fused = non_local_weighted_vote(labels, 4, target, target.expand(3, -1, -1, -1, -1),
                                    patch_radius=1, search_radius=0)
    expected = majority_vote(labels, 4)
    torch.testing.assert_close(fused.weights, torch.full((3, *SHAPE), 1 / 3))
    torch.testing.assert_close(fused.probabilities, expected.probabilities)


def test_nlwv_does_not_wrap_around_the_border():
    labels = torch.zeros((2, 1, *SHAPE), dtype=torch.int64)
    labels[:, :, -1] = 1  # label 1 only on the last k slice
    features = torch.ones((3, 2, *SHAPE))
    fused = non_local_weighted_vote(labels, 2, features[:1], features[1:], search_radius=1)
    assert fused.probabilities[1, 0].max() == 0
    assert fused.probabilities[1, -1].min() > 0


def test_windows_larger_than_a_tiny_grid():
    labels = _random_labels(3, 3, shape=(2, 1, 3), seed=15)
    features = _random_features(4, shape=(2, 1, 3), seed=16)
    nlwv = non_local_weighted_vote(labels, 3, features[:1], features[1:], patch_radius=2, search_radius=1)
    _check_normalised(nlwv, 3, 3, (2, 1, 3))
    _check_normalised(label_overlap_vote(labels, 3, window=7), 3, 3, (2, 1, 3))


def test_nlwv_result_does_not_depend_on_chunk():
    labels = _random_labels(5, 3, seed=9)
    features = _random_features(6, seed=10)
    one = non_local_weighted_vote(labels, 3, features[:1], features[1:], chunk=1)
    all_at_once = non_local_weighted_vote(labels, 3, features[:1], features[1:], chunk=8)
    torch.testing.assert_close(one.probabilities, all_at_once.probabilities)
    torch.testing.assert_close(one.weights, all_at_once.weights)


def test_label_overlap_weights_match_hand_computed_dice():
    a = _cube(SHAPE, (0, 0, 0), 4)
    b = _cube(SHAPE, (2, 0, 0), 4)  # overlaps a in 32 of 64 voxels: Dice 0.5
    fused = label_overlap_vote(torch.stack([a, a, b]).unsqueeze(1), 2)
    # ō_a = (1 + 0.5) / 2 = 0.75, ō_b = (0.5 + 0.5) / 2 = 0.5; normalised over 0.75 + 0.75 + 0.5
    expected = torch.tensor([0.375, 0.375, 0.25]).view(3, 1, 1, 1).expand(3, *SHAPE)
    torch.testing.assert_close(fused.weights, expected)


def test_label_overlap_outlier_atlas_gets_the_lowest_weight():
    shape = (16, 16, 16)
    agreeing = [_cube(shape, (4 + d, 4, 4 + d), 6) for d in (0, 1, 0, 1)]
    outlier = _cube(shape, (9, 9, 9), 6, value=2)
    labels = torch.stack(agreeing + [outlier]).unsqueeze(1)
    fused = label_overlap_vote(labels, 3)
    _check_normalised(fused, 5, 3, shape)
    per_atlas = fused.weights[:, 0, 0, 0]
    assert per_atlas.argmin() == 4
    assert per_atlas[4] < per_atlas[:4].min()
    local = label_overlap_vote(labels, 3, window=5)
    _check_normalised(local, 5, 3, shape)
    assert local.weights[4, 10, 10, 10] < local.weights[:4, 10, 10, 10].min()


def test_local_label_overlap_with_a_window_covering_the_grid_equals_global():
    labels = _random_labels(4, 3, seed=14)
    local = label_overlap_vote(labels, 3, window=2 * SHAPE[0] + 1)
    torch.testing.assert_close(local.weights, label_overlap_vote(labels, 3).weights)


def test_label_overlap_single_atlas_has_weight_one():
    labels = _random_labels(1, 3, seed=11)
    fused = label_overlap_vote(labels, 3, window=3)
    torch.testing.assert_close(fused.weights, torch.ones((1, *SHAPE)))
    assert torch.equal(fused.labels, labels[0, 0])


@pytest.mark.parametrize("method", list(FusionMethod))
def test_fuse_dispatches(method):
    labels = _random_labels(3, 3, seed=12)
    features = _random_features(4, seed=13)
    logits = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(14))
    fused = fuse(method.value, labels, 3, features[:1], features[1:], similarity=logits)
    _check_normalised(fused, 3, 3)


def test_fuse_errors():
    labels = _random_labels(2, 3)
    with pytest.raises(ValueError, match=r"fuse\(\): 'method' must be one of 'mv', 'nlwv', 'plf', 'loa', 'loa-local', got 'staple'"):
        fuse("staple", labels, 3)
    with pytest.raises(ValueError, match=r"fuse\(\): method 'nlwv' .* needs 'target_features' and 'atlas_features'"):
        fuse(FusionMethod.NON_LOCAL_WEIGHTED_VOTE, labels, 3)
    with pytest.raises(ValueError, match=r"fuse\(\): method 'plf' .* needs the similarity network's logits 'similarity', got None"):
        fuse(FusionMethod.PATCH_LABEL_FUSION, labels, 3)


def test_plf_weights_are_the_softmax_of_the_logits_where_atlases_disagree():
    labels = torch.zeros((3, 1, 2, 2, 2), dtype=torch.int64)
    labels[0, 0, 0, 0, 0] = 1  # atlases disagree at one voxel only
    logits = torch.zeros((3, 2, 2, 2))
    logits[:, 0, 0, 0] = torch.tensor([2.0, 0.0, 0.0])
    fused = patch_label_fusion(labels, 2, logits)
    expected = torch.softmax(torch.tensor([2.0, 0.0, 0.0]), 0)
    torch.testing.assert_close(fused.weights[:, 0, 0, 0], expected)
    torch.testing.assert_close(fused.probabilities[1, 0, 0, 0], expected[0])  # 0.787: label 1 wins
    assert int(fused.labels[0, 0, 0]) == 1
    torch.testing.assert_close(fused.weights[:, 1, 1, 1], torch.full((3,), 1 / 3))  # decided voxels
    assert float(fused.uncertainty[1, 1, 1]) == 0.0 and float(fused.uncertainty[0, 0, 0]) > 0.5


def test_plf_reads_no_logit_where_atlases_agree():
    labels = _random_labels(1, 3, seed=15).repeat(4, 1, 1, 1, 1)
    labels[2, 0, :2] = (labels[2, 0, :2] + 1) % 3
    logits = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(16))
    poisoned = logits.clone()
    poisoned[:, 2:] = float("nan")  # atlases all agree from slice 2 on
    torch.testing.assert_close(patch_label_fusion(labels, 3, poisoned).probabilities,
                               patch_label_fusion(labels, 3, logits).probabilities)
    logits[:, 0] = float("inf")
    with pytest.raises(ValueError, match=r"patch_label_fusion\(\): 'logits' must be finite where the atlases disagree"):
        patch_label_fusion(labels, 3, logits)
    with pytest.raises(ValueError, match=r"patch_label_fusion\(\): 'logits' must be \(N, D, H, W\) = \(4, 8, 8, 8\), got \(3, 8, 8, 8\)"):
        patch_label_fusion(labels, 3, logits[:3])
    with pytest.raises(TypeError, match=r"patch_label_fusion\(\): 'logits' must be a float torch.Tensor, got torch.int64"):
        patch_label_fusion(labels, 3, labels[:, 0])


def test_pairwise_overlap_matches_dice_counted_by_hand():
    a = _cube(SHAPE, (0, 0, 0), 4)           # 64 voxels of label 1
    b = _cube(SHAPE, (0, 0, 2), 4)           # shifted: 32 shared
    c = _cube(SHAPE, (4, 4, 4), 2, value=2)  # label 2 only
    overlap = pairwise_overlap(torch.stack([a, b, c])[:, None], 3)
    torch.testing.assert_close(overlap[0, 1], torch.tensor(2 * 32 / 128))
    torch.testing.assert_close(overlap[0, 2], torch.tensor(0.0))  # labels 1 and 2 present, none shared
    torch.testing.assert_close(overlap, overlap.T)
    torch.testing.assert_close(torch.diagonal(overlap), torch.ones(3))


def test_disagreement_lists_the_voxels_where_atlases_differ():
    labels = torch.zeros((3, 1, 2, 2, 2), dtype=torch.int64)
    labels[1, 0, 1, 1, 1] = 2
    labels[2, 0, 0, 1, 0] = 1
    assert fusion_module.disagreement(labels).tolist() == [2, 7]


def test_label_errors():
    with pytest.raises(ValueError, match=r"majority_vote\(\): 'labels' must be \(N, 1, D, H, W\), got \(2, 8, 8, 8\)"):
        majority_vote(torch.zeros((2, *SHAPE), dtype=torch.int64), 2)
    with pytest.raises(ValueError, match=r"label_overlap_vote\(\): 'labels' holds no atlases \(N=0\)"):
        label_overlap_vote(torch.zeros((0, 1, *SHAPE), dtype=torch.int64), 2)
    with pytest.raises(TypeError, match=r"majority_vote\(\): 'labels' must be an integer tensor .*, got torch.float32"):
        majority_vote(torch.zeros((1, 1, *SHAPE)), 2)
    with pytest.raises(ValueError, match=r"majority_vote\(\): 'labels' must hold class indices in \[0, 2\), got values in \[0, 4\]"):
        majority_vote(_random_labels(2, 5), 2)
    with pytest.raises(ValueError, match=r"majority_vote\(\): 'num_classes' must be an int >= 1, got 0"):
        majority_vote(_random_labels(1, 1), 0)
    with pytest.raises(ValueError, match=r"label_overlap_vote\(\): 'window' must be None or an odd int >= 1 \(voxels\), got 4"):
        label_overlap_vote(_random_labels(2, 2), 2, window=4)


def test_nlwv_errors():
    labels = _random_labels(3, 2)
    target = _random_features(1, channels=12)
    atlas = _random_features(3, channels=12)
    with pytest.raises(ValueError, match=(
            r"non_local_weighted_vote\(\): 'atlas_features' must be \(N, F, D, H, W\) with N=3, F=12 "
            r"and D, H, W=\(8, 8, 8\), got \(2, 12, 8, 8, 8\)")):
        non_local_weighted_vote(labels, 2, target, atlas[:2])
    with pytest.raises(ValueError, match=(
            r"non_local_weighted_vote\(\): 'target_features' must be \(1, F, D, H, W\) with "
            r"D, H, W=\(8, 8, 8\), got \(1, 12, 8, 8, 7\)")):
        non_local_weighted_vote(labels, 2, target[..., :7], atlas)
    with pytest.raises(TypeError, match=r"non_local_weighted_vote\(\): 'atlas_features' must be a torch.Tensor, got list"):
        non_local_weighted_vote(labels, 2, target, [atlas])
    with pytest.raises(ValueError, match=r"non_local_weighted_vote\(\): 'search_radius' must be an int >= 0, got -1"):
        non_local_weighted_vote(labels, 2, target, atlas, search_radius=-1)
    with pytest.raises(ValueError, match=r"non_local_weighted_vote\(\): 'patch_radius' must be an int >= 0, got 1.5"):
        non_local_weighted_vote(labels, 2, target, atlas, patch_radius=1.5)
    with pytest.raises(ValueError, match=r"non_local_weighted_vote\(\): 'chunk' must be an int >= 1, got 0"):
        non_local_weighted_vote(labels, 2, target, atlas, chunk=0)


@pytest.mark.parametrize("method", list(FusionMethod))
def test_fusion_never_modifies_its_inputs(method):
    labels = _random_labels(3, 3, seed=21)
    features = _random_features(4, seed=22)
    logits = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(23))
    copies = [t.clone() for t in (labels, features, logits)]
    first = fuse(method, labels, 3, features[:1], features[1:], similarity=logits)
    second = fuse(method, labels, 3, features[:1], features[1:], similarity=logits)
    for before, after in zip(copies, (labels, features, logits)):
        assert torch.equal(before, after)
    torch.testing.assert_close(first.probabilities, second.probabilities)
