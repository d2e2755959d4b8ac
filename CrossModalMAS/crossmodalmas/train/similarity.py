"""``crossmodalmas train-similarity``: train the similarity network (seed 000, Algorithm 1) on
synthetic cross-modality pairs and/or a dataset's real pairs (:mod:`crossmodalmas.train.real_pairs`)
whose atlas is warped by a registration network.

Each step draws ``batch_size`` pairs (:mod:`crossmodalmas.synth`), warps each atlas onto its
target (by the registration network, or by the pair's true field for a share of them),
samples query voxels along the target's label boundaries and candidate supports around them
(:mod:`crossmodalmas.train.patches`), keeps one support with patch Dice > thr1 and one with
Dice < thr2 per query (eq. 9), and minimises the cross-entropy of eq. 8 over the pair's
similarities (eq. 7). The run folder is laid out as the registration trainer's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from crossmodalmas.errors import InputError
from crossmodalmas.models import find_model
from crossmodalmas.registration_engine import INSTANCE_OPTIMISATION, load_registration_model
from crossmodalmas.train.distributed import Distributed
from crossmodalmas.train.loop import path_without_a_model, run_training
from crossmodalmas.train.model_entry import training_data, write_model
from crossmodalmas.train.patches import patch_dice, random_offsets, sample_queries, support_logits, triplets
from crossmodalmas.train.run_state import RunState
from crossmodalmas.train.similarity_config import TrainSimilarityConfig
from crossmodalmas.train.similarity_validation import (real_validation_cases, similarity_validation_pairs,
                                                       validate_similarity)
from crossmodalmas.train.warped_pairs import WarpedPair, warp_pairs

ARCHITECTURE = "similarity-net"
_COLUMNS = ["step", "seconds", "loss", "triplets", "triplet_accuracy",
            "val_spearman", "val_spearman_within", "val_triplet_accuracy"]
_REAL_COLUMNS = ["val_real_spearman", "val_real_spearman_within", "val_real_triplet_accuracy"]


def triplet_loss(net, warped: WarpedPair, config: TrainSimilarityConfig, generator) -> dict:
    """Eq. 8 over the triplets of every pair in ``warped``: ``-log sim_positive`` where
    ``sim`` is the softmax of eq. 7 over the triplet's two supports."""
    return embedding_triplet_loss(net.embed_target(warped.target), net.embed_atlas(warped.atlas), warped, config,
                                  generator)


def embedding_triplet_loss(target_embedding: torch.Tensor, atlas_embedding: torch.Tensor, warped: WarpedPair,
                           config: TrainSimilarityConfig, generator) -> dict:
    """:func:`triplet_loss` from the embeddings ``(N, E, D, H, W)`` of ``warped``'s targets and atlases."""
    logits, count = [], 0
    for index in range(warped.target.shape[0]):
        queries = sample_queries(warped.target_labels[index], config.queries, config.margin, generator)
        offsets = random_offsets(queries.shape[0], config.candidates, config.max_offset, generator)
        dice = patch_dice(warped.target_labels[index], warped.atlas_labels[index], queries, offsets)
        rows, positives, negatives = triplets(dice, config.positive_dice, config.negative_dice, generator)
        if rows.numel() == 0:
            continue
        chosen = torch.stack([offsets[rows, positives], offsets[rows, negatives]], dim=1)  # (T, 2, 3)
        logits.append(support_logits(target_embedding[index], atlas_embedding[index], queries[rows], chosen))
        count += rows.numel()
    if not logits:
        zero = target_embedding.sum() * 0.0  # keeps the graph: a step with no triplet changes nothing
        return {"total": zero, "triplets": 0.0, "triplet_accuracy": float("nan")}
    logits = torch.cat(logits)
    loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
    accuracy = float((logits[:, 0] > logits[:, 1]).float().mean())
    return {"total": loss, "triplets": float(count), "triplet_accuracy": accuracy}


class _Embeddings(nn.Module):
    """Both embeddings of a batch in one forward pass: what DDP wraps, since it averages the
    gradients of what ``forward`` computes (and the network's own forward is the fusion's logits)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, target: torch.Tensor, atlas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.embed_target(target), self.net.embed_atlas(atlas)


def _check_registration_model(name: Optional[str]) -> None:
    if name == INSTANCE_OPTIMISATION:
        raise InputError("train-similarity: 'registration_model' must name a registration network, "
                         "not 'instance-opt'")
    find_model(name, "registration", flag="train-similarity: 'registration_model'")


class _Run(RunState):
    """A similarity run: warped synthetic and/or real pairs, eq. 8 over triplets, rank validation."""

    _PLOT = ("loss", "val_spearman")

    def __init__(self, config: TrainSimilarityConfig, out: Path, place: Distributed = Distributed()):
        real = config.real_fraction > 0
        super().__init__(config, out, ARCHITECTURE, _COLUMNS + (_REAL_COLUMNS if real else []), place)
        if real:
            self._PLOT = ("loss", "val_real_spearman")
        _check_registration_model(config.registration_model)
        self.registration = load_registration_model(config.registration_model, self.device)
        main = place.is_main
        self.validation = (similarity_validation_pairs(self.eval_bank, self.registration, config, self.device)
                           if main and self.eval_bank is not None else [])
        self.real_validation = (real_validation_cases(self.real.validation_pairs(
            config.validation_pairs, config.seed + 1, self.device), self.registration, config, self.device)
            if main and real else [])

    def trained_module(self) -> nn.Module:
        return _Embeddings(self.net)

    def unused_parameters(self) -> bool:
        return True  # a step without triplets reaches the target branch alone

    def batch(self) -> WarpedPair:
        """This step's pairs, each atlas warped onto its target (a real pair's by the network:
        ``true_field_fraction`` is for synthetic pairs, which alone have a true field)."""
        item = self.next_pairs()
        count = item.pair.image_a.shape[0]
        if item.real:
            true_field = torch.zeros(count, dtype=torch.bool, device=self.device)
        else:
            true_field = torch.rand(count, generator=self.generator, device=self.device) < self.config.true_field_fraction
        return warp_pairs(self.registration, item.pair, true_field)

    def train_step(self) -> dict:
        warped = self.batch()
        with self.autocast:
            target_embedding, atlas_embedding = self.model(warped.target, warped.atlas)
            terms = embedding_triplet_loss(target_embedding, atlas_embedding, warped, self.config, self.generator)
        self.optimise(terms["total"].float())
        return {name: float(value.detach()) if torch.is_tensor(value) else value for name, value in terms.items()}

    def validate(self) -> dict:
        figures = {}
        if self.validation:
            figures = validate_similarity(self.net, self.validation, self.config.positive_dice,
                                          self.config.negative_dice)
        if self.real_validation:
            real = validate_similarity(self.net, self.real_validation, self.config.positive_dice,
                                       self.config.negative_dice)
            figures.update({name.replace("val_", "val_real_", 1): value for name, value in real.items()})
        return figures


def train_similarity(config: Optional[TrainSimilarityConfig], out: Path, resume: bool = False,
                     show_progress: bool = True, should_stop: Optional[Callable[[], bool]] = None,
                     steps: Optional[int] = None) -> Path:
    """Train (or go on training) a similarity network; returns the ``model.json`` path
    (``checkpoint.pt`` when stopped early). Arguments as
    :func:`crossmodalmas.train.registration.train_registration`.

    Raises:
        InputError: a bad folder, config, checkpoint or registration model.
    """
    out = Path(out)
    if config is not None:  # refuse a bad registration model before the folder is claimed
        _check_registration_model(config.registration_model)
    run = run_training(TrainSimilarityConfig, _Run, "train-similarity", config, out, resume, show_progress,
                       should_stop, steps, task="similarity", architecture=ARCHITECTURE)
    config = run.config
    unfinished = path_without_a_model(run, out)
    if unfinished is not None:
        return unfinished
    return write_model(run.net, config, ARCHITECTURE, run.validate(), run.seconds, out,
                       task="similarity",
                       working_grid={"spacing_mm": 1.0, "max_voxels": int(torch.tensor(config.shape).prod())},
                       description=f"similarity network (seed 000 eq. 7), trained on {training_data(config)}, "
                                   f"warped by {run.registration.name}")
