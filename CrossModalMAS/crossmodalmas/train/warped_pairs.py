"""Synthetic pairs with the atlas already warped onto the target: what the similarity network
sees at test time (the fusion compares the target with warped atlases)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossmodalmas.registration_engine import RegistrationModel
from crossmodalmas.synth import SynthPair
from crossmodalmas.transforms import warp


@dataclass
class WarpedPair:
    """Targets and their atlases warped onto them: images ``(N, 1, D, H, W)``, labels ``(N, D, H, W)``."""

    target: torch.Tensor
    target_labels: torch.Tensor
    atlas: torch.Tensor
    atlas_labels: torch.Tensor


@torch.no_grad()
def warp_pairs(model: RegistrationModel, pair: SynthPair, use_true_field: torch.Tensor) -> WarpedPair:
    """Each pair's atlas (``image_a``, ``labels_a``) on its target's grid: by the network's
    forward field, or by the pair's true one where ``use_true_field`` ``(N,)`` is True.

    Raises:
        ValueError: a true field is asked for where the pair has none (a real pair).
    """
    forward = model.net.predict(pair.image_a, pair.image_b).forward.float()
    if pair.forward is not None:
        forward = torch.where(use_true_field.view(-1, 1, 1, 1, 1), pair.forward, forward)
    elif bool(use_true_field.any()):
        raise ValueError("warp_pairs(): 'use_true_field' asks for the true field of a pair that has none (a real pair)")
    labels = warp(pair.labels_a.float(), forward, mode="nearest").long()
    return WarpedPair(target=pair.image_b, target_labels=pair.labels_b[:, 0],
                      atlas=warp(pair.image_a, forward), atlas_labels=labels[:, 0])
