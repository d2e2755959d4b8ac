"""crossmodalmas.nets.similarity: the similarity network's shapes, receptive field, logits and refusals."""

import pytest
import torch

from crossmodalmas.nets import build_network
from crossmodalmas.nets.similarity import (
    _MIN_SIZE,
    HALO,
    RECEPTIVE_FIELD,
    SimilarityNet,
    SimilarityNetConfig,
    embedding_distance,
)

SMALL = dict(channels=(4, 8, 8, 8), embedding=4)
IMAGE = dict(input_features="image", descriptor_skip=False)  # the paper's image input, no MIND-SSC anywhere
MIND_SKIP = 12  # the descriptor skip path appends the 12 patch-averaged MIND-SSC descriptors to the embedding


def _images(shape, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, *shape), generator=g)


def _net(seed=0, **changes):
    torch.manual_seed(seed)
    return SimilarityNet(**{**SMALL, **changes}).eval()


def _changed(net, image, voxel):
    """Bool map ``(D, H, W)`` of the voxels whose embedding changes when ``voxel`` of ``image`` changes."""
    bumped = image.clone()
    bumped[(0, 0, *voxel)] += 1.0
    with torch.no_grad():
        return (net.embed_target(bumped) != net.embed_target(image)).any(dim=1)[0]


def _chebyshev_reach(changed, voxel):
    positions = torch.nonzero(changed)
    return int((positions - torch.tensor(voxel)).abs().amax(dim=1).max())


VARIANTS = {"image": IMAGE, "mind_ssc": dict(input_features="mind_ssc", descriptor_skip=False),
            "mind_ssc+skip": dict(input_features="mind_ssc", descriptor_skip=True)}
SMALL_GRIDS = [(9, 10, 11), (8, 8, 8), (1, 2, 3)]
SKIP_GRIDS = [(13, 14, 15), (12, 12, 12)]  # the skip path's 7³ pooling needs 7 half-resolution voxels


@pytest.mark.parametrize("variant, shape", [(v, s) for v in ("image", "mind_ssc") for s in SMALL_GRIDS]
                         + [("mind_ssc+skip", s) for s in SKIP_GRIDS])
def test_embeddings_and_logits_have_one_value_per_voxel(variant, shape):
    net = _net(**VARIANTS[variant])
    target, atlases = _images(shape), _images(shape, n=3, seed=1)
    with torch.no_grad():
        query, support = net.embed_target(target), net.embed_atlas(atlases)
        logits = net.logits(target, atlases)
    channels = 4 + (MIND_SKIP if net.config.descriptor_skip else 0)
    assert query.shape == (1, channels, *shape) and support.shape == (3, channels, *shape)
    assert logits.shape == (3, *shape)
    torch.testing.assert_close(logits, -embedding_distance(query, support), rtol=0, atol=0)
    assert torch.equal(net(target, atlases), logits)
    assert (logits < 0).all()  # a distance, with the epsilon that keeps its gradient finite


@pytest.mark.parametrize("shape", [(11, 40, 40), (8, 8, 8)])
def test_the_skip_path_takes_small_grids(shape):
    with torch.no_grad():
        assert _net().embed_target(_images(shape)).shape == (1, 4 + MIND_SKIP, *shape)


def test_embedding_distance_is_the_euclidean_norm_over_channels():
    query = torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]]).permute(1, 0, 2)  # (1, E=2, 2)
    support = torch.tensor([[[3.0, 1.0]], [[4.0, 0.0]]]).permute(1, 0, 2)  # (1, 2, 2)
    distance = embedding_distance(query, support)
    assert distance.shape == (1, 2)
    expected = (torch.tensor([[25.0, 0.0]]) + 1e-8).sqrt()  # the epsilon: 1e-4 at d = 0
    torch.testing.assert_close(distance, expected, atol=1e-7, rtol=0)
    # the query broadcasts over a batch of supports
    assert embedding_distance(query, support.expand(3, -1, -1)).shape == (3, 2)


@pytest.mark.parametrize("shape", [(9, 11, 13), (10, 12, 14)])
def test_half_resolution_voxel_k_is_the_embedding_of_input_voxel_2k(shape):
    """The strided branch's output lands exactly on the even voxels (odd grids as they are,
    even grids after one replicated slice), so interpolation does not blur it there."""
    net = _net(**IMAGE)
    image = _images(shape)
    pad = [p for size in reversed(shape) for p in (0, max(_MIN_SIZE - size, 1 - size % 2))]
    with torch.no_grad():
        coarse = net.target_branch(torch.nn.functional.pad(image, pad, mode="replicate"))
        fine = net.embed_target(image)
    even = fine[..., ::2, ::2, ::2]
    torch.testing.assert_close(even, coarse[..., :even.shape[2], :even.shape[3], :even.shape[4]],
                               atol=1e-6, rtol=0)


def test_image_input_reaches_exactly_the_receptive_field_plus_interpolation():
    """A voxel changes the coarse voxels whose 15³ field holds it; on an even voxel those sit
    within 7 voxels (the 15³ patch), on an odd one the trilinear upsampling spreads them one
    voxel further (8 on that axis). Everything else is exactly unchanged."""
    assert RECEPTIVE_FIELD == 15
    net = _net(**IMAGE)
    shape = (33, 34, 33)
    image = _images(shape)
    for voxel in [(16, 16, 16), (15, 16, 17), (17, 17, 17)]:
        changed = _changed(net, image, voxel)
        expected = torch.zeros(shape, dtype=torch.bool)
        reach = [7 if v % 2 == 0 else 8 for v in voxel]
        expected[tuple(slice(v - r, v + r + 1) for v, r in zip(voxel, reach))] = True
        assert torch.equal(changed, expected), voxel
    far = _changed(net, image, (4, 4, 4))
    assert not far[16:, 16:, 16:].any()  # 12 and more voxels away: bit for bit unchanged


@pytest.mark.parametrize("skip", [True, False])
def test_mind_ssc_input_adds_the_descriptor_reach(skip):
    """MIND-SSC reaches 3 voxels (neighbours 2 apart, 3³ box). From an even voxel that reaches
    odd descriptors 3 away, whose embeddings reach 8 further: 11 in all; from an odd voxel the
    odd descriptors are at most 2 away: 10. Nothing beyond HALO + 2 changes.

    MIND-SSC floors its local variance at 1e-3 of the image's mean variance, which depends on
    every voxel; on uniform noise no local variance comes near that floor, so the floor never
    binds and far voxels stay bit for bit unchanged (were it to bind, this test would fail
    rather than pass by accident)."""
    net = _net(input_features="mind_ssc", descriptor_skip=skip)
    image = _images((41, 41, 41), seed=2)
    assert _chebyshev_reach(_changed(net, image, (21, 21, 21)), (21, 21, 21)) == 10
    changed = _changed(net, image, (20, 20, 20))
    assert _chebyshev_reach(changed, (20, 20, 20)) == 11 <= HALO
    assert not changed[:20 - HALO - 2].any() and not changed[20 + HALO + 3:].any()
    assert not changed[:, :20 - HALO - 2].any() and not changed[..., 20 + HALO + 3:].any()


def test_halo_covers_the_mind_ssc_reach():
    net = _net(input_features="mind_ssc")
    image = _images((41, 41, 41), seed=2)
    assert _chebyshev_reach(_changed(net, image, (20, 20, 20)), (20, 20, 20)) <= HALO


def test_shared_branches_are_one_module():
    shared = _net(shared=True)
    assert shared.target_branch is shared.atlas_branch
    image = _images((13, 13, 13))
    with torch.no_grad():
        assert torch.equal(shared.embed_target(image), shared.embed_atlas(image))
    two = _net()
    assert two.target_branch is not two.atlas_branch
    branch = sum(p.numel() for p in two.target_branch.parameters())
    metric = 24 * 12  # the skip path's linear metric, one per branch
    assert sum(p.numel() for p in two.parameters()) == 2 * (branch + metric)
    assert sum(p.numel() for p in shared.parameters()) == branch + metric
    with torch.no_grad():
        assert not torch.equal(two.embed_target(image), two.embed_atlas(image))


def test_descriptor_skip_starts_as_a_mind_ssc_patch_distance():
    """With the skip path the embedding ends with a learned linear map of the MIND-SSC
    descriptors averaged over the 15³ field and over its centre (at the half-resolution voxels:
    3³ stride 2, then 7³), which starts as 10 x the field's average; the learned features start
    near zero, so the first logits are a MIND-SSC patch distance."""
    from crossmodalmas.features import mind_ssc

    net = _net()
    assert net.config.descriptor_skip and net.config.input_features.value == "mind_ssc"
    assert net.target_metric is not net.atlas_metric  # one metric per branch, like the branches
    image = _images((13, 15, 17))  # odd: half-resolution voxel k is voxel 2k
    with torch.no_grad():
        embedding = net.embed_target(image)
        pooled = torch.nn.functional.avg_pool3d(mind_ssc(image), 3, stride=2, padding=1, count_include_pad=False)
        pooled = torch.nn.functional.avg_pool3d(pooled, 7, stride=1, padding=3, count_include_pad=False)
    torch.testing.assert_close(embedding[:, 4:, ::2, ::2, ::2], 10 * pooled, atol=1e-5, rtol=1e-5)
    assert embedding[:, :4].abs().max() < 0.5 < embedding[:, 4:].abs().max() / 10
    net.logits(image, _images((13, 15, 17), n=2, seed=1)).sum().backward()
    for metric in (net.target_metric, net.atlas_metric):
        assert metric.weight.grad is not None and metric.weight.grad.abs().sum() > 0


def test_gradient_is_finite_where_the_distance_is_zero():
    net = _net(shared=True, **IMAGE)
    image = _images((9, 9, 9))
    logits = net.logits(image, image)
    assert torch.allclose(logits, torch.full_like(logits, -1e-4), atol=1e-6)  # sqrt(epsilon)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_config_round_trip_and_build_network():
    config = SimilarityNetConfig(channels=[2, 3, 4, 5], embedding=6, shared=True, **IMAGE)
    assert config.channels == (2, 3, 4, 5)
    assert config.to_dict() == {"channels": [2, 3, 4, 5], "embedding": 6, "shared": True, "input_features": "image",
                                "descriptor_skip": False}
    assert SimilarityNetConfig(**config.to_dict()) == config
    net = build_network("similarity-net", config.to_dict())
    assert isinstance(net, SimilarityNet) and net.config == config
    assert net.target_branch is net.atlas_branch
    assert "receptive_field=15" in repr(net)
    assert SimilarityNetConfig().to_dict() == {"channels": [16, 32, 32, 32], "embedding": 16, "shared": False,
                                               "input_features": "mind_ssc", "descriptor_skip": True}


@pytest.mark.parametrize("arguments, message", [
    ({"channels": (4, 8, 8)}, r"SimilarityNetConfig: 'channels' must be four positive ints \(the 15³ receptive "
                              r"field needs exactly four 3³ layers\), got \(4, 8, 8\)"),
    ({"channels": (4, 8, 8, 8, 8)}, r"'channels' must be four positive ints .* got \(4, 8, 8, 8, 8\)"),
    ({"channels": (4, 0, 8, 8)}, r"'channels' must be four positive ints .* got \(4, 0, 8, 8\)"),
    ({"embedding": 0}, r"SimilarityNetConfig: 'embedding' must be >= 1, got 0"),
    ({"input_features": "ct"}, r"'ct' is not a valid InputFeatures"),
    ({"input_features": "image"}, r"SimilarityNetConfig: 'descriptor_skip' needs input_features 'mind_ssc'"),
])
def test_bad_configs_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        SimilarityNetConfig(**arguments)
    with pytest.raises(ValueError, match=message):
        build_network("similarity-net", arguments)


def test_unknown_arguments_are_refused_by_build_network():
    with pytest.raises(ValueError, match=r"build_network\(\): bad arguments for 'similarity-net'"):
        build_network("similarity-net", {"depth": 3})


@pytest.mark.parametrize("method", ["embed_target", "embed_atlas"])
@pytest.mark.parametrize("image, error, message", [
    (torch.zeros(1, 2, 8, 8, 8), ValueError, r"'image' must be \(N, 1, D, H, W\), got \(1, 2, 8, 8, 8\)"),
    (torch.zeros(1, 8, 8, 8), ValueError, r"'image' must be \(N, 1, D, H, W\), got \(1, 8, 8, 8\)"),
    (torch.zeros(1, 1, 0, 8, 8), ValueError, r"'image' has an empty grid, got \(1, 1, 0, 8, 8\)"),
    ([[0.0]], TypeError, r"'image' must be a torch.Tensor, got list"),
])
def test_bad_images_are_refused(method, image, error, message):
    with pytest.raises(error, match=rf"SimilarityNet.{method}\(\): " + message):
        getattr(_net(), method)(image)


@pytest.mark.parametrize("target, atlases, message", [
    (torch.zeros(2, 1, 8, 8, 8), torch.zeros(2, 1, 8, 8, 8),
     r"'target' must be \(1, 1, D, H, W\) on the atlases' grid, got \(2, 1, 8, 8, 8\) and atlases \(2, 1, 8, 8, 8\)"),
    (torch.zeros(1, 1, 8, 8, 8), torch.zeros(2, 1, 8, 8, 9),
     r"'target' must be \(1, 1, D, H, W\) on the atlases' grid, got \(1, 1, 8, 8, 8\) and atlases \(2, 1, 8, 8, 9\)"),
    (torch.zeros(1, 1, 8, 8, 8), torch.zeros(2, 3, 8, 8, 8), r"'atlases' must be \(N, 1, D, H, W\), got \(2, 3, 8, 8, 8\)"),
    (torch.zeros(1, 1, 8, 8), torch.zeros(2, 1, 8, 8, 8), r"'target' must be \(N, 1, D, H, W\), got \(1, 1, 8, 8\)"),
])
def test_bad_logits_inputs_are_refused(target, atlases, message):
    with pytest.raises(ValueError, match=r"SimilarityNet.logits\(\): " + message):
        _net().logits(target, atlases)
