"""Modality-independent image descriptors: MIND-SSC.

MIND-SSC (Heinrich et al., MICCAI 2013, "Towards realtime multimodal fusion for image-guided
interventions using self-similarity context") describes each voxel by how similar the small
patches around it are to each other, not by its intensity, so a CT and an MR of the same
anatomy give similar descriptors. Written here in a few vectorised torch lines because no
maintained library we depend on (MONAI, SimpleITK) offers it as a function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The six face neighbours of the centre voxel (offsets in voxels along k, j, i) and the 12
# pairs of them that lie sqrt(2) apart: the "self-similarity context" of the paper.
_NEIGHBOURS = ((0, 1, 1), (1, 1, 0), (1, 0, 1), (1, 1, 2), (2, 1, 1), (1, 2, 1))
_PAIRS = tuple((a, b) for a in range(6) for b in range(6) if a < b and
               sum((x - y) ** 2 for x, y in zip(_NEIGHBOURS[a], _NEIGHBOURS[b])) == 2)


def _shifted(padded: torch.Tensor, offset, dilation: int, shape) -> torch.Tensor:
    """Crop of a 1-voxel*dilation padded tensor shifted by ``offset - 1`` neighbours."""
    k, j, i = (o * dilation for o in offset)
    return padded[:, :, k:k + shape[0], j:j + shape[1], i:i + shape[2]]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptor of every voxel.

    Args:
        image: ``(N, 1, D, H, W)`` intensities (any modality; normalised or not).
        radius: half-width of the patch (box filter) the distances are summed over, in voxels.
        dilation: distance, in voxels, from the centre to each of the six neighbours.

    Returns:
        ``(N, 12, D, H, W)`` float descriptors in (0, 1]; each image's depend on it alone.

    Raises:
        ValueError: ``image`` is not ``(N, 1, D, H, W)``.
    """
    if image.dim() != 5 or image.shape[1] != 1:
        raise ValueError(f"mind_ssc(): 'image' must be (N, 1, D, H, W), got {tuple(image.shape)}")
    shape = image.shape[2:]
    padded = F.pad(image.float(), (dilation,) * 6, mode="replicate")
    neighbours = [_shifted(padded, offset, dilation, shape) for offset in _NEIGHBOURS]
    squared = torch.cat([(neighbours[a] - neighbours[b]) ** 2 for a, b in _PAIRS], dim=1)
    distance = F.avg_pool3d(F.pad(squared, (radius,) * 6, mode="replicate"),
                            kernel_size=2 * radius + 1, stride=1)
    distance = distance - distance.min(dim=1, keepdim=True).values
    variance = distance.mean(dim=1, keepdim=True)
    # Floor the local variance at a fraction of its image's mean so flat regions are not noise
    # (per image: an image's descriptors must not depend on the others in the batch).
    floor = 1e-3 * variance.mean(dim=(1, 2, 3, 4), keepdim=True) + 1e-6
    variance = torch.maximum(variance, floor)
    descriptor = torch.exp(-distance / variance)
    return descriptor / descriptor.max(dim=1, keepdim=True).values


def mind_ssc_each(images: torch.Tensor) -> torch.Tensor:
    """:func:`mind_ssc` of a ``(N, 1, D, H, W)`` batch, one image at a time: the same
    descriptors, but the temporaries (about 40 volumes per image) are one image's, not N's.
    The pipeline describes every atlas this way, so its memory does not grow with them."""
    return torch.cat([mind_ssc(image[None]) for image in images])


def descriptor_support(inside: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """Where :func:`mind_ssc` (with the same ``radius`` and ``dilation``) describes an image
    from inside its field of view alone: ``inside`` eroded by ``radius + dilation`` voxels.

    An atlas that covers part of the working grid is zero outside its field of view, and the
    descriptors within that reach of the edge describe the artificial step to zero, not its
    anatomy; a registration matching them pulls the edge onto some edge of the target. The
    grid's own border is not an edge (MIND pads it by replication). An image whose support
    would erode away entirely (a slab a few voxels thick) keeps its field of view.

    Args:
        inside: ``(N, 1, D, H, W)`` bool, each image's field of view on the grid.

    Returns:
        ``(N, 1, D, H, W)`` bool.

    Raises:
        ValueError: ``inside`` is not ``(N, 1, D, H, W)``.
    """
    if inside.dim() != 5 or inside.shape[1] != 1:
        raise ValueError(f"descriptor_support(): 'inside' must be (N, 1, D, H, W), got {tuple(inside.shape)}")
    reach = radius + dilation
    # erosion as a max-pool of the outside; the pool's implicit padding never wins the max
    outside = F.max_pool3d((~inside).float(), 2 * reach + 1, stride=1, padding=reach)
    support = outside < 0.5
    empty = ~support.flatten(1).any(1)
    support[empty] = inside[empty]
    return support
