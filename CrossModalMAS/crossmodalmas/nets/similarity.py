"""The similarity network of seed 000 (sec. 2.2, Fig. 3): a prototypical (few-shot) embedding
whose distances weight the patch-based label fusion.

Two branches map images to an embedding space: ``f_phi`` the target (query) and ``f_theta``
the warped atlases (supports). Each branch is fully convolutional with a 15³ receptive
field, so one pass per image gives the embedding of the 15³ patch around *every* voxel and
no patch is ever cut out in Python. The similarity of atlas ``i`` at voxel ``x`` is eq. 7,

    sim_i(x) = softmax_i( -d(f_phi(T)(x), f_theta(A_i)(x)) ),

with ``d`` the Euclidean distance; :meth:`SimilarityNet.logits` returns ``-d``, the softmax
over atlases is the fusion's business (:func:`crossmodalmas.fusion.patch_label_fusion`).

Speed by design: the first convolution has stride 2 and the rest run at half resolution, so
a branch costs about 1/8 of a full-resolution one; the embedding is then interpolated back
to every voxel. The receptive field is exact: 3 voxels for the strided layer, +4 for each of
the three 3³ layers at half resolution (2 × 2), 15 in all. A 15³ patch's similarity changes
little from one voxel to the next, which is why the coarser embedding grid costs little.
No normalisation layers: an instance norm would make a voxel's embedding depend on the whole
image, so a crop (what the fusion embeds: only where atlases disagree) would embed
differently from the full image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from crossmodalmas.features import mind_ssc
from crossmodalmas.nets.registration_net import InputFeatures

RECEPTIVE_FIELD = 15
"""Receptive field of each branch, in voxels along each axis (seed 000's 15³ patches)."""

HALO = 12
"""Voxels of context a crop needs on each side so that its interior embeds as in the full
image: the receptive field's reach (8 from an odd voxel, after interpolation) plus the
MIND-SSC descriptors' (3), rounded up to the stride (2). A crop must also start on an even
voxel, so that its half-resolution grid is the full image's."""

_ACTIVATION = ("leakyrelu", {"negative_slope": 0.2})
_EPSILON = 1e-8  # inside the square root of the distance: finite gradient at d = 0
_MIN_SIZE = 13  # smallest side a branch runs on (smaller grids are padded, then cropped)
_SKIP_INIT_STD = 1e-2  # of the learned features' last layer, with the descriptor skip path
_SKIP_INITIAL_SCALE = 10.0  # of the skip path: MIND patch-mean distances of ~0.1 give logit gaps of ~1


@dataclass
class SimilarityNetConfig:
    """Architecture arguments (what ``models.json`` stores under ``arguments``).

    Attributes:
        channels: features of the four 3³ convolutions of each branch (the first strided).
        embedding: dimension of the embedding space (a final 1³ convolution).
        shared: one branch for target and atlases (f_phi = f_theta) instead of the paper's two.
        input_features: what each branch reads: the image (as in the paper) or its MIND-SSC
            descriptors, computed inside the branch. MIND-SSC is the default: it is
            modality-independent by construction, so the branches learn to compare structure
            rather than to undo contrast first (measured on CPU: the image-input network was
            still at chance, triplet accuracy 0.47, after 100 steps).
        descriptor_skip: with MIND-SSC input, the embedding also holds a learned linear map
            (a metric) of the descriptors averaged over the patch and over its centre, beside
            the convolutional features, whose last layer starts near zero. At the start the
            similarity is then a MIND-SSC patch distance, the classical non-local weighting's,
            and training learns the metric and what to add to it. Measured here: a branch
            trained from scratch on a CPU budget stayed below that start (validation triplet
            accuracy 0.62 against 0.81), and with a fixed skip path the learned features
            shrank towards zero instead of helping.
    """

    channels: tuple = (16, 32, 32, 32)
    embedding: int = 16
    shared: bool = False
    input_features: InputFeatures = InputFeatures.MIND_SSC
    descriptor_skip: bool = True

    def __post_init__(self):
        self.input_features = InputFeatures(self.input_features)
        self.channels = tuple(int(c) for c in self.channels)
        if self.descriptor_skip and self.input_features is not InputFeatures.MIND_SSC:
            raise ValueError("SimilarityNetConfig: 'descriptor_skip' needs input_features 'mind_ssc'")
        if len(self.channels) != 4 or min(self.channels) < 1:
            raise ValueError(f"SimilarityNetConfig: 'channels' must be four positive ints "
                             f"(the 15³ receptive field needs exactly four 3³ layers), got {self.channels}")
        if self.embedding < 1:
            raise ValueError(f"SimilarityNetConfig: 'embedding' must be >= 1, got {self.embedding}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(channels=list(self.channels), input_features=self.input_features.value)
        return out


def _branch(in_channels: int, channels: tuple, embedding: int) -> nn.Sequential:
    from monai.networks.blocks import Convolution  # lazy: MONAI's import costs ~2 s

    layers, previous = [], in_channels
    for index, width in enumerate(channels):
        layers.append(Convolution(spatial_dims=3, in_channels=previous, out_channels=width,
                                  strides=2 if index == 0 else 1, kernel_size=3,
                                  act=_ACTIVATION, norm=None))
        previous = width
    layers.append(nn.Conv3d(previous, embedding, kernel_size=1))
    return nn.Sequential(*layers)


def _metric() -> nn.Conv3d:
    """The skip path's learned linear map of the pooled descriptors (24 = 12 over the field and
    12 over its centre, to 12): it starts as ``_SKIP_INITIAL_SCALE`` times the field's
    descriptors, so the first similarity is a MIND-SSC patch distance, and training learns which
    descriptors, and which mix of field and centre, tell a matching patch apart (metric learning
    on the descriptors: a direct gradient, unlike the learned branch that starts near zero)."""
    metric = nn.Conv3d(24, 12, kernel_size=1, bias=False)
    with torch.no_grad():
        metric.weight.zero_()
        metric.weight[:, :12, 0, 0, 0] = _SKIP_INITIAL_SCALE * torch.eye(12)
    return metric


def _near_zero(branch: nn.Sequential) -> None:
    """Start the learned features near zero, so the skip path decides at first."""
    nn.init.normal_(branch[-1].weight, std=_SKIP_INIT_STD)
    nn.init.zeros_(branch[-1].bias)


def _check_images(fn: str, name: str, image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{fn}: '{name}' must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 5 or image.shape[1] != 1:
        raise ValueError(f"{fn}: '{name}' must be (N, 1, D, H, W), got {tuple(image.shape)}")
    if min(image.shape[2:]) < 1:
        raise ValueError(f"{fn}: '{name}' has an empty grid, got {tuple(image.shape)}")


class SimilarityNet(nn.Module):
    """The two embedding branches and the eq. 7 logits.

    Args: the fields of :class:`SimilarityNetConfig` as keywords.

    Shapes: images ``(N, 1, D, H, W)`` normalised to [0, 1] (any D, H, W >= 1); embeddings
    ``(N, E + 12, D, H, W)`` with the descriptor skip path (``(N, E, ...)`` without), one per
    voxel, for the 15³ patch centred on it.
    """

    def __init__(self, **arguments):
        super().__init__()
        self.config = SimilarityNetConfig(**arguments)
        inputs = 12 if self.config.input_features is InputFeatures.MIND_SSC else 1
        self.target_branch = _branch(inputs, self.config.channels, self.config.embedding)  # f_phi
        self.atlas_branch = (self.target_branch if self.config.shared
                             else _branch(inputs, self.config.channels, self.config.embedding))  # f_theta
        if self.config.descriptor_skip:
            _near_zero(self.target_branch)
            _near_zero(self.atlas_branch)
            self.target_metric = _metric()
            self.atlas_metric = self.target_metric if self.config.shared else _metric()

    def _embed(self, branch: nn.Module, image: torch.Tensor, metric: Optional[nn.Module]) -> torch.Tensor:
        shape = image.shape[2:]
        if self.config.input_features is InputFeatures.MIND_SSC:
            image = mind_ssc(image)
        # Odd sizes 2m + 1 put half-resolution voxel k exactly on input voxel 2k, so that
        # align_corners=True interpolation brings every embedding back to its own voxel; and
        # at least _MIN_SIZE voxels, for the skip path's 7-voxel pooling at half resolution.
        pad = [p for size in reversed(shape) for p in (0, max(_MIN_SIZE - size, 1 - size % 2))]
        padded = F.pad(image.float(), pad, mode="replicate") if any(pad) else image.float()
        coarse = branch(padded)
        if metric is not None:
            # The descriptors averaged over the receptive field (and over its 3³ centre), on the
            # branch's half-resolution grid, through the branch's learned linear metric.
            centre = F.avg_pool3d(padded, 3, stride=2, padding=1, count_include_pad=False)
            field = F.avg_pool3d(centre, 7, stride=1, padding=3, count_include_pad=False)
            coarse = torch.cat([coarse, metric(torch.cat([field, centre], dim=1))], dim=1)
        fine = F.interpolate(coarse, size=padded.shape[2:], mode="trilinear", align_corners=True)
        return fine[:, :, :shape[0], :shape[1], :shape[2]]

    def embed_target(self, image: torch.Tensor) -> torch.Tensor:
        """f_phi of ``image`` ``(N, 1, D, H, W)``: ``(N, E, D, H, W)``."""
        _check_images("SimilarityNet.embed_target()", "image", image)
        return self._embed(self.target_branch, image, getattr(self, "target_metric", None))

    def embed_atlas(self, image: torch.Tensor) -> torch.Tensor:
        """f_theta of ``image`` ``(N, 1, D, H, W)``: ``(N, E, D, H, W)``."""
        _check_images("SimilarityNet.embed_atlas()", "image", image)
        return self._embed(self.atlas_branch, image, getattr(self, "atlas_metric", None))

    def logits(self, target: torch.Tensor, atlases: torch.Tensor) -> torch.Tensor:
        """``-d(f_phi(target)(x), f_theta(atlas_i)(x))`` at every voxel: ``(N, D, H, W)``.

        Args:
            target: ``(1, 1, D, H, W)`` the target image.
            atlases: ``(N, 1, D, H, W)`` the warped atlas images on the target's grid.

        Raises:
            ValueError: the shapes are not as above or the grids differ.
        """
        fn = "SimilarityNet.logits()"
        _check_images(fn, "target", target)
        _check_images(fn, "atlases", atlases)
        if target.shape[0] != 1 or target.shape[2:] != atlases.shape[2:]:
            raise ValueError(f"{fn}: 'target' must be (1, 1, D, H, W) on the atlases' grid, got "
                             f"{tuple(target.shape)} and atlases {tuple(atlases.shape)}")
        return -embedding_distance(self.embed_target(target), self.embed_atlas(atlases))

    def forward(self, target: torch.Tensor, atlases: torch.Tensor) -> torch.Tensor:
        return self.logits(target, atlases)

    def extra_repr(self) -> str:
        c = self.config
        return (f"input_features={c.input_features.value}, channels={c.channels}, embedding={c.embedding}, "
                f"shared={c.shared}, receptive_field={RECEPTIVE_FIELD}")


def embedding_distance(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Euclidean distance over the channel axis (dim 1), broadcasting the other axes.

    ``query`` ``(1 or N, E, ...)`` and ``support`` ``(N, E, ...)`` give ``(N, ...)``.
    """
    return ((query - support).pow(2).sum(dim=1) + _EPSILON).sqrt()
