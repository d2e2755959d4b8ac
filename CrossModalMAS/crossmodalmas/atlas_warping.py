"""The pipeline's deformable step, atlas chunk by atlas chunk: describe, register, warp, judge,
then free.

What the run keeps of each atlas after this step is its warped image and warped class map on
the working grid (5 bytes a voxel: what the previews and re-fusion need). Its descriptors (12
channels), its forward and backward fields (6 channels) and the one-hot maps of the label warp
live only while its chunk is deformed, so the step's memory grows by those 5 bytes a voxel per
atlas, not by the ~170 it took when every atlas was deformed as one batch. A chunk is one atlas
on the CPU (where a batch buys no speed) and every atlas on CUDA; the fields and figures are the
same either way. On CUDA out-of-memory anywhere in a chunk (the network pass halves its own
batch first, but the refinement's gradients and the warps need more), the chunk is retried
with half as many atlases, and with one atlas that still does not fit, the step goes on on the
CPU; each fallback is reported through ``warn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from crossmodalmas.errors import CancelledError
from crossmodalmas.features import descriptor_support, mind_ssc_each
from crossmodalmas.qc import descriptor_similarity, registration_qc
from crossmodalmas.registration_engine import RegistrationModel, atlases_per_pass, deformable_registration
from crossmodalmas.result import AtlasQC
from crossmodalmas.transforms import warp, warp_labels
from crossmodalmas.volume import Grid


@dataclass
class WarpedAtlases:
    """The atlases after the deformable step, on the working grid.

    Attributes:
        images: ``(N, K, J, I)`` float32 warped, normalised atlas images.
        classes: ``(N, K, J, I)`` warped class indices (the input's integer type).
        qc: each atlas's registration figures.
        device: where the step ended (the CPU after a CUDA out-of-memory fallback).
    """

    images: np.ndarray
    classes: np.ndarray
    qc: list[AtlasQC]
    device: torch.device


@dataclass
class AtlasesOnGrid:
    """The atlases before the deformable step, on the working grid.

    Attributes:
        names: atlas names, N of them.
        images: ``(N, K, J, I)`` float32 normalised, affinely aligned images.
        classes: ``(N, K, J, I)`` class indices (an unsigned or signed integer type).
        inside: ``(N, K, J, I)`` bool, each atlas's field of view.
    """

    names: Sequence[str]
    images: np.ndarray
    classes: np.ndarray
    inside: np.ndarray


def _support(inside: np.ndarray, device) -> Optional[torch.Tensor]:
    """Where each atlas's descriptors describe its anatomy (None where every atlas covers the
    whole working grid); one atlas at a time, so the erosion's float copy is one atlas's."""
    if inside.all():
        return None
    return torch.cat([descriptor_support(torch.from_numpy(one)[None, None]) for one in inside]).to(device)


def _deform_chunk(model, target: torch.Tensor, target_features: torch.Tensor, atlases: AtlasesOnGrid,
                  chunk: slice, grid: Grid, num_classes: int, settings: tuple[int, float], callbacks):
    """Warped images, warped classes and QC of the atlases in ``chunk``."""
    refine_iterations, regularisation = settings
    progress, cancel, warn = callbacks
    device = target.device
    images = torch.from_numpy(atlases.images[chunk])[:, None].to(device)
    features = mind_ssc_each(images)
    support = _support(atlases.inside[chunk], device)  # steers the registration; where the QC judges
    fields = deformable_registration(model, target, images, target_features, features, float(grid.spacing[0]),
                                     refine_iterations, regularisation, progress=progress, cancel=cancel,
                                     warn=warn, support=support)
    similarity_before = descriptor_similarity(features, target_features, support)
    del features  # 12 channels per atlas: freed before the warped atlases' are made
    with torch.no_grad():
        classes = torch.from_numpy(atlases.classes[chunk])[:, None].to(device)
        warped_classes = warp_labels(classes, fields.forward, num_classes)[:, 0]
        warped_images = warp(images, fields.forward)
        warped_features = mind_ssc_each(warped_images)  # for the QC's similarity after the step
    coverage = atlases.inside[chunk].reshape(warped_images.shape[0], -1).mean(1).tolist()
    qc = registration_qc(list(atlases.names[chunk]), fields, similarity_before, warped_features, target_features,
                         coverage, grid.spacing_kji, support)
    return warped_images[:, 0].cpu().numpy(), warped_classes.cpu().numpy(), qc


def _in_work(names: Sequence[str], chunk: slice) -> str:
    """What the progress bar says of a chunk: its atlas (one) or its range (several)."""
    if chunk.stop - chunk.start == 1:
        return f"atlas {names[chunk.start]} ({chunk.start + 1} of {len(names)})"
    return f"atlases {chunk.start + 1}-{chunk.stop} of {len(names)}"


def _on_cpu(model: Optional[RegistrationModel], target: torch.Tensor, target_features: torch.Tensor):
    """The model, target and descriptors on the CPU (the model's cache moves it back for a later run)."""
    if model is not None:
        model.net.to("cpu")
    return model, target.cpu(), target_features.cpu()


def deform_atlases(model: Optional[RegistrationModel], target: torch.Tensor, target_features: torch.Tensor,
                   atlases: AtlasesOnGrid, grid: Grid, num_classes: int, settings: tuple[int, float],
                   progress: Callable[[float, str], None], cancel: Callable[[], bool],
                   warn: Callable[[str], None]) -> WarpedAtlases:
    """Register every atlas to the target and warp it, :func:`atlases_per_pass` at a time
    (fewer, then on the CPU, on CUDA out-of-memory).

    Args:
        model: the registration network (None: instance optimisation alone).
        target: ``(1, 1, K, J, I)`` normalised target on ``grid``.
        target_features: its MIND-SSC descriptors.
        atlases: the atlases on ``grid``.
        grid: the working grid.
        num_classes: class indices are below this (background 0 included).
        settings: ``(refine_iterations, regularisation)`` of the instance optimisation.
        progress: called with the step's fraction done (never less than before) and the atlases
            in work, e.g. ``"atlas liver03 (2 of 10)"``.
        cancel: polled before each chunk and inside the optimisation.
        warn: called with a message on each out-of-memory fallback.

    Returns:
        :class:`WarpedAtlases` in the order of ``atlases``.

    Raises:
        CancelledError: ``cancel()`` returned True.
    """
    count, device = len(atlases.names), target.device
    size = atlases_per_pass(count, device)
    images = np.empty(atlases.images.shape, dtype=np.float32)
    classes = np.empty(atlases.classes.shape, dtype=atlases.classes.dtype)
    qc: list[AtlasQC] = []
    reached = [0.0]

    def report(fraction: float, which: str) -> None:  # a retried chunk starts again below what was shown
        reached[0] = max(reached[0], fraction)
        progress(reached[0], which)

    first = 0
    while first < count:
        if cancel():  # between chunks too: without refinement nothing inside one polls it
            raise CancelledError("segmentation cancelled")
        chunk = slice(first, min(first + size, count))
        share, which = (chunk.stop - first) / count, _in_work(atlases.names, chunk)
        try:
            images[chunk], classes[chunk], figures = _deform_chunk(
                model, target, target_features, atlases, chunk, grid, num_classes, settings,
                (lambda f, done=first / count, share=share, which=which: report(done + f * share, which),
                 cancel, warn))
        except torch.cuda.OutOfMemoryError:  # raised by CUDA only: the step is on CUDA
            torch.cuda.empty_cache()
            if chunk.stop - first > 1:
                size = (chunk.stop - first) // 2
                warn(f"deformable step: CUDA out of memory; retrying {size} atlas(es) at a time")
            else:
                warn("deformable step: CUDA out of memory with one atlas; running on the CPU")
                model, target, target_features = _on_cpu(model, target, target_features)
                device = target.device
                size = atlases_per_pass(count, device)
            continue
        qc.extend(figures)
        first = chunk.stop
    return WarpedAtlases(images, classes, qc, device)
