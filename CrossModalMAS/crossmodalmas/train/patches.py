"""Query and support patches for training the similarity network (seed 000, Algorithm 1).

A *query* is a target voxel on a label boundary (seed 000 samples "along the boundary" because
such patches hold several structures); a *candidate support* is the warped atlas's patch at
the query shifted by a small offset (offset 0 is what the label fusion compares; the shifted
ones stand for the local misregistrations it must tell apart). The ground truth of eq. 9 is
the Dice of the query's structure between the two 15³ label patches (:func:`patch_dice`). Patches are never cut out: everything is index
arithmetic on flattened volumes, and the network's dense embeddings are read at the same
indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmodalmas.nets.similarity import embedding_distance

PATCH = 15
_CHUNK = 128  # queries per chunk in patch_dice
"""Side of the label patches whose Dice is the ground truth (the network's receptive field)."""


def boundary_mask(labels: torch.Tensor) -> torch.Tensor:
    """Voxels whose 3³ neighbourhood holds more than one label: ``(D, H, W)`` bool.

    Args:
        labels: ``(D, H, W)`` integer labels.
    """
    values = labels[None, None].float()
    high = F.max_pool3d(values, 3, stride=1, padding=1)
    low = -F.max_pool3d(-values, 3, stride=1, padding=1)
    return (high != low)[0, 0]


def sample_queries(labels: torch.Tensor, count: int, margin: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``count`` random boundary voxels at least ``margin`` voxels inside the grid.

    Returns:
        ``(Q, 3)`` int64 (k, j, i) positions, ``Q <= count`` (fewer where the boundary is short).
    """
    mask = boundary_mask(labels)
    inner = torch.zeros_like(mask)
    inner[margin:-margin or None, margin:-margin or None, margin:-margin or None] = True
    positions = torch.nonzero(mask & inner)
    if positions.shape[0] > count:
        chosen = torch.randperm(positions.shape[0], generator=generator, device=generator.device)[:count]
        positions = positions[chosen.to(positions.device)]
    return positions


def random_offsets(queries: int, candidates: int, max_offset: int, generator: torch.Generator) -> torch.Tensor:
    """``(Q, K, 3)`` integer offsets: candidate 0 at the query itself, the first half of the
    others within one voxel of it (small misalignments, which give most of the patches with
    Dice > thr1), the rest within ``max_offset`` voxels along each axis."""
    offsets = torch.randint(-max_offset, max_offset + 1, (queries, candidates, 3), generator=generator,
                            device=generator.device)
    near = torch.randint(-1, 2, (queries, candidates, 3), generator=generator, device=generator.device)
    offsets[:, 1:1 + (candidates - 1) // 2] = near[:, 1:1 + (candidates - 1) // 2]
    offsets[:, 0] = 0
    return offsets


def _flat(positions: torch.Tensor, shape) -> torch.Tensor:
    _, h, w = shape
    return (positions[..., 0] * h + positions[..., 1]) * w + positions[..., 2]


def _patch_offsets(device) -> torch.Tensor:
    r = PATCH // 2
    axis = torch.arange(-r, r + 1, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def patch_dice(target_labels: torch.Tensor, atlas_labels: torch.Tensor, queries: torch.Tensor,
               offsets: torch.Tensor) -> torch.Tensor:
    """Dice of the query's own structure between the target's 15³ label patch at each query
    and the atlas's patch at the query plus each offset: with ``c`` the target's label at the
    query, ``2 |{T = c} & {A = c}| / (|{T = c}| + |{A = c}|)``.

    Why the centre's structure and not all labels at once: the fusion asks, at each voxel,
    whether an atlas's label *there* is right, which is what this Dice measures (seed 000
    compares myocardium patches). Measured on synthetic pairs warped by their true field, the
    all-labels Dice of boundary patches with many small structures stayed below thr1 = 0.9
    for almost every candidate (two nearest-neighbour resamplings already cost that much),
    which left no positive for eq. 9.

    Args:
        target_labels, atlas_labels: ``(D, H, W)`` integer labels on the same grid.
        queries: ``(Q, 3)`` positions at least ``PATCH // 2 + max|offset|`` inside the grid.
        offsets: ``(Q, K, 3)`` offsets of the candidate supports.

    Returns:
        ``(Q, K)`` float Dice in [0, 1].
    """
    shape = target_labels.shape
    patch = _flat(_patch_offsets(queries.device), shape)  # (P,) flat offsets, may be negative
    target, atlas = target_labels.flatten(), atlas_labels.flatten()
    at_query = _flat(queries, shape)
    shifted = _flat(offsets, shape)  # (Q, K)
    out = []
    # Chunks of queries bound the (chunk, K, P) index tensor (12 candidates x 3375 voxels each).
    for start in range(0, queries.shape[0], _CHUNK):
        query = at_query[start:start + _CHUNK]
        centre = target[query][:, None, None]  # (q, 1, 1)
        in_target = target[query[:, None, None] + patch] == centre  # (q, 1, P)
        in_atlas = atlas[query[:, None, None] + shifted[start:start + _CHUNK, :, None] + patch] == centre
        agree = (in_target & in_atlas).sum(-1).float()
        total = in_target.sum(-1).float() + in_atlas.sum(-1).float()  # >= 1: the centre is in T's patch
        out.append(2 * agree / total)
    return torch.cat(out) if out else torch.zeros(offsets.shape[:2], device=queries.device)


def embeddings_at(embedding: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Read ``(E, D, H, W)`` embeddings at ``(..., 3)`` positions: ``(..., E)``."""
    flat = embedding.flatten(1)  # (E, DHW)
    index = _flat(positions, embedding.shape[1:])
    return flat[:, index.flatten()].T.reshape(*index.shape, embedding.shape[0])


def triplets(dice: torch.Tensor, positive: float, negative: float, generator: torch.Generator):
    """One positive (Dice > ``positive``) and one negative (Dice < ``negative``) candidate per
    query, at random, for the queries that have both (eq. 9: y = 1 and y = 0, y_j != y_k).

    Returns:
        ``(rows, positives, negatives)``: int64 ``(T,)`` each, indexing ``dice``'s rows and columns.
    """
    noise = torch.rand(dice.shape, generator=generator, device=generator.device).to(dice.device)
    is_positive, is_negative = dice > positive, dice < negative
    rows = torch.nonzero(is_positive.any(1) & is_negative.any(1))[:, 0]
    # A random member of each set: the largest random key among its members.
    positives = torch.where(is_positive, noise, -1.0)[rows].argmax(1)
    negatives = torch.where(is_negative, noise, -1.0)[rows].argmax(1)
    return rows, positives, negatives


def support_logits(query_embedding: torch.Tensor, support_embedding: torch.Tensor, queries: torch.Tensor,
                   offsets: torch.Tensor) -> torch.Tensor:
    """Eq. 7's ``-d`` between the query embedding at each query and the support embedding at the
    query plus each offset.

    Args:
        query_embedding, support_embedding: ``(E, D, H, W)`` embeddings of the target and the warped atlas.
        queries: ``(Q, 3)`` positions; offsets: ``(Q, K, 3)``.

    Returns:
        ``(Q, K)`` logits.
    """
    query = embeddings_at(query_embedding, queries)  # (Q, E)
    support = embeddings_at(support_embedding, queries[:, None] + offsets)  # (Q, K, E)
    return -embedding_distance(query[:, :, None], support.transpose(1, 2))
