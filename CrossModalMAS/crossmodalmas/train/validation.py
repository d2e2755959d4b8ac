"""Held-out synthetic pairs and the figures a registration network is judged by during training."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossmodalmas.label_sources import LabelMapBank
from crossmodalmas.metrics import dice
from crossmodalmas.synth import SynthConfig, SynthPair, synth_pair
from crossmodalmas.transforms import jacobian_determinant, one_hot, warp


@dataclass
class ValidationPair:
    name: str
    pair: SynthPair
    num_labels: int


def validation_pairs(bank: LabelMapBank, count: int, config: SynthConfig, seed: int,
                     device) -> list[ValidationPair]:
    """``count`` fixed pairs from the bank's held-out maps, drawn with their own seed so every
    validation of a run (and of a resumed run) sees the same pairs."""
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for name, labels in bank.fixed(count):
        labels = labels.to(device).unsqueeze(0)
        k = int(labels.max()) + 1
        out.append(ValidationPair(name, synth_pair(labels, k, config, generator), k))
    return out


def mean_dice(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean of :func:`crossmodalmas.metrics.dice` over the foreground labels in either map
    (1.0 when neither has any)."""
    scores = dice(prediction.cpu().numpy(), truth.cpu().numpy())
    return sum(scores.values()) / len(scores) if scores else 1.0


@torch.no_grad()
def validate(net: torch.nn.Module, pairs: list[ValidationPair]) -> dict[str, float]:
    """Mean Dice of the atlas labels warped by U (one-hot interpolation) against the target's,
    before and after registration, and the % of non-positive Jacobian determinants of U."""
    was_training = net.training
    net.eval()
    before, after, folding = [], [], []
    for item in pairs:
        p, k = item.pair, item.num_labels
        forward, _ = net(p.image_a, p.image_b)
        warped = warp(one_hot(p.labels_a, k), forward.float()).argmax(1, keepdim=True)
        before.append(mean_dice(p.labels_a, p.labels_b))
        after.append(mean_dice(warped, p.labels_b))
        folding.append(100.0 * float((jacobian_determinant(forward.float()) <= 0).float().mean()))
    net.train(was_training)
    n = max(1, len(pairs))
    return {"val_dice_before": sum(before) / n, "val_dice": sum(after) / n,
            "val_folding_percent": sum(folding) / n}
