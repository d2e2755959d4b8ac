"""SynthMorph-style random label maps in torch: smooth noise, argmax, optional smooth warp.

A random-shape label map (Hoffmann et al., *SynthMorph: learning contrast-invariant
registration without acquired images*, IEEE TMI 2022, section III-B) is the voxel-wise argmax
over ``K`` channels of Gaussian noise drawn on a coarse grid and upsampled smoothly to the
output grid, then optionally warped by a random smooth displacement. It gives a registration
network shapes of every size and orientation, so a model trained on them also serves anatomy
it never saw; :func:`fill_background` paints such shapes into the unlabelled part of a real
label map, so a map with few labels still has texture everywhere.

Everything is vectorised torch and runs on any device. The noise is drawn on the
generator's device and then moved to ``device``, so one seed gives the same map on CPU and
GPU. The upsampling is trilinear with ``align_corners=True`` (the package's one choice, see
:mod:`crossmodalmas.transforms`), done as three small matrix products and an argmax in slabs,
which is faster than ``F.interpolate`` on CPU and never holds all ``K`` full-size channels.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from crossmodalmas.transforms import warp

_SLAB_ELEMENTS = 2 ** 22  # floats per argmax slab (16 MB)


def _check_generator(name: str, generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}: 'generator' must be a torch.Generator, got {type(generator).__name__}")


def _check_int(name: str, arg: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: '{arg}' must be an integer >= {minimum}, got {value!r}")
    return value


def _check_shape(name: str, shape) -> tuple[int, int, int]:
    try:
        values = tuple(shape)
    except TypeError as error:
        raise ValueError(f"{name}: 'shape' must be 3 positive integers (D, H, W), got {shape!r}") from error
    if len(values) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in values):
        raise ValueError(f"{name}: 'shape' must be 3 positive integers (D, H, W), got {shape!r}")
    return values


def _linear_matrix(size_in: int, size_out: int, device, dtype=torch.float32) -> torch.Tensor:
    """``(size_out, size_in)`` weights of 1-D linear interpolation, ``align_corners=True``."""
    position = torch.linspace(0.0, size_in - 1.0, size_out, device=device, dtype=dtype)
    low = position.floor().long().clamp(max=size_in - 2)
    weight = position - low
    rows = torch.arange(size_out, device=device)
    matrix = torch.zeros(size_out, size_in, device=device, dtype=dtype)
    matrix[rows, low] = 1.0 - weight
    matrix[rows, low + 1] += weight
    return matrix


def _coarse_shape(shape, factor: int) -> tuple[int, ...]:
    """Coarse grid whose nodes are about ``factor`` output voxels apart (at least 2 per axis)."""
    return tuple(max(2, math.ceil((s - 1) / factor) + 1) for s in shape)


def _upsampled_argmax(noise: torch.Tensor, shape) -> torch.Tensor:
    """Argmax over channels of ``noise`` ``(K, d, h, w)`` upsampled trilinearly to ``shape``."""
    channels, size_d = noise.shape[0], noise.shape[1]
    along_d, along_h, along_w = (_linear_matrix(n, s, noise.device) for n, s in zip(noise.shape[1:], shape))
    planes = (along_h @ (noise @ along_w.T)).reshape(channels, size_d, -1)  # (K, d, H*W)
    out = torch.empty(shape[0], planes.shape[2], dtype=torch.int64, device=noise.device)
    slab = max(1, _SLAB_ELEMENTS // (channels * planes.shape[2]))
    for start in range(0, shape[0], slab):
        out[start:start + slab] = torch.argmax(along_d[start:start + slab] @ planes, dim=0)
    return out.view(shape)


def _smooth_field(shape, channels: int, factor: int, generator: torch.Generator, device) -> torch.Tensor:
    """``(1, channels, D, H, W)`` Gaussian noise on a coarse grid, upsampled trilinearly."""
    coarse = torch.randn((1, channels, *_coarse_shape(shape, factor)), generator=generator,
                         device=generator.device).to(device)
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)


def random_shapes(shape: tuple[int, int, int], num_labels: int, generator: torch.Generator,
                  device: Optional[torch.device | str] = None, coarse_factor: int = 8, *,
                  warp_std: float = 0.0) -> torch.Tensor:
    """A random label map: argmax of ``num_labels`` channels of smooth noise.

    Each channel is standard Gaussian noise on a coarse grid (nodes ``coarse_factor`` voxels
    apart) upsampled trilinearly to ``shape``; the label of a voxel is the channel with the
    largest value, so the shapes are blobs about ``coarse_factor`` to ``2 * coarse_factor``
    voxels across. With ``warp_std > 0`` the map is then resampled (nearest neighbour) through
    a smooth random displacement whose components have std ``warp_std`` voxels of the output
    grid, drawn with nodes ``2 * coarse_factor`` voxels apart: curvier, less polyhedral edges.

    Args:
        shape: output shape (D, H, W).
        num_labels: ``K >= 1``; labels are 0..K-1 (every value need not occur).
        generator: draws the noise (on its own device; same seed, same map on any device).
        device: where the result lives; None: the generator's device.
        coarse_factor: output voxels between coarse noise nodes, >= 1.
        warp_std: std of the random displacement in output voxels, >= 0 (0: no warp).

    Returns:
        int64 tensor of shape ``shape`` on ``device``, values in 0..K-1.

    Raises:
        ValueError: a bad shape, ``num_labels``, ``coarse_factor`` or ``warp_std``.
        TypeError: ``generator`` is not a torch.Generator.
    """
    name = "random_shapes()"
    shape = _check_shape(name, shape)
    _check_int(name, "num_labels", num_labels, 1)
    _check_generator(name, generator)
    _check_int(name, "coarse_factor", coarse_factor, 1)
    if not isinstance(warp_std, (int, float)) or isinstance(warp_std, bool) or not 0.0 <= warp_std < math.inf:
        raise ValueError(f"{name}: 'warp_std' must be a finite number >= 0 (voxels), got {warp_std!r}")
    device = torch.device(device) if device is not None else generator.device
    noise = torch.randn((num_labels, *_coarse_shape(shape, coarse_factor)), generator=generator,
                        device=generator.device).to(device)
    labels = _upsampled_argmax(noise, shape)
    if warp_std > 0.0:
        flow = _smooth_field(shape, 3, 2 * coarse_factor, generator, device) * warp_std
        labels = warp(labels[None, None].float(), flow, mode="nearest")[0, 0].long()
    return labels


def _mask_box(mask: torch.Tensor) -> tuple[slice, ...]:
    """The bounding box of a non-empty boolean mask, as slices."""
    box = []
    for axis in range(mask.dim()):
        others = tuple(a for a in range(mask.dim()) if a != axis)
        hits = torch.nonzero(mask.any(dim=others)).flatten()
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def fill_background(labels: torch.Tensor, background_mask: torch.Tensor, num_new: int,
                    generator: torch.Generator, coarse_factor: int = 8) -> torch.Tensor:
    """Paint ``num_new`` random-shape labels into the masked voxels of a label map.

    The shapes (:func:`random_shapes`, drawn on the mask's bounding box only) take the new
    values ``labels.max() + 1 ... labels.max() + num_new`` (from 1 when ``labels`` is all
    zero); a shape that misses the mask leaves its value unused, so relabel if contiguous
    values are needed. Voxels outside the mask keep their label. An empty mask returns a copy
    and draws nothing.

    Args:
        labels: integer tensor (D, H, W), values >= 0.
        background_mask: bool tensor of the same shape and device: the voxels to paint.
        num_new: number of new labels, >= 1.
        generator: draws the shapes.
        coarse_factor: as in :func:`random_shapes`.

    Returns:
        A new tensor of ``labels``' dtype, shape and device.

    Raises:
        ValueError: ``labels`` not 3-D integer, the mask not bool of its shape and device, or
            a bad ``num_new`` / ``coarse_factor``.
        TypeError: ``labels`` or ``background_mask`` is not a tensor, or a bad ``generator``.
    """
    name = "fill_background()"
    for arg, value in (("labels", labels), ("background_mask", background_mask)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: '{arg}' must be a torch.Tensor, got {type(value).__name__}")
    if labels.dim() != 3 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name}: 'labels' must be a 3-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if (background_mask.dtype != torch.bool or background_mask.shape != labels.shape
            or background_mask.device != labels.device):
        raise ValueError(f"{name}: 'background_mask' must be a bool tensor of the shape and device of 'labels' "
                         f"{tuple(labels.shape)} {labels.device}, got {background_mask.dtype} "
                         f"{tuple(background_mask.shape)} {background_mask.device}")
    _check_int(name, "num_new", num_new, 1)
    _check_generator(name, generator)
    _check_int(name, "coarse_factor", coarse_factor, 1)
    out = labels.clone()
    if not bool(background_mask.any()):
        return out
    box = _mask_box(background_mask)
    shape = tuple(s.stop - s.start for s in box)
    shapes = random_shapes(shape, num_new, generator, device=labels.device, coarse_factor=coarse_factor)
    first_new = int(labels.max()) + 1
    region, inside = out[box], background_mask[box]
    region[inside] = (shapes[inside] + first_new).to(labels.dtype)
    return out
