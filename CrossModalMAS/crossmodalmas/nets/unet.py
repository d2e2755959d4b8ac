"""A small 3-D U-Net backbone built from MONAI convolution blocks.

The registration network needs only a feature map at some resolution; the flow heads and
what they mean live in :mod:`crossmodalmas.nets.registration_net`. MONAI's ``UNet`` always
decodes back to full resolution, and decoding the last level is where most of the FLOPs go
at 3-D, so this backbone stops its decoder at ``output_level`` (SynthMorph predicts its
fields at half resolution for the same reason). The blocks are MONAI's ``Convolution``
(conv + LeakyReLU, no normalisation, as in VoxelMorph: normalising would wash out the
intensity differences the network has to read).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATION = ("leakyrelu", {"negative_slope": 0.2})


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    from monai.networks.blocks import Convolution  # lazy: MONAI's import costs ~2 s

    return Convolution(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                       strides=stride, kernel_size=3, act=_ACTIVATION, norm=None)


class UNet3d(nn.Module):
    """Encoder of strided convolutions, decoder of upsample + skip + convolution.

    Level ``l`` has ``channels[l]`` features at ``1 / 2**l`` of the input resolution. The
    decoder climbs back to level ``output_level``.

    Args:
        in_channels: input channels.
        channels: features per level, from full resolution down (at least two levels).
        output_level: the level the decoder stops at (0 = full resolution).

    Shapes: input ``(N, in_channels, D, H, W)`` with D, H, W divisible by
    ``2 ** (len(channels) - 1)``; output ``(N, channels[output_level], D / 2**l, ...)``.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], output_level: int = 0):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"UNet3d(): 'channels' needs at least two levels, got {channels}")
        if not 0 <= output_level < len(channels) - 1:
            raise ValueError(f"UNet3d(): 'output_level' must be in [0, {len(channels) - 2}], "
                             f"got {output_level}")
        self.channels = channels
        self.output_level = output_level
        self.encoder = nn.ModuleList(
            [_conv(in_channels, channels[0])]
            + [_conv(channels[l - 1], channels[l], stride=2) for l in range(1, len(channels))])
        self.decoder = nn.ModuleList(
            [_conv(channels[l + 1] + channels[l], channels[l])
             for l in range(len(channels) - 2, output_level - 1, -1)])

    @property
    def stride(self) -> int:
        """Input sizes must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    @property
    def out_channels(self) -> int:
        return self.channels[self.output_level]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, output_level={self.output_level}"
