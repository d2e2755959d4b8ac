"""crossmodalmas.nets.correlation: cost volume and soft arg-min on analytic shifts."""

import pytest
import torch

from crossmodalmas.nets.correlation import cost_volume, shifts, soft_argmin


def _features(seed=0, shape=(12, 12, 12)):
    return torch.rand((1, 4, *shape), generator=torch.Generator().manual_seed(seed))


def test_shifts_cover_the_cube_once():
    table = shifts(2)
    assert table.shape == (125, 3) and len({tuple(row) for row in table.tolist()}) == 125
    assert table.abs().max() == 2


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, -2, 0), (-1, 1, 2)])
def test_known_shift_has_zero_cost_and_soft_argmin_finds_it(shift):
    atlas = _features()
    target = torch.roll(atlas, shifts=tuple(-s for s in shift), dims=(2, 3, 4))  # target(x) = atlas(x + s)
    cost = cost_volume(target, atlas, radius=2, smoothing=0)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    best = cost[inner].argmin(dim=1)
    index = shifts(2).tolist().index(list(map(float, shift)))
    assert bool((best == index).all())
    field = soft_argmin(cost_volume(target, atlas, radius=2, smoothing=1), 2, torch.tensor(0.02))
    expected = torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1)
    assert torch.allclose(field[inner], expected.expand_as(field[inner]), atol=0.05)


def test_uniform_costs_give_no_displacement():
    cost = torch.ones(1, 27, 4, 4, 4)
    assert soft_argmin(cost, 1, torch.tensor(1.0)).abs().max() < 1e-6


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match=r"cost_volume\(\): 'target' and 'atlas' must be the same "
                                         r"\(N, C, D, H, W\), got \(1, 4, 12, 12, 12\) and \(1, 4, 8, 8, 8\)"):
        cost_volume(_features(), _features(shape=(8, 8, 8)), radius=1)
