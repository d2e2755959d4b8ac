"""crossmodalmas.synth: random deformations and contrasts of a label map."""

import pytest
import torch

from crossmodalmas.synth import (SynthConfig, random_affine, random_deformation, render,
                                 random_lookup, synth_pair)


def _blocks(size=24, n=1):
    axis = torch.arange(size)
    labels = (axis.view(-1, 1, 1) // 8) * 9 + (axis.view(1, -1, 1) // 8) * 3 + axis.view(1, 1, -1) // 8
    return labels.expand(n, -1, -1, -1).clone()  # 27 labels


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_pair_shapes_ranges_and_label_correspondence():
    labels = _blocks(n=2)
    pair = synth_pair(labels, 27, SynthConfig(), _generator())
    for image in (pair.image_a, pair.image_b):
        assert image.shape == (2, 1, 24, 24, 24) and image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    for warped in (pair.labels_a, pair.labels_b):
        assert warped.shape == (2, 1, 24, 24, 24) and warped.dtype == torch.int64
        assert set(warped.unique().tolist()) <= set(range(27))
    assert not torch.equal(pair.labels_a, pair.labels_b)  # two different deformations


def test_same_seed_same_pair_and_other_seed_differs():
    a = synth_pair(_blocks(), 27, SynthConfig(), _generator(3))
    b = synth_pair(_blocks(), 27, SynthConfig(), _generator(3))
    c = synth_pair(_blocks(), 27, SynthConfig(), _generator(4))
    assert torch.equal(a.image_a, b.image_a) and torch.equal(a.labels_b, b.labels_b)
    assert not torch.equal(a.image_a, c.image_a)


def test_zero_ranges_give_identity_deformation():
    still = SynthConfig(velocity_std=0.0, rotation_deg=0.0, scaling=0.0, shear=0.0, translation=0.0)
    field = random_deformation(2, (16, 16, 16), still, _generator()).displacement()
    assert field.abs().max() < 1e-4
    pair = synth_pair(_blocks(16), 27, still, _generator())
    assert torch.equal(pair.labels_a[0, 0], _blocks(16)[0])


def test_affine_without_ranges_is_identity_and_rotation_is_orthonormal():
    matrix, offset = random_affine(3, (8, 8, 8), SynthConfig(scaling=0.0, shear=0.0), _generator())
    eye = torch.eye(3).expand(3, 3, 3)
    assert torch.allclose(matrix @ matrix.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(matrix), torch.ones(3), atol=1e-5)
    assert offset.shape == (3, 3)


def test_rendered_labels_have_their_own_mean_without_noise_or_blur():
    flat = SynthConfig(intensity_std=0.0, bias_std=0.0, blur_sigma=0.0, resolution_loss=1.0,
                       gamma_std=0.0, noise_std=0.0)
    labels = _blocks(n=1).unsqueeze(1)
    means, spreads = random_lookup(1, 27, flat, _generator())
    image = render(labels, (means, spreads), flat, _generator())
    for label in (1, 13, 26):  # each label is one intensity; order of the means is kept
        values = image[labels == label]
        assert float(values.max() - values.min()) < 1e-5
    order = means[0].argsort()
    per_label = torch.stack([image[labels == k].mean() for k in range(27)])
    assert torch.equal(per_label.argsort(), order) or (per_label[order].diff() >= -1e-6).all()


def test_same_contrast_shares_the_lookup():
    config = SynthConfig(same_contrast=True, intensity_std=0.0, bias_std=0.0, blur_sigma=0.0,
                         resolution_loss=1.0, gamma_std=0.0, noise_std=0.0, velocity_std=0.0,
                         rotation_deg=0.0, scaling=0.0, shear=0.0, translation=0.0)
    pair = synth_pair(_blocks(), 27, config, _generator())
    assert torch.allclose(pair.image_a, pair.image_b, atol=1e-5)


@pytest.mark.parametrize("labels, k, message", [
    (torch.zeros(1, 1, 8, 8, 8, dtype=torch.long), 2, r"'labels' must be \(N, D, H, W\), got \(1, 1, 8, 8, 8\)"),
    (torch.zeros(1, 8, 8, 8), 2, r"'labels' must be an integer tensor, got torch.float32"),
    (torch.full((1, 8, 8, 8), 5, dtype=torch.long), 3, r"'labels' must lie in \[0, 3\), got \[5, 5\]"),
])
def test_bad_labels_are_refused(labels, k, message):
    with pytest.raises(ValueError, match=r"synth_pair\(\): " + message):
        synth_pair(labels, k, SynthConfig(), _generator())


def test_true_fields_map_one_labelled_image_onto_the_other():
    from crossmodalmas.transforms import warp
    from crossmodalmas.train.validation import mean_dice

    pair = synth_pair(_blocks(24, n=2), 27, SynthConfig(velocity_std=2.0), _generator(7))
    for moving, fixed, field in ((pair.labels_a, pair.labels_b, pair.forward),
                                 (pair.labels_b, pair.labels_a, pair.backward)):
        before = mean_dice(moving[:1], fixed[:1])
        after = mean_dice(warp(moving.float(), field, mode="nearest")[:1].long(), fixed[:1])
        assert after > 0.9 and after > before + 0.05


def test_deformation_inverse_points_undo_points():
    deformation = random_deformation(1, (24, 24, 24), SynthConfig(velocity_std=2.0), _generator(2))
    back = deformation.inverse_points(deformation.points())
    from crossmodalmas.transforms import identity_grid

    inner = (back - identity_grid((24, 24, 24)))[..., 6:-6, 6:-6, 6:-6]
    assert inner.abs().max() < 0.3
