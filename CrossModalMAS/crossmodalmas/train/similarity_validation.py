"""Held-out warped pairs and the figures a similarity network is judged by: how well its
similarities rank candidate atlas patches by their label Dice (seed 000 Fig. 5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from crossmodalmas.label_sources import LabelMapBank
from crossmodalmas.synth import synth_pair
from crossmodalmas.train.patches import patch_dice, random_offsets, sample_queries, support_logits
from crossmodalmas.train.validation import ValidationPair
from crossmodalmas.train.warped_pairs import WarpedPair, warp_pairs

_QUERIES = 128  # per validation pair


@dataclass
class ValidationCase:
    """One warped pair with fixed queries ``(Q, 3)``, offsets ``(Q, K, 3)`` and their Dice ``(Q, K)``."""

    warped: WarpedPair
    queries: torch.Tensor
    offsets: torch.Tensor
    dice: torch.Tensor


def _case(warped: WarpedPair, config, generator: torch.Generator) -> ValidationCase:
    """Fixed queries, offsets and their patch Dice on one warped pair."""
    queries = sample_queries(warped.target_labels[0], _QUERIES, config.margin, generator)
    offsets = random_offsets(queries.shape[0], config.candidates, config.max_offset, generator)
    dice = patch_dice(warped.target_labels[0], warped.atlas_labels[0], queries, offsets)
    return ValidationCase(warped, queries, offsets, dice)


def similarity_validation_pairs(bank: LabelMapBank, registration, config, device) -> list[ValidationCase]:
    """Fixed held-out cases: every other one warped by the registration network (as at test
    time), the others by their true field (as after a good registration)."""
    generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    cases = []
    for index, (_, labels) in enumerate(bank.fixed(config.validation_pairs)):
        labels = labels.to(device).unsqueeze(0)
        pair = synth_pair(labels, int(labels.max()) + 1, config.synth, generator)
        warped = warp_pairs(registration, pair, torch.tensor([index % 2 == 1], device=device))
        cases.append(_case(warped, config, generator))
    return cases


def real_validation_cases(pairs: list[ValidationPair], registration, config, device) -> list[ValidationCase]:
    """Fixed cases from held-out real pairs (:meth:`crossmodalmas.train.real_pairs.RealPairs.validation_pairs`),
    each atlas warped by the registration network (a real pair has no true field)."""
    generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    return [_case(warp_pairs(registration, item.pair, torch.tensor([False], device=device)), config, generator)
            for item in pairs]


def candidate_logits(net, case: ValidationCase) -> torch.Tensor:
    """``-d`` of every (query, candidate) of ``case``: ``(Q, K)``."""
    return support_logits(net.embed_target(case.warped.target)[0], net.embed_atlas(case.warped.atlas)[0],
                          case.queries, case.offsets)


def rank_figures(logits: np.ndarray, dice: np.ndarray, positive: float = 0.9,
                 negative: float = 0.5) -> dict[str, float]:
    """Spearman rho of similarity against patch Dice, pooled over all (query, candidate) pairs
    and averaged within queries (what the fusion uses: the ranking of supports at one voxel),
    and the share of (Dice > ``positive``, Dice < ``negative``) candidate pairs of a query
    ranked right.

    Args:
        logits, dice: ``(Q, K)`` arrays.
        positive, negative: thr1 and thr2 of eq. 9.
    """
    pooled = spearmanr(logits.ravel(), dice.ravel()).statistic if np.ptp(dice) > 0 else float("nan")
    within = [spearmanr(l, d).statistic for l, d in zip(logits, dice) if np.ptp(d) > 0 and np.ptp(l) > 0]
    right = total = 0
    for l, d in zip(logits, dice):
        better = l[d > positive][:, None] > l[d < negative][None, :]
        right, total = right + int(better.sum()), total + better.size
    return {"val_spearman": float(pooled),
            "val_spearman_within": float(np.mean(within)) if within else float("nan"),
            "val_triplet_accuracy": right / total if total else float("nan")}


@torch.no_grad()
def validate_similarity(net: torch.nn.Module, cases: list[ValidationCase], positive: float = 0.9,
                        negative: float = 0.5) -> dict[str, float]:
    """:func:`rank_figures` over all validation cases together."""
    was_training = net.training
    net.eval()
    logits = torch.cat([candidate_logits(net, case) for case in cases]).float().cpu().numpy()
    dice = torch.cat([case.dice for case in cases]).cpu().numpy()
    net.train(was_training)
    return rank_figures(logits, dice, positive, negative)
