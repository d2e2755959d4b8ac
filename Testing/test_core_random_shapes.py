"""SynthMorph-style random label maps: shapes, determinism, trilinear argmax, background fill."""

import pytest
import torch
import torch.nn.functional as F

from crossmodalmas.random_shapes import fill_background, random_shapes


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def label_changes(labels: torch.Tensor) -> int:
    """Neighbouring voxel pairs (along any axis) with different labels."""
    return sum(int((labels.diff(dim=axis) != 0).sum()) for axis in range(3))


@pytest.mark.parametrize("shape", [(20, 24, 28), (1, 16, 9), (33, 8, 17)])
def test_shape_dtype_and_label_range(shape):
    labels = random_shapes(shape, 5, gen(0), coarse_factor=4)
    assert labels.shape == shape and labels.dtype == torch.int64 and labels.device.type == "cpu"
    assert int(labels.min()) >= 0 and int(labels.max()) <= 4


def test_many_labels_all_occur_on_a_large_enough_grid():
    labels = random_shapes((32, 32, 32), 6, gen(1), coarse_factor=4)
    assert set(torch.unique(labels).tolist()) == set(range(6))


def test_one_label_is_all_zero():
    assert not random_shapes((8, 9, 10), 1, gen(0)).any()


def test_same_seed_same_map_other_seed_other_map():
    first, second = random_shapes((24, 24, 24), 8, gen(3)), random_shapes((24, 24, 24), 8, gen(3))
    assert torch.equal(first, second)
    assert not torch.equal(first, random_shapes((24, 24, 24), 8, gen(4)))


def test_is_the_argmax_of_trilinearly_upsampled_coarse_noise():
    shape, factor = (25, 17, 33), 8
    reference_noise = torch.randn((1, 7, 4, 3, 5), generator=gen(5))  # coarse (ceil((s-1)/8)+1) per axis
    reference = F.interpolate(reference_noise, size=shape, mode="trilinear", align_corners=True)[0].argmax(0)
    labels = random_shapes(shape, 7, gen(5), coarse_factor=factor)
    assert (labels == reference).float().mean() > 0.999


def test_larger_coarse_factor_gives_larger_blobs():
    fine = random_shapes((32, 32, 32), 8, gen(6), coarse_factor=2)
    coarse = random_shapes((32, 32, 32), 8, gen(6), coarse_factor=16)
    assert label_changes(coarse) < label_changes(fine) / 3


def test_warp_changes_the_map_but_keeps_its_labels():
    plain = random_shapes((24, 24, 24), 6, gen(7), coarse_factor=4)
    assert torch.equal(plain, random_shapes((24, 24, 24), 6, gen(7), coarse_factor=4, warp_std=0.0))
    warped = random_shapes((24, 24, 24), 6, gen(7), coarse_factor=4, warp_std=3.0)
    assert not torch.equal(plain, warped)
    assert set(torch.unique(warped).tolist()) <= set(range(6))
    assert (warped == plain).float().mean() > 0.3  # the same shapes, moved by a few voxels


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(shape=(8, 8)), ValueError,
     r"random_shapes\(\): 'shape' must be 3 positive integers \(D, H, W\), got \(8, 8\)"),
    (dict(shape=(8, 0, 8)), ValueError, r"random_shapes\(\): 'shape' must be 3 positive integers"),
    (dict(shape=8), ValueError, r"random_shapes\(\): 'shape' must be 3 positive integers \(D, H, W\), got 8"),
    (dict(num_labels=0), ValueError, r"random_shapes\(\): 'num_labels' must be an integer >= 1, got 0"),
    (dict(num_labels=2.5), ValueError, r"random_shapes\(\): 'num_labels' must be an integer >= 1, got 2.5"),
    (dict(generator=3), TypeError, r"random_shapes\(\): 'generator' must be a torch.Generator, got int"),
    (dict(coarse_factor=0), ValueError, r"random_shapes\(\): 'coarse_factor' must be an integer >= 1, got 0"),
    (dict(warp_std=-1.0), ValueError,
     r"random_shapes\(\): 'warp_std' must be a finite number >= 0 \(voxels\), got -1.0"),
    (dict(warp_std=float("inf")), ValueError, r"random_shapes\(\): 'warp_std' must be a finite number >= 0"),
])
def test_random_shapes_refuses_bad_arguments(kwargs, error, match):
    arguments = dict(shape=(8, 8, 8), num_labels=3, generator=gen(0)) | kwargs
    with pytest.raises(error, match=match):
        random_shapes(**arguments)


def labels_and_mask():
    labels = torch.zeros((20, 22, 24), dtype=torch.int64)
    labels[5:15, 5:15, 5:15] = 1
    labels[8:12, 8:12, 8:12] = 3
    mask = torch.zeros(labels.shape, dtype=torch.bool)
    mask[2:18, 3:19, 4:20] = True
    mask &= labels == 0
    return labels, mask


def test_fill_background_touches_only_masked_voxels_with_new_values():
    labels, mask = labels_and_mask()
    filled = fill_background(labels, mask, 5, gen(0), coarse_factor=4)
    assert filled.dtype == labels.dtype and filled.shape == labels.shape
    assert torch.equal(filled[~mask], labels[~mask])
    new = filled[mask]
    assert int(new.min()) >= 4 and int(new.max()) <= 8  # labels.max() + 1 ... + num_new
    assert len(torch.unique(new)) >= 2
    assert torch.equal(labels, labels_and_mask()[0])  # the input is not modified


def test_fill_background_is_deterministic_and_keeps_dtype():
    labels, mask = labels_and_mask()
    labels = labels.to(torch.int16)
    first, second = (fill_background(labels, mask, 4, gen(2)) for _ in range(2))
    assert first.dtype == torch.int16 and torch.equal(first, second)


def test_fill_background_of_an_all_zero_map_starts_at_one_and_empty_mask_copies():
    labels = torch.zeros((8, 8, 8), dtype=torch.int64)
    mask = torch.ones_like(labels, dtype=torch.bool)
    filled = fill_background(labels, mask, 3, gen(0), coarse_factor=2)
    assert int(filled.min()) >= 1 and int(filled.max()) <= 3
    empty = fill_background(labels, torch.zeros_like(mask), 3, gen(0))
    assert torch.equal(empty, labels) and empty.data_ptr() != labels.data_ptr()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(labels=[[0]]), TypeError, r"fill_background\(\): 'labels' must be a torch.Tensor, got list"),
    (dict(labels=torch.zeros((4, 4, 4))), ValueError,
     r"fill_background\(\): 'labels' must be a 3-D integer tensor, got torch.float32 \(4, 4, 4\)"),
    (dict(labels=torch.zeros((4, 4), dtype=torch.int64)), ValueError,
     r"fill_background\(\): 'labels' must be a 3-D integer tensor, got torch.int64 \(4, 4\)"),
    (dict(background_mask=torch.ones((4, 4, 4), dtype=torch.int64)), ValueError,
     r"fill_background\(\): 'background_mask' must be a bool tensor of the shape and device of 'labels' "
     r"\(4, 4, 4\) cpu, got torch.int64 \(4, 4, 4\) cpu"),
    (dict(background_mask=torch.ones((4, 4, 5), dtype=torch.bool)), ValueError,
     r"fill_background\(\): 'background_mask' must be a bool tensor .* got torch.bool \(4, 4, 5\)"),
    (dict(background_mask=None), TypeError, r"fill_background\(\): 'background_mask' must be a torch.Tensor"),
    (dict(num_new=0), ValueError, r"fill_background\(\): 'num_new' must be an integer >= 1, got 0"),
    (dict(generator=None), TypeError, r"fill_background\(\): 'generator' must be a torch.Generator, got NoneType"),
    (dict(coarse_factor=-2), ValueError, r"fill_background\(\): 'coarse_factor' must be an integer >= 1, got -2"),
])
def test_fill_background_refuses_bad_arguments(kwargs, error, match):
    arguments = dict(labels=torch.zeros((4, 4, 4), dtype=torch.int64),
                     background_mask=torch.ones((4, 4, 4), dtype=torch.bool), num_new=2, generator=gen(0)) | kwargs
    with pytest.raises(error, match=match):
        fill_background(**arguments)
