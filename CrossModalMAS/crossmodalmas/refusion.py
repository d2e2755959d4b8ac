"""Fusing warped atlases into a result, and fusing again from a result without registering
again: another method, or a subset of the atlases (the Slicer module's "untick an atlas and
Re-fuse").

:func:`fused_fields` is the pipeline's fusion step; :func:`refuse` runs the same step on what
a :class:`~crossmodalmas.result.Result` keeps (the warped atlases' classes and images, the
target on the working grid, and the similarity logits once computed), so fusing again with
every atlas and the same method gives exactly the first result.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Optional, Sequence, Union

import numpy as np
import torch

from crossmodalmas.errors import InputError
from crossmodalmas.features import mind_ssc, mind_ssc_each
from crossmodalmas.fusion import disagreement, fuse
from crossmodalmas.options import DeviceChoice, FusionMethod
from crossmodalmas.coverage import mask_unknown
from crossmodalmas.devices import cpu_fallback, resolve_device
from crossmodalmas.preprocess import resample_probabilities, same_grid
from crossmodalmas.qc import with_fusion_figures
from crossmodalmas.result import AtlasQC, Result
from crossmodalmas.similarity_engine import SimilarityModel, load_similarity_model, similarity_logits
from crossmodalmas.volume import Grid, LabelMap


def class_dtype(num_classes: int) -> type:
    """The smallest integer type that holds class indices below ``num_classes``."""
    return np.uint8 if num_classes <= 256 else np.int16


def _similarity(similarity, model, classes, target, images, grid, device):
    """The PLF logits and the network's name: the given ones, else the similarity network's
    (``model``: loaded, or a name / path to load; computed where the atlases disagree)."""
    if similarity is not None:
        return torch.from_numpy(similarity).to(device), getattr(model, "name", model)
    if not isinstance(model, SimilarityModel):
        model = load_similarity_model(model, device)
    where = torch.zeros(classes[0, 0].numel(), dtype=torch.bool, device=device)
    where[disagreement(classes)] = True
    logits = similarity_logits(model, target, images, where.view(classes.shape[2:]), float(grid.spacing[0]))
    return logits, model.name


def fused_fields(method: FusionMethod, grid: Grid, target_grid: Grid, label_values: np.ndarray,
                 target_image: np.ndarray, warped_images: np.ndarray, warped_classes: np.ndarray,
                 qc: Sequence[AtlasQC], device, similarity: Optional[np.ndarray] = None,
                 similarity_model: Union[None, str, SimilarityModel] = None) -> dict:
    """Fuse the warped atlases with ``method``: the :class:`Result` fields the fusion sets.

    Args:
        method: the fusion method.
        grid: the working grid; ``target_grid`` the target's own.
        label_values: ``(C,)`` label value of each class index.
        target_image: ``(K, J, I)`` normalised target on ``grid``.
        warped_images: ``(N, K, J, I)`` warped, normalised atlas images.
        warped_classes: ``(N, K, J, I)`` warped class indices.
        qc: the atlases' registration figures.
        device: where to compute.
        similarity: cached PLF logits ``(N, K, J, I)``, or None to compute them (PLF only).
        similarity_model: the similarity network to compute them with: loaded, or a name or
            path (None: the bundled default); with ``similarity``, the name of the one that did.

    Returns:
        ``labels, weights, uncertainty, qc, fusion, similarity, similarity_model``.

    Raises:
        InputError: PLF without a similarity model to compute the logits with.
    """
    method = FusionMethod(method)
    # Kept as uint8/int16: the fusion widens only the voxels where the atlases disagree.
    classes = torch.from_numpy(np.ascontiguousarray(warped_classes)).to(device)[:, None]
    target = torch.from_numpy(target_image)[None, None].to(device)
    images = torch.from_numpy(warped_images)[:, None].to(device)
    logits = None
    if method is FusionMethod.PATCH_LABEL_FUSION:
        logits, similarity_model = _similarity(similarity, similarity_model, classes, target, images, grid, device)
    target_features = atlas_features = None
    if method is FusionMethod.NON_LOCAL_WEIGHTED_VOTE:  # MIND-SSC of the target and the warped images
        target_features, atlas_features = mind_ssc(target), mind_ssc_each(images)
    with torch.no_grad():
        fused = fuse(method, classes, len(label_values), target_features=target_features,
                     atlas_features=atlas_features, similarity=logits)
    if same_grid(grid, target_grid):
        labels = fused.labels.cpu().numpy()
    else:
        labels = resample_probabilities(fused.probabilities.cpu().numpy(), grid, target_grid)
    return {
        "labels": LabelMap(label_values.astype(np.int32)[labels], target_grid.ijk_to_ras.copy()),  # int32: no copy
        "weights": fused.weights.cpu().numpy().astype(np.float32),
        "uncertainty": fused.uncertainty.cpu().numpy().astype(np.float32),
        "qc": with_fusion_figures(qc, classes[:, 0], fused),
        "fusion": method,
        # Kept across methods: switching back to PLF later needs no network pass.
        "similarity": similarity if logits is None else logits.cpu().numpy().astype(np.float32, copy=False),
        "similarity_model": similarity_model if logits is not None or similarity is not None else None,
    }


def _indices(result: Result, keep: Optional[Sequence[Union[int, str]]]) -> list[int]:
    count = len(result.atlas_names)
    if keep is None:
        return list(range(count))
    indices = []
    for item in keep:
        if isinstance(item, str):
            if item not in result.atlas_names:
                raise InputError(f"refuse(): atlas {item!r} is not in this result (atlases: "
                                 f"{', '.join(result.atlas_names)})")
            item = result.atlas_names.index(item)
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= item < count:
            raise InputError(f"refuse(): 'keep' must hold atlas names or indices in [0, {count}), got {item!r}")
        indices.append(int(item))
    if not indices:
        raise InputError("refuse(): 'keep' selects no atlas; at least one is needed")
    if len(set(indices)) != len(indices):
        raise InputError(f"refuse(): 'keep' names an atlas twice: {list(keep)}")
    return indices


def _device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a torch device: a choice of ``--device`` resolved as a run resolves it."""
    if isinstance(device, torch.device):
        return device
    choices = [choice.value for choice in DeviceChoice]
    if device not in choices:
        raise InputError(f"refuse(): 'device' must be one of {', '.join(choices)} or a torch device, got {device!r}")
    return resolve_device(device)


def refuse(result: Result, keep: Optional[Sequence[Union[int, str]]] = None,
           method: Optional[Union[str, FusionMethod]] = None, similarity_model: Optional[str] = None,
           device: Union[str, torch.device] = "cpu") -> Result:
    """Fuse again from ``result``: only the atlases in ``keep``, with ``method``; no registration.

    Args:
        result: a segmentation result (from :func:`crossmodalmas.pipeline.segment` or
            :func:`crossmodalmas.result_io.load_result`).
        keep: atlas names or indices to fuse (None: all), in any order (kept in the result's).
        method: the fusion method (None: the result's own).
        similarity_model: the similarity network, when PLF logits must be computed (the
            result's first fusion was another method); None: the result's, else the default.
        device: where to compute: ``auto``, ``cpu``, ``cuda`` (as ``--device``) or a torch
            device; on CUDA out-of-memory the fusion runs again on the CPU, and the new
            result's warnings say so.

    Returns:
        A new :class:`Result` over the kept atlases; ``result`` is not modified.

    Raises:
        InputError: ``keep`` names an unknown atlas, none, or one twice; an unknown method or
            device; CUDA asked for where torch sees none; PLF with no similarity model available.
    """
    indices = sorted(_indices(result, keep))
    where = _device(device)
    try:
        method = FusionMethod(result.fusion if method is None else method)
    except ValueError as error:
        choices = ", ".join(m.value for m in FusionMethod)
        raise InputError(f"refuse(): 'method' must be one of {choices}, got {method!r}") from error
    # The cached logits serve unless another similarity network is asked for.
    cached = result.similarity is not None and similarity_model in (None, result.similarity_model)
    similarity = result.similarity[indices] if cached else None
    model_name = result.similarity_model if cached else (similarity_model or result.similarity_model)
    kept = {
        "atlas_names": [result.atlas_names[i] for i in indices],
        "warped_images": result.warped_images[indices],
        "warped_classes": result.warped_classes[indices],
        "timings": {}, "warnings": list(result.warnings),
    }

    def fuse_on(on: torch.device) -> dict:
        return fused_fields(method, result.working_grid, result.labels.grid, result.label_values,
                            result.target_image, kept["warped_images"], kept["warped_classes"],
                            [result.qc[i] for i in indices], on, similarity, model_name)

    def warn(message: str) -> None:
        kept["warnings"].append(message)
        warnings.warn(message, stacklevel=3)

    fields, _ = cpu_fallback("re-fusion", fuse_on, where, warn)
    fields["labels"] = mask_unknown(fields["labels"], result.unknown)  # no atlas looked there: still unknown
    return replace(result, **kept, **fields)
