"""The fusion's similarity step: the similarity network's logits (seed 000 eq. 7) for every
warped atlas, only where the atlases disagree.

Like the registration network, the similarity network runs at the scale it was trained at
(its model entry's ``working_grid``: anatomy filling a grid of about ``max_voxels``), so its
15³ receptive field covers the same share of the anatomy as in training; the logits are
interpolated back to the working grid. The atlases go through the network as the registration
network takes them (:func:`~crossmodalmas.registration_engine.atlases_per_pass`): all as one
batch on CUDA, one at a time on the CPU, where an atlas's embedding and its temporaries took
~0.1 GB and ten at once were the run's peak. Only the box around the voxels where the warped
atlases disagree is embedded (with the receptive field's context around it); elsewhere the
label is decided and the logits stay 0.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from crossmodalmas.model_cache import cached_network
from crossmodalmas.models import LoadedModel, find_model
from crossmodalmas.nets.similarity import HALO, embedding_distance
from crossmodalmas.registration_engine import atlases_per_pass, network_shape


SimilarityModel = LoadedModel  # a loaded similarity network and its entry


def load_similarity_model(name_or_path: Optional[str], device: torch.device) -> SimilarityModel:
    """The similarity network ``name_or_path`` names (None: the bundled default).

    Loaded once per process and device (:mod:`crossmodalmas.model_cache`).

    Raises:
        InputError: unknown model, none bundled, missing or damaged weights.
    """
    entry = find_model(name_or_path, "similarity", flag="--similarity-model")
    return SimilarityModel(entry, cached_network(entry, device))


def _box(mask: torch.Tensor) -> Optional[tuple[slice, ...]]:
    """The bounding box of a ``(D, H, W)`` bool mask as slices; None when it is empty."""
    if not bool(mask.any()):
        return None
    box = []
    for axis in range(3):
        present = mask.any(dim=tuple(a for a in range(3) if a != axis)).nonzero()[:, 0]
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def _resize(tensor: torch.Tensor, size) -> torch.Tensor:
    size = tuple(int(s) for s in size)
    if tuple(tensor.shape[2:]) == size:
        return tensor
    return F.interpolate(tensor, size=size, mode="trilinear", align_corners=True)


@torch.no_grad()
def similarity_logits(model: SimilarityModel, target: torch.Tensor, atlases: torch.Tensor,
                      where: torch.Tensor, spacing_mm: float) -> torch.Tensor:
    """``-d(f_phi(T)(x), f_theta(A_i)(x))`` for every warped atlas ``i``, inside the box of ``where``.

    Args:
        model: the loaded similarity network.
        target: ``(1, 1, D, H, W)`` normalised target on the working grid.
        atlases: ``(N, 1, D, H, W)`` normalised warped atlas images on the same grid.
        where: ``(D, H, W)`` bool, the voxels whose logits are needed (where atlases disagree).
        spacing_mm: the working grid's isotropic spacing.

    Returns:
        ``(N, D, H, W)`` float32 logits; 0 outside the box around ``where``.
    """
    shape = tuple(target.shape[2:])
    out = torch.zeros((atlases.shape[0], *shape), dtype=torch.float32, device=target.device)
    box = _box(where)
    if box is None:
        return out
    small = network_shape(shape, spacing_mm, model.entry)
    scale = [s / n for s, n in zip(small, shape)]  # network voxels per working voxel (<= 1)
    # The receptive field's context, in working voxels, around the box: its interior then
    # embeds as it would in the whole region.
    halo = [math.ceil(HALO / f) for f in scale]
    # Even starts keep the branches' stride-2 grid on the whole region's (at the network's scale).
    crop = tuple(slice(max(0, b.start - h) // 2 * 2, min(n, b.stop + h)) for b, h, n in zip(box, halo, shape))
    crop_shape = [c.stop - c.start for c in crop]
    net_shape = [max(1, round(c * f)) for c, f in zip(crop_shape, scale)]
    device = next(model.net.parameters()).device
    target_crop = _resize(target[(Ellipsis, *crop)], net_shape).to(device)
    query = model.net.embed_target(target_crop)
    inner = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, crop))
    count = atlases.shape[0]
    size = atlases_per_pass(count, device)
    for first in range(0, count, size):
        chunk = slice(first, min(first + size, count))
        support = model.net.embed_atlas(_resize(atlases[(chunk, Ellipsis, *crop)], net_shape).to(device))
        logits = _resize(-embedding_distance(query, support)[:, None].float(), crop_shape).to(target.device)[:, 0]
        out[(chunk, *box)] = logits[(slice(None), *inner)]
    return out
