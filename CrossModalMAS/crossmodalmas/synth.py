"""Synthetic cross-modality training pairs from label maps (SynthMorph/SynthSeg manner).

From one integer label map, draw two random smooth deformations (a stationary velocity field
integrated by scaling and squaring, then a random affine) and two independent random
*contrasts* (a random mean and spread per label, a bias field, blur, resolution loss along
one axis, gamma, noise). The two images look like two modalities of two different subjects,
and their labels correspond by construction, which is all the label-driven losses of the
papers need (seed 000 eq. 3-5, seed 004 eq. 1).

Hoffmann et al., "SynthMorph: learning contrast-invariant registration without acquired
images", IEEE TMI 2022; Billot et al., "SynthSeg", MedIA 2023.

Everything is batched torch on any device. Displacements are in voxels of the label map's
grid, channels (k, j, i) (:mod:`crossmodalmas.transforms`). Images come out normalised the
way the pipeline normalises real ones (0.5-99.5 percentiles to [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from crossmodalmas.transforms import identity_grid, integrate_velocity, resize_flow, sample_at, warp


@dataclass
class SynthConfig:
    """Ranges of the random draws (each sample draws its own values uniformly in them).

    Attributes:
        velocity_std: maximum std of the velocity noise, voxels of the label grid.
        velocity_coarse: the velocity noise is drawn on a grid this many times coarser
            (smoothness: larger is smoother).
        integration_steps: scaling-and-squaring steps.
        rotation_deg, scaling, shear, translation: affine ranges (+-); ``scaling`` and
            ``shear`` as fractions, ``translation`` as a fraction of the grid size. Small by
            default: the pipeline aligns affinely before the network runs.
        intensity_std: maximum within-label spread, in units of the [0, 1] label means.
        bias_std: maximum std of the log bias field (drawn on a 4^3 grid).
        blur_sigma: maximum Gaussian blur, voxels.
        resolution_loss: maximum slab thickness factor along one random axis.
        gamma_std: std of the log of the gamma exponent.
        noise_std: maximum additive noise after normalisation.
        dark_background: probability that label 0 is dark (air, as in CT and MR) rather than
            random (kept for robustness; mostly dark, since the affine pre-alignment relies
            on the body standing out from the air).
        same_contrast: draw one contrast for both images (same-modality pairs, OASIS).
    """

    velocity_std: float = 3.0
    velocity_coarse: int = 8
    integration_steps: int = 6
    rotation_deg: float = 5.0
    scaling: float = 0.05
    shear: float = 0.02
    translation: float = 0.03
    intensity_std: float = 0.15
    bias_std: float = 0.3
    blur_sigma: float = 1.0
    resolution_loss: float = 3.0
    gamma_std: float = 0.25
    noise_std: float = 0.05
    dark_background: float = 0.9
    same_contrast: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SynthPair:
    """A labelled pair: images ``(N, 1, D, H, W)`` float in [0, 1], labels int64 alike, and the
    true fields between them (``forward``: U with ``warp(a, U) = b``; ``backward``: V with
    ``warp(b, V) = a``), ``(N, 3, D, H, W)`` in voxels; None for a pair of real images
    (:mod:`crossmodalmas.train.real_pairs`), whose correspondence nobody knows."""

    image_a: torch.Tensor
    labels_a: torch.Tensor
    image_b: torch.Tensor
    labels_b: torch.Tensor
    forward: Optional[torch.Tensor]
    backward: Optional[torch.Tensor]


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def random_velocity(n: int, shape, config: SynthConfig, generator, device=None) -> torch.Tensor:
    """Smooth random velocity ``(n, 3, D/2, H/2, W/2)`` in voxels of that half grid.

    Integrating at half resolution and upsampling the displacement is what makes a 128^3
    deformation cheap; the field is smooth at that scale anyway.
    """
    coarse = [max(2, s // config.velocity_coarse) for s in shape]
    half = [max(2, s // 2) for s in shape]
    std = _uniform(n, 0.0, config.velocity_std, generator, device).view(n, 1, 1, 1, 1)
    noise = torch.randn((n, 3, *coarse), generator=generator, device=device) * std
    return F.interpolate(noise, size=half, mode="trilinear", align_corners=True) / 2.0


def _rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(n, 3) angles in radians -> (n, 3, 3) rotations about the three axes in turn."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1)
    return rx.view(-1, 3, 3) @ ry.view(-1, 3, 3) @ rz.view(-1, 3, 3)


def random_affine(n: int, shape, config: SynthConfig, generator, device=None):
    """Random affine maps about the grid centre, in voxels (k, j, i).

    Returns:
        ``(matrix, offset)``: ``(n, 3, 3)`` and ``(n, 3)``; a point ``p`` maps to
        ``matrix @ (p - c) + c + offset`` with ``c`` the grid centre.
    """
    def draw(size, bound):
        return (torch.rand((n, size), generator=generator, device=device) * 2 - 1) * bound

    rotation = _rotation_matrices(draw(3, math.radians(config.rotation_deg)))
    scaling = torch.diag_embed(torch.exp(draw(3, config.scaling)))
    shear = torch.eye(3, device=device).repeat(n, 1, 1)
    upper = torch.triu_indices(3, 3, offset=1)
    shear[:, upper[0], upper[1]] = draw(3, config.shear)
    sizes = torch.tensor(shape, dtype=torch.float32, device=device)
    return rotation @ scaling @ shear, draw(3, config.translation) * sizes


@dataclass
class Deformation:
    """A random deformation ``phi(x) = affine(x + svf(x))`` (pull-back, voxels (k, j, i)).

    Attributes:
        svf: ``(n, 3, D, H, W)`` displacement of ``exp(v)``.
        svf_inverse: ``(n, 3, D, H, W)`` displacement of ``exp(-v)``, its inverse.
        matrix, offset: the affine part (:func:`random_affine`).
    """

    svf: torch.Tensor
    svf_inverse: torch.Tensor
    matrix: torch.Tensor
    offset: torch.Tensor

    def _centre(self) -> torch.Tensor:
        shape = self.svf.shape[2:]
        return ((torch.tensor(shape, dtype=torch.float32, device=self.svf.device) - 1) / 2).view(1, 3, 1, 1, 1)

    def points(self) -> torch.Tensor:
        """``phi(x)`` at every voxel ``x``: ``(n, 3, D, H, W)`` coordinates."""
        shape, n = self.svf.shape[2:], self.svf.shape[0]
        centre = self._centre()
        moved = torch.einsum("nij,njdhw->nidhw", self.matrix,
                             identity_grid(shape, self.svf.device) + self.svf - centre)
        return moved + centre + self.offset.view(n, 3, 1, 1, 1)

    def displacement(self) -> torch.Tensor:
        return self.points() - identity_grid(self.svf.shape[2:], self.svf.device)

    def inverse_points(self, points: torch.Tensor) -> torch.Tensor:
        """``phi^-1(p)`` for coordinates ``p`` ``(n, 3, d, h, w)``: undo the affine, then
        ``exp(-v)`` sampled there."""
        n, centre = points.shape[0], self._centre()
        shifted = points - centre - self.offset.view(n, 3, 1, 1, 1)
        q = torch.einsum("nij,njdhw->nidhw", torch.linalg.inv(self.matrix), shifted) + centre
        return q + sample_at(self.svf_inverse, q, padding_mode="border")


def random_deformation(n: int, shape, config: SynthConfig, generator, device=None) -> Deformation:
    """``exp(v)`` followed by a random affine, with everything needed to invert it."""
    velocity = random_velocity(n, shape, config, generator, device)
    steps = config.integration_steps
    svf = resize_flow(integrate_velocity(velocity, steps), shape)
    svf_inverse = resize_flow(integrate_velocity(-velocity, steps), shape)
    matrix, offset = random_affine(n, shape, config, generator, device)
    return Deformation(svf, svf_inverse, matrix, offset)


def true_correspondence(to_atlas: Deformation, to_target: Deformation) -> torch.Tensor:
    """The displacement U with ``warp(atlas, U) = target`` for a pair drawn from one label map:
    ``U(x) = phi_a^-1(phi_b(x)) - x`` on the target grid (voxels, (k, j, i)). Swap the
    arguments for V. Exact up to the interpolation of ``exp(-v)``."""
    points = to_target.points()
    return to_atlas.inverse_points(points) - identity_grid(points.shape[2:], points.device)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each of ``(n, 1, D, H, W)`` with its own isotropic sigma ``(n,)`` in voxels,
    separably, as one grouped convolution per axis."""
    n = images.shape[0]
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma.clamp(min=1e-3).view(n, 1)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    out = images.transpose(0, 1)  # (1, n, D, H, W): samples as channels, groups=n
    for axis in range(3):
        view = [n, 1, 1, 1, 1]
        view[2 + axis] = 2 * radius + 1
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(view), groups=n)
    return out.transpose(0, 1)


def _bias_field(n: int, shape, config: SynthConfig, generator, device) -> torch.Tensor:
    std = _uniform(n, 0.0, config.bias_std, generator, device).view(n, 1, 1, 1, 1)
    coarse = torch.randn((n, 1, 4, 4, 4), generator=generator, device=device) * std
    return torch.exp(F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True))


def _resolution_loss(images: torch.Tensor, config: SynthConfig, generator) -> torch.Tensor:
    """Thick slices along one random axis per sample: average down, interpolate back."""
    out = []
    for image in images.split(1):
        factor = float(_uniform(1, 1.0, config.resolution_loss, generator, images.device))
        axis = int(torch.randint(3, (1,), generator=generator, device=images.device))
        shape = list(image.shape[2:])
        low = list(shape)
        low[axis] = max(2, round(shape[axis] / factor))
        if factor > 1.1:
            image = F.interpolate(F.interpolate(image, size=low, mode="area"), size=shape,
                                  mode="trilinear", align_corners=False)
        out.append(image)
    return torch.cat(out)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """Per-image 0.5-99.5 percentiles to [0, 1], as ``preprocess.robust_normalise`` does."""
    flat = images.flatten(1)
    step = max(1, flat.shape[1] // 200_000)  # quantile on a subsample: same answer, faster
    bounds = torch.quantile(flat[:, ::step], torch.tensor([0.005, 0.995], device=images.device), dim=1)
    low, high = (b.view(-1, 1, 1, 1, 1) for b in bounds)
    return ((images - low) / (high - low).clamp(min=1e-6)).clamp(0.0, 1.0)


def random_lookup(n: int, num_labels: int, config: SynthConfig, generator, device=None):
    """Per-sample, per-label mean ``(n, K)`` in [0, 1] and spread ``(n, K)``."""
    means = torch.rand((n, num_labels), generator=generator, device=device)
    dark = torch.rand(n, generator=generator, device=device) < config.dark_background
    means[:, 0] = torch.where(dark, torch.zeros_like(means[:, 0]), means[:, 0])
    spreads = torch.rand((n, num_labels), generator=generator, device=device) * config.intensity_std
    return means, spreads


def render(labels: torch.Tensor, lookup, config: SynthConfig, generator) -> torch.Tensor:
    """An image of random contrast from ``labels`` ``(n, 1, D, H, W)`` (int64).

    Args:
        labels: class indices in ``[0, K)``.
        lookup: ``(means, spreads)`` as :func:`random_lookup` returns.

    Returns:
        ``(n, 1, D, H, W)`` float image normalised to [0, 1].
    """
    n, device, shape = labels.shape[0], labels.device, labels.shape[2:]
    means, spreads = lookup
    flat = labels.flatten(1)
    mean = torch.gather(means, 1, flat).view_as(labels).float()
    spread = torch.gather(spreads, 1, flat).view_as(labels).float()
    image = mean + spread * torch.randn(labels.shape, generator=generator, device=device)
    image = _gaussian_blur(image, _uniform(n, 0.0, config.blur_sigma, generator, device))
    image = _resolution_loss(image, config, generator)
    image = image.clamp(min=0) * _bias_field(n, shape, config, generator, device)
    gamma = torch.exp(torch.randn(n, generator=generator, device=device) * config.gamma_std)
    image = _normalise(image) ** gamma.view(n, 1, 1, 1, 1)
    noise = _uniform(n, 0.0, config.noise_std, generator, device).view(n, 1, 1, 1, 1)
    return _normalise(image + noise * torch.randn(labels.shape, generator=generator, device=device))


def _check_labels(labels: torch.Tensor, num_labels: int) -> None:
    if labels.dim() != 4:
        raise ValueError(f"synth_pair(): 'labels' must be (N, D, H, W), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        raise ValueError(f"synth_pair(): 'labels' must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise ValueError(f"synth_pair(): 'labels' must lie in [0, {num_labels}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def synth_pair(labels: torch.Tensor, num_labels: int, config: SynthConfig,
               generator: torch.Generator) -> SynthPair:
    """Two deformed, differently contrasted images of each label map in ``labels``.

    Args:
        labels: ``(N, D, H, W)`` integer class indices in ``[0, num_labels)``.
        num_labels: K, background included.
        config: the random ranges.
        generator: the torch generator on ``labels``' device (the draw is reproducible).

    Returns:
        :class:`SynthPair` of images ``(N, 1, D, H, W)`` in [0, 1] and their labels.

    Raises:
        ValueError: ``labels`` is not an integer ``(N, D, H, W)`` map within ``[0, num_labels)``.
    """
    _check_labels(labels, num_labels)
    n, shape, device = labels.shape[0], tuple(labels.shape[1:]), labels.device
    source = labels.unsqueeze(1).float()
    lookup_a = random_lookup(n, num_labels, config, generator, device)
    lookup_b = lookup_a if config.same_contrast else random_lookup(n, num_labels, config, generator, device)
    out, deformations = [], []
    for lookup in (lookup_a, lookup_b):
        deformation = random_deformation(n, shape, config, generator, device)
        warped = warp(source, deformation.displacement(), mode="nearest", padding_mode="zeros").long()
        out += [render(warped, lookup, config, generator), warped]
        deformations.append(deformation)
    return SynthPair(*out, true_correspondence(*deformations), true_correspondence(*deformations[::-1]))
