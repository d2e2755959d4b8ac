"""crossmodalmas.qc: the registration figures, one atlas at a time."""

import pytest
import torch

from crossmodalmas.qc import descriptor_similarity


def test_descriptor_similarity_is_one_minus_the_mean_absolute_difference_per_atlas():
    target = torch.zeros(1, 2, 3, 3, 3)
    atlases = torch.stack([torch.zeros(2, 3, 3, 3), torch.full((2, 3, 3, 3), 0.25), torch.ones(2, 3, 3, 3)])
    assert descriptor_similarity(atlases, target).tolist() == pytest.approx([1.0, 0.75, 0.0])


def test_descriptor_similarity_judges_each_atlas_on_its_support_only():
    target = torch.zeros(1, 2, 2, 2, 4)
    half = torch.zeros(1, 2, 2, 2, 4)
    half[..., 2:] = 1.0  # matches the target where it has anatomy, differs where it has none
    where = torch.zeros(1, 1, 2, 2, 4, dtype=torch.bool)
    where[..., :2] = True
    assert descriptor_similarity(half, target).tolist() == pytest.approx([0.5])
    assert descriptor_similarity(half, target, where).tolist() == pytest.approx([1.0])
    assert descriptor_similarity(half, target, torch.zeros_like(where)).tolist() == pytest.approx([0.5])


def test_descriptor_similarity_names_a_support_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"descriptor_similarity\(\): 'where' must be \(2, 1, 3, 3, 3\), got \(1, 1, 3, 3, 3\)"):
        descriptor_similarity(torch.zeros(2, 4, 3, 3, 3), torch.zeros(1, 4, 3, 3, 3),
                              torch.ones(1, 1, 3, 3, 3, dtype=torch.bool))


def test_descriptor_similarity_matches_the_batched_formula():
    torch.manual_seed(0)
    atlases, target = torch.rand(4, 12, 5, 6, 7), torch.rand(1, 12, 5, 6, 7)
    batched = 1.0 - (atlases - target).abs().flatten(1).mean(1)
    assert torch.allclose(descriptor_similarity(atlases, target), batched, atol=1e-6)
