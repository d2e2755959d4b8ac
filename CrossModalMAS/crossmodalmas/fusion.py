"""Label fusion of warped atlas labels: majority vote, non-local weighted vote, label overlap,
and the similarity network's patch-based label fusion.

All functions take the atlases' labels already warped onto the target's working grid, as class
indices ``(N, 1, D, H, W)`` in ``[0, C)`` (``C`` classes, background 0), and return a
:class:`Fused` with the per-class probabilities, each atlas's share of the vote at every voxel
(what the Slicer module shows as weight maps) and a per-voxel uncertainty. Every method is a
weighted vote ``p(c, x) = sum_i sum_s w_i(x, s) [L_i(x + s) = c] / Z(x)``; the methods differ
in the weights. Everything is vectorised over voxels and atlases; the only Python loops are
over atlases in chunks, over pairs of atlases (label overlap) and over the few search shifts.
The votes that read an atlas's label at ``x`` only (all but NLWV) are counted only where the
atlases disagree: elsewhere the label is already decided (probability 1, uncertainty 0).

The weights of the similarity-network PLF (seed 000) come from
:mod:`crossmodalmas.similarity_engine`; this module takes them as logits.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from .options import FusionMethod
from .transforms import one_hot

H_EPSILON = 1e-6
"""Added to the NLWV bandwidth ``h(x)`` (squared feature units) so it is never zero."""

LOCAL_OVERLAP_WINDOW = 15
"""Side, in working-grid voxels, of the box the local label-overlap weights count Dice in
(``loa-local``): the similarity network's patch size, so the two local methods compare alike."""

MIN_OVERLAP_WEIGHT = 1e-6
"""Floor of the label-overlap weights, so a voxel where every atlas scores 0 falls back to
equal weights instead of dividing by zero."""


@dataclass
class Fused:
    """Result of a label fusion, on the working grid of the warped labels.

    Attributes:
        probabilities: ``(C, D, H, W)`` float32, sums to 1 over ``C`` at every voxel.
        weights: ``(N, D, H, W)`` float32, each atlas's share of the vote at each voxel;
            sums to 1 over ``N``.
        uncertainty: ``(D, H, W)`` float32 in ``[0, 1]``: entropy of ``probabilities``
            divided by ``log(C)`` (0 where the vote is unanimous; 0 everywhere when ``C == 1``).
    """

    probabilities: torch.Tensor
    weights: torch.Tensor
    uncertainty: torch.Tensor
    decided: Optional[torch.Tensor] = field(default=None, repr=False)
    where: Optional[torch.Tensor] = field(default=None, repr=False)  # flat indices where atlases disagree

    @property
    def labels(self) -> torch.Tensor:
        """``(D, H, W)`` int64 class indices: argmax of ``probabilities`` over ``C`` (kept from
        the vote where it was counted only where the atlases disagree)."""
        return self.decided if self.decided is not None else self.probabilities.argmax(dim=0)


def _check_labels(fn: str, labels: torch.Tensor, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{fn}: 'labels' must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 5 or labels.shape[1] != 1:
        raise ValueError(f"{fn}: 'labels' must be (N, 1, D, H, W), got {tuple(labels.shape)}")
    if labels.shape[0] == 0:
        raise ValueError(f"{fn}: 'labels' holds no atlases (N=0); fusion needs at least one")
    if labels.numel() == 0:
        raise ValueError(f"{fn}: 'labels' has an empty grid, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{fn}: 'labels' must be an integer tensor of class indices, got {labels.dtype}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{fn}: 'num_classes' must be an int >= 1, got {num_classes!r}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{fn}: 'labels' must hold class indices in [0, {num_classes}), got values in [{low}, {high}]"
        )


def _check_int(fn: str, name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{fn}: '{name}' must be an int >= {minimum}, got {value!r}")


def _check_features(fn: str, labels: torch.Tensor, target: torch.Tensor, atlas: torch.Tensor) -> None:
    spatial = tuple(labels.shape[2:])
    for name, value in (("target_features", target), ("atlas_features", atlas)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{fn}: '{name}' must be a torch.Tensor, got {type(value).__name__}")
    if target.dim() != 5 or target.shape[0] != 1 or tuple(target.shape[2:]) != spatial:
        raise ValueError(
            f"{fn}: 'target_features' must be (1, F, D, H, W) with D, H, W={spatial}, "
            f"got {tuple(target.shape)}"
        )
    expected = (labels.shape[0], target.shape[1], *spatial)
    if tuple(atlas.shape) != expected:
        raise ValueError(
            f"{fn}: 'atlas_features' must be (N, F, D, H, W) with N={labels.shape[0]}, "
            f"F={target.shape[1]} and D, H, W={spatial}, got {tuple(atlas.shape)}"
        )


def _finish(probabilities: torch.Tensor, weights: torch.Tensor) -> Fused:
    """Normalise accumulated votes ``(C, D, H, W)`` and weights ``(N, D, H, W)``; add the entropy."""
    probabilities = probabilities / probabilities.sum(dim=0, keepdim=True)
    weights = weights / weights.sum(dim=0, keepdim=True)
    num_classes = probabilities.shape[0]
    if num_classes > 1:
        entropy = -torch.special.xlogy(probabilities, probabilities).sum(dim=0)
        uncertainty = (entropy / math.log(num_classes)).clamp(0.0, 1.0)
    else:
        uncertainty = torch.zeros_like(probabilities[0])
    return Fused(probabilities=probabilities, weights=weights, uncertainty=uncertainty)


def _accumulate(votes: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> None:
    """Add ``weights`` ``(n, D, H, W)`` to ``votes`` ``(C, D, H, W)`` at the classes ``labels`` ``(n, D, H, W)``."""
    votes.view(votes.shape[0], -1).scatter_add_(
        0, labels.reshape(labels.shape[0], -1).long(), weights.reshape(weights.shape[0], -1)
    )


def disagreement(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices ``(M,)`` of the voxels where the atlases ``(N, 1, D, H, W)`` do not all agree."""
    flat = labels.reshape(labels.shape[0], -1)
    return (flat != flat[:1]).any(dim=0).nonzero()[:, 0]


def _weighted_vote(labels: torch.Tensor, weights: torch.Tensor, num_classes: int,
                   where: Optional[torch.Tensor] = None) -> Fused:
    """Vote of ``labels`` ``(N, 1, D, H, W)`` with weights ``(N, 1, 1, 1)`` or ``(N, D, H, W)``
    that sum to 1 over atlases, counted only where the atlases disagree (``where``, if known)."""
    n, spatial = labels.shape[0], labels.shape[2:]
    flat = labels.reshape(n, -1)
    per_voxel = weights[0].numel() > 1  # else one weight per atlas: never materialised per voxel
    where = disagreement(labels) if where is None else where
    probabilities = torch.zeros((num_classes, flat.shape[1]), dtype=torch.float32, device=labels.device)
    probabilities.scatter_(0, flat[:1].long(), 1.0)  # where all agree: their class
    uncertainty = torch.zeros(flat.shape[1], dtype=torch.float32, device=labels.device)
    decided = flat[0].to(torch.int64, copy=True)  # the class where all agree, the vote's winner elsewhere
    if where.numel():
        votes = torch.zeros((num_classes, where.numel()), dtype=torch.float32, device=labels.device)
        chosen = weights.reshape(n, -1)[:, where] if per_voxel else weights.reshape(n, 1).expand(n, where.numel())
        votes.scatter_add_(0, flat[:, where].long(), chosen.float())
        probabilities[:, where] = votes  # the weights sum to 1 over atlases: already normalised
        decided[where] = votes.argmax(dim=0)
        if num_classes > 1:
            entropy = -torch.special.xlogy(votes, votes).sum(dim=0)
            uncertainty[where] = (entropy / math.log(num_classes)).clamp(0.0, 1.0)
    return Fused(probabilities=probabilities.view(num_classes, *spatial), weights=weights.float().expand(n, *spatial),
                 uncertainty=uncertainty.view(spatial), decided=decided.view(spatial), where=where)


def majority_vote(labels: torch.Tensor, num_classes: int) -> Fused:
    """Majority (plurality) vote: every atlas counts the same at every voxel.

    The baseline of both seed papers (seed 000 §3, "MV"; Heckemann et al. 2006, NeuroImage 33).

    Args:
        labels: ``(N, 1, D, H, W)`` integer class indices in ``[0, num_classes)``: the N warped
            atlas labels on the target's working grid.
        num_classes: ``C``, the number of classes including background 0.

    Returns:
        :class:`Fused` with ``weights`` equal to ``1 / N`` everywhere. Ties go to the lower
        class index.

    Raises:
        TypeError: ``labels`` is not an integer tensor.
        ValueError: ``labels`` is not ``(N, 1, D, H, W)``, holds no atlases, or holds values
            outside ``[0, num_classes)``.
    """
    _check_labels("majority_vote()", labels, num_classes)
    n = labels.shape[0]
    return _weighted_vote(labels, torch.full((n, 1, 1, 1), 1.0 / n, device=labels.device), num_classes)


def _shift(x: torch.Tensor, offset) -> torch.Tensor:
    """``x(p + offset)`` over the last three axes, replicating the border (no wrap-around)."""
    for axis, step in zip(range(x.dim() - 3, x.dim()), offset):
        if step:
            size = x.shape[axis]
            index = (torch.arange(size, device=x.device) + step).clamp_(0, size - 1)
            x = x.index_select(axis, index)
    return x


def _in_grid_counts(shape, radius: int, device) -> torch.Tensor:
    """Number of in-grid voxels in the ``(2 * radius + 1) ** 3`` box around each voxel, ``(D, H, W)``."""
    counts = []
    for size in shape:
        index = torch.arange(size, device=device)
        counts.append(((index + radius).clamp(max=size - 1) - (index - radius).clamp(min=0) + 1).float())
    return counts[0].view(-1, 1, 1) * counts[1].view(1, -1, 1) * counts[2].view(1, 1, -1)


def _box(t: torch.Tensor, width: int, mean: bool) -> torch.Tensor:
    """``width ** 3`` box filter (odd ``width``) of ``(n, c, D, H, W)``, same size out, any grid size.

    ``mean=False`` sums, outside the grid counting as 0; ``mean=True`` averages the in-grid
    voxels only. Separable above width 3 (cheaper there).
    """
    radius = width // 2
    out = F.pad(t, (radius,) * 6)
    kernels = [(width,) * 3] if width <= 3 else [(width, 1, 1), (1, width, 1), (1, 1, width)]
    for kernel in kernels:
        out = F.avg_pool3d(out, kernel, stride=1, divisor_override=1)
    if mean:
        out = out / _in_grid_counts(t.shape[2:], radius, t.device)
    return out


def _patch_distance(target: torch.Tensor, padded_atlas: torch.Tensor, offset, search_radius: int,
                    patch_radius: int) -> torch.Tensor:
    """Patch mean of the squared feature difference between the target ``(1, F, D, H, W)`` and
    the atlases shifted by ``offset``, read from their border-replicated copy
    ``(n, F, D + 2r, H + 2r, W + 2r)`` (``r = search_radius``). Returns ``(n, D, H, W)``."""
    window = tuple(slice(search_radius + step, search_radius + step + size)
                   for step, size in zip(offset, target.shape[2:]))
    squared = (target - padded_atlas[(Ellipsis, *window)]).pow_(2).mean(dim=1, keepdim=True)
    if patch_radius > 0:
        squared = _box(squared, 2 * patch_radius + 1, mean=True)
    return squared[:, 0]


def _padded_chunks(atlas_features: torch.Tensor, chunk: int, search_radius: int):
    """Yield ``(start, stop, features)`` per chunk of atlases, border-replicated by ``search_radius``."""
    for start in range(0, atlas_features.shape[0], chunk):
        features = atlas_features[start:start + chunk].float()
        if search_radius > 0:
            features = F.pad(features, (search_radius,) * 6, mode="replicate")
        yield start, start + features.shape[0], features


def non_local_weighted_vote(labels: torch.Tensor, num_classes: int, target_features: torch.Tensor,
                            atlas_features: torch.Tensor, patch_radius: int = 1,
                            search_radius: int = 1, chunk: int = 4) -> Fused:
    """Non-local (patch-based) weighted vote on modality-independent features.

    Coupé et al. 2011, NeuroImage 54(2) "Patch-based segmentation using expert priors";
    Rousseau et al. 2011, IEEE TMI 30(10). For atlas ``i`` and shift ``s`` in the
    ``(2 * search_radius + 1) ** 3`` search window, the patch distance
    ``d_i(x, s)`` is the mean, over the ``(2 * patch_radius + 1) ** 3`` patch and over the F
    feature channels, of ``(T(x + p) - A_i(x + s + p)) ** 2`` (a box filter over the squared
    difference of shifted feature maps). The weight is ``w_i(x, s) = exp(-d_i(x, s) / h(x))``
    with Coupé's data-driven bandwidth ``h(x) = min_{i, s} d_i(x, s) + H_EPSILON``, so the
    best-matching patch at each voxel always gets ``exp(-1)`` and worse ones decay relative to it.
    Atlas ``i`` votes with its label at ``x + s``.

    The features must be modality-independent descriptors such as MIND-SSC (Heinrich et al.
    2013), computed by the caller on the target and on each warped atlas image: that is what
    makes this intensity-free weighting work when atlases and target come from different
    modalities. Out-of-grid neighbours replicate the border (no wrap-around); patches near the
    border average only their in-grid voxels. Memory stays bounded by ``chunk`` atlases' features;
    the cost is two passes over the search shifts (one for ``h``, one for the votes).

    Args:
        labels: ``(N, 1, D, H, W)`` integer class indices in ``[0, num_classes)``.
        num_classes: ``C``, the number of classes including background 0.
        target_features: ``(1, F, D, H, W)`` features of the target.
        atlas_features: ``(N, F, D, H, W)`` features of the warped atlas images.
        patch_radius: patch half-width in voxels (0: single voxels).
        search_radius: search-window half-width in voxels (0: only the same voxel).
        chunk: number of atlases processed together (memory bound).

    Returns:
        :class:`Fused`; ``weights[i]`` is ``sum_s w_i(x, s)`` normalised over atlases.

    Raises:
        TypeError: ``labels`` is not an integer tensor, or a feature map is not a tensor.
        ValueError: shapes do not match, no atlases, labels out of range, or a radius/chunk
            is not a non-negative/positive int.
    """
    fn = "non_local_weighted_vote()"
    _check_labels(fn, labels, num_classes)
    _check_features(fn, labels, target_features, atlas_features)
    _check_int(fn, "patch_radius", patch_radius, 0)
    _check_int(fn, "search_radius", search_radius, 0)
    _check_int(fn, "chunk", chunk, 1)
    offsets = list(itertools.product(range(-search_radius, search_radius + 1), repeat=3))
    target = target_features.float()
    spatial = labels.shape[2:]
    bandwidth = torch.full(spatial, math.inf, device=labels.device)
    for _, _, atlas in _padded_chunks(atlas_features, chunk, search_radius):
        for offset in offsets:
            distance = _patch_distance(target, atlas, offset, search_radius, patch_radius)
            bandwidth = torch.minimum(bandwidth, distance.amin(dim=0))
    bandwidth = bandwidth + H_EPSILON
    votes = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=labels.device)
    weights = torch.zeros((labels.shape[0], *spatial), dtype=torch.float32, device=labels.device)
    for start, stop, atlas in _padded_chunks(atlas_features, chunk, search_radius):
        for offset in offsets:
            distance = _patch_distance(target, atlas, offset, search_radius, patch_radius)
            weight = torch.exp(-distance / bandwidth)
            weights[start:stop] += weight
            _accumulate(votes, _shift(labels[start:stop, 0], offset), weight)
    return _finish(votes, weights)


def _mean_dice(intersection: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Dice from voxel counts ``(n, C - 1, ...)``, averaged over the classes present in either
    label map; 1 where no foreground class is present. Returns ``(n, ...)``."""
    present = denominator > 0.5  # voxel counts: > 0.5 means at least one voxel
    dice = torch.where(present, 2.0 * intersection / denominator.clamp_min(1.0), 0.0)
    count = present.sum(dim=1)
    return torch.where(count > 0, dice.sum(dim=1) / count.clamp_min(1), 1.0)


def pairwise_overlap(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Seed 004's LOA ``o_{j,k}``: Dice between warped labels ``j`` and ``k``, averaged over the
    foreground classes present in either (1 where neither has any), ``(N, N)``, 1 on the diagonal.

    Counted with bincounts rather than one-hot maps: the voxels where all atlases agree add the
    same intersection to every pair, so each pair compares only the voxels where they disagree.
    """
    n, flat = labels.shape[0], labels.reshape(labels.shape[0], -1)
    where = disagreement(labels)
    unanimous = torch.ones(flat.shape[1], dtype=torch.bool, device=labels.device)
    unanimous[where] = False
    shared = torch.bincount(flat[0][unanimous].long(), minlength=num_classes).float()
    varying = flat[:, where].long()
    volumes = shared + torch.stack([torch.bincount(row, minlength=num_classes) for row in varying]).float()
    overlap = torch.eye(n, device=labels.device)
    for j in range(n - 1):
        for k in range(j + 1, n):
            a, b = varying[j], varying[k]
            # Voxels where the pair disagrees go to an extra bin C, which is dropped.
            same = torch.bincount(torch.where(a == b, a, num_classes), minlength=num_classes + 1)
            intersection = shared + same[:num_classes].float()
            dice = _mean_dice(intersection[None, 1:], (volumes[j] + volumes[k])[None, 1:])[0]
            overlap[j, k] = overlap[k, j] = dice
    return overlap


def _expected_overlap_local(labels: torch.Tensor, num_classes: int, window: int) -> torch.Tensor:
    """``ō_k(x)`` with each Dice counted inside a ``window ** 3`` box around ``x``: ``(N, D, H, W)``."""
    foreground = one_hot(labels, num_classes)[:, 1:]  # (N, C-1, D, H, W)
    volumes = _box(foreground, window, mean=False)
    expected = torch.zeros_like(volumes[:, 0])
    for j in range(labels.shape[0] - 1):  # o is symmetric: pairs (j, k > j) only
        overlap = _mean_dice(_box(foreground[j:j + 1] * foreground[j + 1:], window, mean=False),
                             volumes[j:j + 1] + volumes[j + 1:])
        expected[j] += overlap.sum(dim=0)
        expected[j + 1:] += overlap
    return expected / (labels.shape[0] - 1)


def label_overlap_vote(labels: torch.Tensor, num_classes: int, window: Optional[int] = None) -> Fused:
    """Weighted vote with label-overlap-accuracy (LOA) weights (OASIS, seed 004 §2.2).

    Instead of image similarity, which the background dominates and which fails across
    modalities, atlas ``k``'s weight is its expected agreement with the other warped atlases:
    ``o_{j,k}`` is the Dice between warped labels ``j`` and ``k``, averaged over the foreground
    classes present in either (a pair with no foreground at all counts as agreeing, 1), and
    ``ō_k = mean_{j != k} o_{j,k}``. The paper's ``o_{j,k}`` compares with the (unknown at test
    time) target label; the other atlases stand in for it here, as in its test-time Fig. 2(B).
    A single atlas gets weight 1. Weights are floored at ``MIN_OVERLAP_WEIGHT`` and normalised
    over atlases.

    Global weights (``--fusion loa``) are the default, local ones (``loa-local``, a 15-voxel
    window) the option: on the fusion benchmark's cross-modality tasks both gave about the same
    mean Dice (0.812 and 0.814) while the windows cost ~27 times the time (11.1 s against 0.41 s
    per task; BENCHMARKS.md), and the global form is seed 004's own. Local windows can follow an
    atlas that is right in one region and wrong in another, but a window that holds few voxels
    of a structure gives a noisy Dice.

    Args:
        labels: ``(N, 1, D, H, W)`` integer class indices in ``[0, num_classes)``.
        num_classes: ``C``, the number of classes including background 0.
        window: None for one global weight per atlas; an odd int for local weights, with the
            Dice counted inside a ``window ** 3`` box (voxels) centred on each voxel (box filters;
            outside the grid counts as empty).

    Returns:
        :class:`Fused`; with ``window=None`` each ``weights[i]`` is constant over the grid.

    Raises:
        TypeError: ``labels`` is not an integer tensor.
        ValueError: bad ``labels`` (see :func:`majority_vote`) or ``window`` not None or an
            odd int >= 1.
    """
    fn = "label_overlap_vote()"
    _check_labels(fn, labels, num_classes)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 1 or window % 2 == 0):
        raise ValueError(f"{fn}: 'window' must be None or an odd int >= 1 (voxels), got {window!r}")
    n = labels.shape[0]
    if n == 1:
        expected = torch.ones((1, 1, 1, 1), device=labels.device)
    elif window is None:
        overlap = pairwise_overlap(labels, num_classes)
        expected = ((overlap.sum(dim=1) - 1.0) / (n - 1)).view(n, 1, 1, 1)  # mean over j != k
    else:
        expected = _expected_overlap_local(labels, num_classes, window)
    expected = expected.clamp_min(MIN_OVERLAP_WEIGHT)
    return _weighted_vote(labels, expected / expected.sum(dim=0, keepdim=True), num_classes)


def patch_label_fusion(labels: torch.Tensor, num_classes: int, logits: torch.Tensor) -> Fused:
    """Patch-based label fusion weighted by the similarity network (seed 000 eq. 6 and 7).

    ``w_i(x) = softmax_i(logits_i(x))``, where ``logits_i(x) = -d(f_phi(T)(x), f_theta(A_i)(x))``
    is the negative embedding distance of the 15³ patches around ``x`` in the target and in
    warped atlas ``i`` (:meth:`crossmodalmas.nets.similarity.SimilarityNet.logits`), and the
    label is ``argmax_l sum_i w_i(x) [L_i(x) = l]``. Only the voxels where the atlases disagree
    read ``logits``; elsewhere every atlas gets ``1 / N`` (the label is decided anyway), so the
    caller may leave ``logits`` unset (any finite value) there.

    Args:
        labels: ``(N, 1, D, H, W)`` integer class indices in ``[0, num_classes)``.
        num_classes: ``C``, the number of classes including background 0.
        logits: ``(N, D, H, W)`` float similarity logits.

    Returns:
        :class:`Fused`.

    Raises:
        TypeError: ``labels`` is not an integer tensor or ``logits`` not a float tensor.
        ValueError: bad ``labels`` (see :func:`majority_vote`), ``logits`` of another shape,
            or non-finite logits where the atlases disagree.
    """
    fn = "patch_label_fusion()"
    _check_labels(fn, labels, num_classes)
    expected = (labels.shape[0], *labels.shape[2:])
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
        raise TypeError(f"{fn}: 'logits' must be a float torch.Tensor, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if tuple(logits.shape) != expected:
        raise ValueError(f"{fn}: 'logits' must be (N, D, H, W) = {expected}, got {tuple(logits.shape)}")
    n, where = labels.shape[0], disagreement(labels)
    chosen = logits.reshape(n, -1)[:, where].float()
    if not bool(torch.isfinite(chosen).all()):
        raise ValueError(f"{fn}: 'logits' must be finite where the atlases disagree")
    weights = torch.full((n, logits[0].numel()), 1.0 / n,
                         dtype=torch.float32, device=labels.device)
    weights[:, where] = torch.softmax(chosen, dim=0)
    return _weighted_vote(labels, weights.view(expected), num_classes, where)


def fuse(method: FusionMethod, labels: torch.Tensor, num_classes: int,
         target_features: Optional[torch.Tensor] = None,
         atlas_features: Optional[torch.Tensor] = None,
         similarity: Optional[torch.Tensor] = None) -> Fused:
    """Run the fusion ``method`` with its default parameters.

    Args:
        method: a :class:`~crossmodalmas.options.FusionMethod` or its value (``"mv"``,
            ``"nlwv"``, ``"plf"``, ``"loa"``, ``"loa-local"``).
        labels: ``(N, 1, D, H, W)`` integer class indices in ``[0, num_classes)``.
        num_classes: ``C``, the number of classes including background 0.
        target_features: ``(1, F, D, H, W)`` modality-independent features (NLWV only).
        atlas_features: ``(N, F, D, H, W)`` features of the warped atlases (NLWV only).
        similarity: ``(N, D, H, W)`` similarity-network logits (PLF only).

    Returns:
        :class:`Fused`.

    Raises:
        ValueError: unknown method, NLWV without features, PLF without similarity logits,
            or invalid inputs of the chosen method.
    """
    try:
        method = FusionMethod(method)
    except ValueError as error:
        choices = ", ".join(repr(m.value) for m in FusionMethod)
        raise ValueError(f"fuse(): 'method' must be one of {choices}, got {method!r}") from error
    if method is FusionMethod.MAJORITY_VOTE:
        return majority_vote(labels, num_classes)
    if method is FusionMethod.LABEL_OVERLAP:
        return label_overlap_vote(labels, num_classes)
    if method is FusionMethod.LABEL_OVERLAP_LOCAL:
        return label_overlap_vote(labels, num_classes, window=LOCAL_OVERLAP_WINDOW)
    if method is FusionMethod.NON_LOCAL_WEIGHTED_VOTE:
        if target_features is None or atlas_features is None:
            raise ValueError(
                "fuse(): method 'nlwv' (non-local weighted vote) needs 'target_features' and "
                "'atlas_features' (e.g. MIND-SSC), got None"
            )
        return non_local_weighted_vote(labels, num_classes, target_features, atlas_features)
    if similarity is None:
        raise ValueError("fuse(): method 'plf' (similarity-network patch-based label fusion) needs the "
                         "similarity network's logits 'similarity', got None")
    return patch_label_fusion(labels, num_classes, similarity)
