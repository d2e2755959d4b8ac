"""The consistent registration network (seed 000, sec. 2.1): one pass gives U and V.

``forward(atlas, target)`` returns the forward field U (atlas -> target: a pull-back
displacement on the *target* grid, ``warp(atlas, U)`` is the atlas in target space) and the
backward field V (target -> atlas, on the atlas grid; both grids are the same working grid
here). Displacements are in voxels of the input grid, channels (k, j, i)
(:mod:`crossmodalmas.transforms`).

Two field modes (:class:`FieldMode`):

* ``paper``: two free heads predict U and V; their consistency is learned through the
  invertibility loss of eq. 4 (:func:`crossmodalmas.losses.invertibility_loss`).
* ``diffeomorphic``: one head predicts a stationary velocity v; U = exp(v) and V = exp(-v)
  by scaling and squaring, so V inverts U up to integration error and neither folds.

Speed by design: the input pair is downsampled by ``input_downsample`` before the U-Net and
the fields are predicted at ``1 / (input_downsample * 2**output_level)`` of the input
resolution, then upsampled (SynthMorph does the same); the fields of registration are
smooth, so this costs little accuracy and saves most of the FLOPs.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from crossmodalmas.features import mind_ssc
from crossmodalmas.nets.correlation import cost_volume, soft_argmin
from crossmodalmas.nets.unet import UNet3d
from crossmodalmas.transforms import integrate_velocity, resize_flow

_HEAD_INIT_STD = 1e-5  # flow heads start near zero: the network starts at the identity (or the prior)
_INITIAL_TEMPERATURE = 0.3  # of the soft arg-min, in units of the per-voxel cost spread


class FieldMode(str, enum.Enum):
    PAPER = "paper"
    DIFFEOMORPHIC = "diffeomorphic"


class InputFeatures(str, enum.Enum):
    """What the U-Net reads: the two intensity images, or their MIND-SSC descriptors
    (12 channels each, modality-independent by construction: a head start for a network
    that must generalise to contrasts it never saw)."""

    IMAGE = "image"
    MIND_SSC = "mind_ssc"


@dataclass
class RegistrationNetConfig:
    """Architecture arguments (what ``models.json`` stores under ``arguments``).

    ``correlation_radius`` > 0 adds the correlation front end (:mod:`.correlation`): MIND-SSC
    cost volumes both ways at half the U-Net's input resolution, searched within that many
    voxels; their soft arg-min displacements are extra U-Net inputs and the fields' starting
    point, which the heads correct.
    """

    mode: FieldMode = FieldMode.DIFFEOMORPHIC
    input_features: InputFeatures = InputFeatures.IMAGE
    channels: tuple = (16, 32, 32, 32, 32)
    output_level: int = 1
    input_downsample: int = 2
    integration_steps: int = 7
    correlation_radius: int = 0

    def __post_init__(self):
        self.mode = FieldMode(self.mode)
        self.input_features = InputFeatures(self.input_features)
        self.channels = tuple(int(c) for c in self.channels)
        if self.input_downsample < 1:
            raise ValueError(f"RegistrationNetConfig: 'input_downsample' must be >= 1, "
                             f"got {self.input_downsample}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(mode=self.mode.value, input_features=self.input_features.value,
                   channels=list(self.channels))
        return out


@dataclass
class PredictedFields:
    """What one pass gives, all ``(N, 3, D, H, W)`` in voxels of the input grid.

    ``velocity`` is the stationary velocity of diffeomorphic mode (None in paper mode): the
    starting point of instance optimisation (:func:`crossmodalmas.instance_opt.register`).
    """

    forward: torch.Tensor
    backward: torch.Tensor
    velocity: Optional[torch.Tensor] = None


def _head(in_channels: int) -> nn.Conv3d:
    head = nn.Conv3d(in_channels, 3, kernel_size=3, padding=1)
    nn.init.normal_(head.weight, std=_HEAD_INIT_STD)
    nn.init.zeros_(head.bias)
    return head


def _check_pair(atlas: torch.Tensor, target: torch.Tensor) -> None:
    for name, tensor in (("atlas", atlas), ("target", target)):
        if tensor.dim() != 5 or tensor.shape[1] != 1:
            raise ValueError(f"ConsistentRegistrationNet.forward(): '{name}' must be "
                             f"(N, 1, D, H, W), got {tuple(tensor.shape)}")
    if atlas.shape[2:] != target.shape[2:] or atlas.shape[0] not in (1, target.shape[0]):
        raise ValueError("ConsistentRegistrationNet.forward(): 'atlas' and 'target' must share "
                         f"the grid (and batch, or atlas batch 1), got {tuple(atlas.shape)} and "
                         f"{tuple(target.shape)}")


class ConsistentRegistrationNet(nn.Module):
    """Predicts the forward and backward displacement of an atlas/target pair in one pass.

    Args: the fields of :class:`RegistrationNetConfig` as keywords.
    """

    def __init__(self, **arguments):
        super().__init__()
        self.config = RegistrationNetConfig(**arguments)
        per_image = 12 if self.config.input_features is InputFeatures.MIND_SSC else 1
        prior_channels = 6 if self.config.correlation_radius > 0 else 0
        self.backbone = UNet3d(2 * per_image + prior_channels, self.config.channels, self.config.output_level)
        heads = 2 if self.config.mode is FieldMode.PAPER else 1
        self.heads = nn.ModuleList([_head(self.backbone.out_channels) for _ in range(heads)])
        if prior_channels:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(_INITIAL_TEMPERATURE)))

    @property
    def stride(self) -> int:
        """Input sizes that are multiples of this need no padding."""
        return self.backbone.stride * self.config.input_downsample

    def _prior(self, atlas_mind: torch.Tensor, target_mind: torch.Tensor) -> list[torch.Tensor]:
        """Soft arg-min displacements (U, V) from the cost volumes, on the descriptors' grid."""
        radius = self.config.correlation_radius
        atlas_small, target_small = F.avg_pool3d(atlas_mind, 2), F.avg_pool3d(target_mind, 2)
        temperature = self.log_temperature.exp()
        fields = [soft_argmin(cost_volume(target_small, atlas_small, radius), radius, temperature),
                  soft_argmin(cost_volume(atlas_small, target_small, radius), radius, temperature)]
        return [resize_flow(f, atlas_mind.shape[2:]) for f in fields]

    def _inputs(self, atlas: torch.Tensor, target: torch.Tensor):
        """The U-Net's input and the prior fields (or None), at the U-Net's input grid."""
        atlas = atlas.expand(target.shape[0], -1, -1, -1, -1)
        pair = torch.cat([atlas, target], dim=0)
        if self.config.input_downsample > 1:
            pair = F.avg_pool3d(pair, self.config.input_downsample)
        mind = self.config.input_features is InputFeatures.MIND_SSC or self.config.correlation_radius > 0
        descriptors = mind_ssc(pair) if mind else None
        if self.config.input_features is InputFeatures.MIND_SSC:
            pair = descriptors
        atlas_in, target_in = pair.chunk(2, dim=0)
        inputs = [atlas_in, target_in]
        prior = None
        if self.config.correlation_radius > 0:
            prior = self._prior(*descriptors.chunk(2, dim=0))
            inputs += prior
        return torch.cat(inputs, dim=1), prior

    def _padded(self, tensor: torch.Tensor) -> torch.Tensor:
        pads = [(-s) % self.stride for s in tensor.shape[2:]]
        if not any(pads):
            return tensor
        return F.pad(tensor, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")

    def _fields(self, features: torch.Tensor, prior) -> list[torch.Tensor]:
        heads = [head(features) for head in self.heads]
        if prior is not None:
            prior = [resize_flow(f, features.shape[2:]) for f in prior]
        if self.config.mode is FieldMode.PAPER:
            return heads if prior is None else [heads[0] + prior[0], heads[1] + prior[1]]
        velocity = heads[0]
        if prior is not None:  # for a smooth field exp(v) ~ id + v: start from the symmetric mean
            velocity = velocity + 0.5 * (prior[0] - prior[1])
        steps = self.config.integration_steps
        return [integrate_velocity(velocity, steps), integrate_velocity(-velocity, steps), velocity]

    def predict(self, atlas: torch.Tensor, target: torch.Tensor) -> PredictedFields:
        """Args:
            atlas: ``(N or 1, 1, D, H, W)`` normalised atlas image (an atlas batch of 1 is
                shared by every target).
            target: ``(N, 1, D, H, W)`` normalised target image on the same grid.

        Returns:
            :class:`PredictedFields` on the input grid.

        Raises:
            ValueError: the shapes do not match.
        """
        _check_pair(atlas, target)
        shape = target.shape[2:]
        inputs, prior = self._inputs(self._padded(atlas), self._padded(target))
        features = self.backbone(inputs)
        padded = [s + (-s) % self.stride for s in shape]
        crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in shape)
        fields = [resize_flow(f, padded)[crop] for f in self._fields(features, prior)]
        return PredictedFields(*fields)

    def forward(self, atlas: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, V)`` of :meth:`predict`: the forward and backward displacements."""
        fields = self.predict(atlas, target)
        return fields.forward, fields.backward

    def extra_repr(self) -> str:
        c = self.config
        return (f"mode={c.mode.value}, input_features={c.input_features.value}, "
                f"input_downsample={c.input_downsample}, output_level={c.output_level}, "
                f"correlation_radius={c.correlation_radius}")
