"""crossmodalmas.qc: the registration figures, one atlas at a time."""

import pytest
import torch

from crossmodalmas.qc import descriptor_similarity


def test_descriptor_similarity_is_one_minus_the_mean_absolute_difference_per_atlas():
    target = torch.zeros(1, 2, 3, 3, 3)
    atlases = torch.stack([torch.zeros(2, 3, 3, 3), torch.full((2, 3, 3, 3), 0.25), torch.ones(2, 3, 3, 3)])
    assert descriptor_similarity(atlases, target).tolist() == pytest.approx([1.0, 0.75, 0.0])


def test_descriptor_similarity_matches_the_batched_formula():
    torch.manual_seed(0)
    atlases, target = torch.rand(4, 12, 5, 6, 7), torch.rand(1, 12, 5, 6, 7)
    batched = 1.0 - (atlases - target).abs().flatten(1).mean(1)
    assert torch.allclose(descriptor_similarity(atlases, target), batched, atol=1e-6)
