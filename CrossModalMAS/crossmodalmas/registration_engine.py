"""The pipeline's deformable step: the consistent registration network, then (on request)
instance optimisation from its fields; or instance optimisation alone.

The network runs on a grid no larger than its model entry's ``working_grid`` (the scale it
was trained at: anatomy filling a grid of about that many voxels), and its fields are
resampled to the pipeline's working grid; refinement then works at the working grid's own
resolution. On CUDA all atlases go through the network as one batch; on out-of-memory the
batch is halved until it fits, then the CPU is used, and the run says so. On the CPU, where
a batch buys no speed, the network and the instance optimisation take ``CPU_CHUNK`` atlases
at a time, so their memory does not grow with the number of atlases (the optimisation's
loss is a sum over atlases and Adam works per element: chunks give the same fields).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from crossmodalmas.instance_opt import InstanceOptConfig, RegistrationFields, register
from crossmodalmas.model_cache import cached_network
from crossmodalmas.models import LoadedModel, ModelEntry, find_model
from crossmodalmas.nets.registration_net import PredictedFields
from crossmodalmas.transforms import resize_flow

INSTANCE_OPTIMISATION = "instance-opt"  # --model value that skips the network
CPU_CHUNK = 1  # atlases per network pass and per instance optimisation on the CPU


RegistrationModel = LoadedModel  # a loaded registration network and its entry


def atlases_per_pass(count: int, device: torch.device) -> int:
    """Atlases per pass: all ``count`` of them on CUDA (halved on OOM), ``CPU_CHUNK`` on the CPU."""
    return count if torch.device(device).type == "cuda" else max(1, min(CPU_CHUNK, count))


def load_registration_model(name_or_path: Optional[str], device: torch.device) -> Optional[RegistrationModel]:
    """The network ``--model`` names (None: the bundled default); None for ``instance-opt``.

    Loaded once per process and device (:mod:`crossmodalmas.model_cache`).

    Raises:
        InputError: unknown model, missing or damaged weights (see :mod:`crossmodalmas.models`).
    """
    if name_or_path == INSTANCE_OPTIMISATION:
        return None
    entry = find_model(name_or_path, "registration")
    return RegistrationModel(entry, cached_network(entry, device))


def network_shape(shape, spacing_mm: float, entry: ModelEntry) -> tuple[int, ...]:
    """The grid the network runs on: the working grid's extent at the coarser of the
    entry's ``spacing_mm`` and the spacing that keeps it within ``max_voxels``."""
    extent = np.asarray(shape, dtype=float) * spacing_mm
    fit = (float(np.prod(extent)) / entry.working_grid["max_voxels"]) ** (1 / 3)
    spacing = max(entry.working_grid["spacing_mm"], spacing_mm, fit)
    return tuple(int(max(8, round(e / spacing))) for e in extent)


def _predict_batches(net, atlases: torch.Tensor, target: torch.Tensor, batch: int) -> list[PredictedFields]:
    out = []
    with torch.inference_mode():
        for start in range(0, atlases.shape[0], batch):
            chunk = atlases[start:start + batch]
            out.append(net.predict(chunk, target.expand(chunk.shape[0], -1, -1, -1, -1)))
    return out


def _predict(model: RegistrationModel, atlases: torch.Tensor, target: torch.Tensor,
             warn: Callable[[str], None]) -> PredictedFields:
    """One pass for every atlas, batched; smaller batches, then the CPU, on CUDA OOM."""
    batch = atlases_per_pass(atlases.shape[0], atlases.device)
    while True:
        try:
            parts = _predict_batches(model.net, atlases, target, batch)
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch > 1:
                batch //= 2
                warn(f"registration network: CUDA out of memory; retrying {batch} atlas(es) at a time")
                continue
            warn("registration network: CUDA out of memory with one atlas; running on the CPU")
            model.net.to("cpu")
            return _predict(model, atlases.cpu(), target.cpu(), warn)
    joined = [torch.cat(f) if f[0] is not None else None
              for f in zip(*[(p.forward, p.backward, p.velocity) for p in parts])]
    return PredictedFields(*joined)


def network_fields(model: RegistrationModel, target: torch.Tensor, atlases: torch.Tensor,
                   spacing_mm: float, warn: Callable[[str], None]) -> PredictedFields:
    """The network's fields for every atlas, on the working grid (voxels of it).

    Args:
        model: the loaded network.
        target: ``(1, 1, D, H, W)`` normalised target on the working grid.
        atlases: ``(N, 1, D, H, W)`` normalised, affinely aligned atlases on the same grid.
        spacing_mm: the working grid's isotropic spacing.
        warn: called with a message when the run had to fall back (OOM).
    """
    shape = tuple(target.shape[2:])
    small = network_shape(shape, spacing_mm, model.entry)
    device = next(model.net.parameters()).device

    def to_network(image: torch.Tensor) -> torch.Tensor:
        if small != shape:
            image = F.interpolate(image, size=small, mode="trilinear", align_corners=True)
        return image.to(device)

    fields = _predict(model, to_network(atlases), to_network(target), warn)
    back = [None if f is None else resize_flow(f.to(target.device), shape)
            for f in (fields.forward, fields.backward, fields.velocity)]
    return PredictedFields(*back)


def deformable_registration(model: Optional[RegistrationModel], target_image, atlas_images,
                            target_features, atlas_features, spacing_mm: float,
                            refine_iterations: int, regularisation: float,
                            progress: Callable[[float], None], cancel: Callable[[], bool],
                            warn: Callable[[str], None],
                            support: Optional[torch.Tensor] = None) -> RegistrationFields:
    """U and V of every atlas on the working grid.

    With a network: one pass, then instance optimisation started from the network's velocity
    (in paper mode, from U: for a smooth field exp(v) ~ id + v to first order), coarse to fine
    with ``refine_iterations`` per level as on its own (measured on phantom pairs: refining at
    the finest level only lost up to 0.12 Dice where the network's start was poor). Without
    one: instance optimisation from zero. ``support`` (bool ``(N, 1, D, H, W)``, None:
    everywhere) is where each atlas's descriptors are matched (see :func:`register`).
    """
    config = InstanceOptConfig(iterations=refine_iterations, regularisation=regularisation)
    if model is None:
        return _register_in_chunks(target_features, atlas_features, config, None, support, progress, cancel)
    fields = network_fields(model, target_image, atlas_images, spacing_mm, warn)
    progress(1.0 if refine_iterations == 0 else 0.2)
    if refine_iterations == 0:
        return RegistrationFields(forward=fields.forward, backward=fields.backward)
    start = fields.velocity if fields.velocity is not None else fields.forward
    return _register_in_chunks(target_features, atlas_features, config, start, support,
                               lambda f: progress(0.2 + 0.8 * f), cancel)


def _register_in_chunks(target_features, atlas_features, config, start, support, progress,
                        cancel) -> RegistrationFields:
    """:func:`register` over all atlases at once on CUDA, ``CPU_CHUNK`` at a time on the CPU."""
    count = atlas_features.shape[0]
    size = atlases_per_pass(count, atlas_features.device)
    parts = []
    for first in range(0, count, size):
        chunk = slice(first, min(first + size, count))
        share = (chunk.stop - first) / count
        parts.append(register(target_features, atlas_features[chunk], config,
                              initial_velocity=None if start is None else start[chunk],
                              progress=lambda f, done=first / count, share=share: progress(done + f * share),
                              cancel=cancel, support=None if support is None else support[chunk]))
    if len(parts) == 1:
        return parts[0]
    return RegistrationFields(forward=torch.cat([p.forward for p in parts]),
                              backward=torch.cat([p.backward for p in parts]))
