"""crossmodalmas.nets: the U-Net backbone and the consistent registration network."""

import pytest
import torch

from crossmodalmas.nets import build_network
from crossmodalmas.nets.registration_net import ConsistentRegistrationNet, RegistrationNetConfig
from crossmodalmas.nets.unet import UNet3d
from crossmodalmas.transforms import compose

SMALL = dict(channels=(4, 8, 8), output_level=0, input_downsample=2)


def _pair(shape=(16, 16, 16), n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, *shape), generator=g), torch.rand((n, 1, *shape), generator=g)


@pytest.mark.parametrize("mode", ["paper", "diffeomorphic"])
@pytest.mark.parametrize("features", ["image", "mind_ssc"])
def test_fields_have_the_input_grid_and_start_near_identity(mode, features):
    torch.manual_seed(0)
    net = ConsistentRegistrationNet(mode=mode, input_features=features, **SMALL)
    forward, backward = net(*_pair())
    assert forward.shape == backward.shape == (1, 3, 16, 16, 16)
    assert forward.abs().max() < 1e-2 and backward.abs().max() < 1e-2


@pytest.mark.parametrize("shape", [(16, 16, 16), (13, 18, 11)])
def test_any_grid_size_is_padded_and_cropped_back(shape):
    net = ConsistentRegistrationNet(**SMALL)
    forward, backward = net(*_pair(shape))
    assert forward.shape[2:] == shape and backward.shape[2:] == shape


def test_diffeomorphic_mode_backward_inverts_forward():
    torch.manual_seed(0)
    net = ConsistentRegistrationNet(mode="diffeomorphic", **SMALL)
    with torch.no_grad():
        net.heads[0].weight.normal_(std=0.5)  # a non-trivial but smooth velocity
        forward, backward = net(*_pair())
    assert forward.abs().max() > 0.1
    residual = compose(forward, backward)[..., 3:-3, 3:-3, 3:-3].abs().max()
    assert residual < 0.1 * forward.abs().max()


def test_paper_mode_has_two_independent_heads():
    net = ConsistentRegistrationNet(mode="paper", **SMALL)
    assert len(net.heads) == 2
    assert len(ConsistentRegistrationNet(mode="diffeomorphic", **SMALL).heads) == 1


def test_one_atlas_is_shared_by_a_batch_of_targets():
    net = ConsistentRegistrationNet(**SMALL)
    atlas, _ = _pair()
    _, targets = _pair(n=3)
    forward, _ = net(atlas, targets)
    assert forward.shape[0] == 3


def test_gradients_reach_every_parameter():
    net = ConsistentRegistrationNet(mode="paper", **SMALL)
    forward, backward = net(*_pair())
    (forward.square().mean() + backward.square().mean()).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_output_resolution_and_channels():
    unet = UNet3d(2, (4, 8, 16), output_level=1)
    out = unet(torch.zeros(1, 2, 16, 16, 16))
    assert out.shape == (1, 8, 8, 8, 8) and unet.stride == 4


def test_config_round_trip_and_build_network():
    config = RegistrationNetConfig(mode="paper", input_features="mind_ssc", channels=[4, 8], output_level=0)
    again = RegistrationNetConfig(**config.to_dict())
    assert again == config
    net = build_network("consistent-registration-net", config.to_dict())
    assert net.config == config


@pytest.mark.parametrize("call, message", [
    (lambda: build_network("nope", {}), r"build_network\(\): unknown architecture 'nope'; known: consistent-registration-net"),
    (lambda: build_network("consistent-registration-net", {"depth": 3}), r"build_network\(\): bad arguments for 'consistent-registration-net'"),
    (lambda: UNet3d(1, (4,)), r"UNet3d\(\): 'channels' needs at least two levels, got \(4,\)"),
    (lambda: UNet3d(1, (4, 8), output_level=1), r"UNet3d\(\): 'output_level' must be in \[0, 0\], got 1"),
    (lambda: RegistrationNetConfig(input_downsample=0), r"'input_downsample' must be >= 1, got 0"),
    (lambda: RegistrationNetConfig(mode="free"), r"'free' is not a valid FieldMode"),
])
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("atlas, target, message", [
    (torch.zeros(1, 2, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8), r"'atlas' must be \(N, 1, D, H, W\), got \(1, 2, 8, 8, 8\)"),
    (torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8), r"'target' must be \(N, 1, D, H, W\), got \(1, 1, 8, 8\)"),
    (torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 9), r"'atlas' and 'target' must share the grid .* got \(1, 1, 8, 8, 8\) and \(1, 1, 8, 8, 9\)"),
])
def test_bad_inputs_are_refused(atlas, target, message):
    net = ConsistentRegistrationNet(**SMALL)
    with pytest.raises(ValueError, match=r"ConsistentRegistrationNet.forward\(\): " + message):
        net(atlas, target)


def test_correlation_prior_recovers_a_translation_before_any_training():
    torch.manual_seed(0)
    net = ConsistentRegistrationNet(channels=(4, 8, 8), output_level=0, input_downsample=1,
                                    correlation_radius=3, input_features="mind_ssc")
    with torch.no_grad():
        net.log_temperature.fill_(-3.0)  # near hard arg-min
    g = torch.Generator().manual_seed(1)
    blob = torch.nn.functional.avg_pool3d(torch.rand((1, 1, 40, 40, 40), generator=g), 5, 1, 2)
    atlas = blob[..., 4:36, 4:36, 4:36]
    target = blob[..., 0:32, 4:36, 8:40]  # target(x) = atlas(x + (-4, 0, 4))
    with torch.no_grad():
        fields = net.predict(atlas, target)
    inner = fields.forward[..., 8:-8, 8:-8, 8:-8].mean(dim=(2, 3, 4))[0]
    assert torch.allclose(inner, torch.tensor([-4.0, 0.0, 4.0]), atol=1.0)
    assert len(net.state_dict()) == len(ConsistentRegistrationNet(
        channels=(4, 8, 8), output_level=0, input_downsample=1, correlation_radius=3).state_dict())
