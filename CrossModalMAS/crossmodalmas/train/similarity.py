"""``crossmodalmas train-similarity``: train the similarity network (seed 000, Algorithm 1) on
synthetic cross-modality pairs whose atlas is warped by a registration network.

Each step draws ``batch_size`` pairs (:mod:`crossmodalmas.synth`), warps each atlas onto its
target (by the registration network, or by the pair's true field for a share of them),
samples query voxels along the target's label boundaries and candidate supports around them
(:mod:`crossmodalmas.train.patches`), keeps one support with patch Dice > thr1 and one with
Dice < thr2 per query (eq. 9), and minimises the cross-entropy of eq. 8 over the pair's
similarities (eq. 7). The run folder is laid out as the registration trainer's.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from crossmodalmas import __version__
from crossmodalmas.devices import resolve_device
from crossmodalmas.label_sources import LabelMapBank, LabelSource, Split
from crossmodalmas.nets import build_network
from crossmodalmas.nets.similarity import embedding_distance
from crossmodalmas.registration_engine import load_registration_model
from crossmodalmas.synth import synth_pair
from crossmodalmas.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from crossmodalmas.train.log import TrainingLog
from crossmodalmas.train.loop import train_loop
from crossmodalmas.train.model_entry import write_model
from crossmodalmas.train.patches import embeddings_at, patch_dice, random_offsets, sample_queries, triplets
from crossmodalmas.train.run_folder import prepare_folder
from crossmodalmas.train.similarity_config import TrainSimilarityConfig
from crossmodalmas.train.similarity_validation import similarity_validation_pairs, validate_similarity
from crossmodalmas.train.warped_pairs import WarpedPair, warp_pairs

ARCHITECTURE = "similarity-net"
_COLUMNS = ["step", "seconds", "loss", "triplets", "triplet_accuracy",
            "val_spearman", "val_spearman_within", "val_triplet_accuracy"]


def triplet_loss(net, warped: WarpedPair, config: TrainSimilarityConfig, generator) -> dict:
    """Eq. 8 over the triplets of every pair in ``warped``: ``-log sim_positive`` where
    ``sim`` is the softmax of eq. 7 over the triplet's two supports."""
    target_embedding = net.embed_target(warped.target)
    atlas_embedding = net.embed_atlas(warped.atlas)
    logits, count = [], 0
    for index in range(warped.target.shape[0]):
        queries = sample_queries(warped.target_labels[index], config.queries, config.margin, generator)
        offsets = random_offsets(queries.shape[0], config.candidates, config.max_offset, generator)
        dice = patch_dice(warped.target_labels[index], warped.atlas_labels[index], queries, offsets)
        rows, positives, negatives = triplets(dice, config.positive_dice, config.negative_dice, generator)
        if rows.numel() == 0:
            continue
        query = embeddings_at(target_embedding[index], queries[rows])  # (T, E)
        chosen = torch.stack([offsets[rows, positives], offsets[rows, negatives]], dim=1)  # (T, 2, 3)
        support = embeddings_at(atlas_embedding[index], queries[rows, None] + chosen)  # (T, 2, E)
        logits.append(-embedding_distance(query[:, :, None], support.transpose(1, 2)))  # (T, 2)
        count += rows.numel()
    if not logits:
        zero = target_embedding.sum() * 0.0  # keeps the graph: a step with no triplet changes nothing
        return {"total": zero, "triplets": 0.0, "triplet_accuracy": float("nan")}
    logits = torch.cat(logits)
    loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
    accuracy = float((logits[:, 0] > logits[:, 1]).float().mean())
    return {"total": loss, "triplets": float(count), "triplet_accuracy": accuracy}


class _Run:
    """The state of one similarity training run."""

    def __init__(self, config: TrainSimilarityConfig, out: Path):
        self.config, self.out = config, out
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.net = build_network(ARCHITECTURE, config.net.to_dict()).to(self.device)
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=config.learning_rate)
        self.registration = load_registration_model(config.registration_model, self.device)
        if self.registration is None:
            raise ValueError("'registration_model' must name a registration network, not 'instance-opt'")
        self.step, self.seconds = 0, 0.0
        root = Path(config.data_root) if config.data_root else None
        sources = [LabelSource(s) for s in config.sources]
        self.train_bank = LabelMapBank(sources, Split.TRAIN, config.shape, data_root=root)
        eval_bank = LabelMapBank(sources, Split.EVAL, config.shape, data_root=root)
        self.validation = similarity_validation_pairs(eval_bank, self.registration, config, self.device)
        self.log = TrainingLog(out, _COLUMNS)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" else nullcontext())

    def state(self) -> dict:
        return {"config": self.config.to_dict(), "state_dict": self.net.state_dict(),
                "optimiser": self.optimiser.state_dict(), "step": self.step,
                "seconds": self.seconds, "generator": self.generator.get_state(),
                "version": __version__}

    def restore(self, state: dict) -> None:
        self.net.load_state_dict(state["state_dict"], strict=True)
        self.optimiser.load_state_dict(state["optimiser"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.generator.set_state(state["generator"].cpu())

    def batch(self) -> WarpedPair:
        maps = [self.train_bank.draw(self.generator) for _ in range(self.config.batch_size)]
        labels = torch.stack(maps).to(self.device)
        pair = synth_pair(labels, int(labels.max()) + 1, self.config.synth, self.generator)
        true_field = torch.rand(labels.shape[0], generator=self.generator, device=self.device)
        return warp_pairs(self.registration, pair, true_field < self.config.true_field_fraction)

    def train_step(self) -> dict:
        warped = self.batch()
        with self.autocast:
            terms = triplet_loss(self.net, warped, self.config, self.generator)
        self.optimiser.zero_grad(set_to_none=True)
        terms["total"].float().backward()
        self.optimiser.step()
        return {name: float(value.detach()) if torch.is_tensor(value) else value for name, value in terms.items()}

    def validate(self) -> dict:
        return validate_similarity(self.net, self.validation)

    def checkpoint(self) -> None:
        save_checkpoint(self.state(), self.out / CHECKPOINT_NAME)
        self.log.plot("loss", "val_spearman")


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
    config = prepare_folder(TrainSimilarityConfig, config, out, resume, steps, "train-similarity")
    if config.threads:
        torch.set_num_threads(config.threads)
    run = _Run(config, out)
    if resume:
        run.restore(load_checkpoint(out / CHECKPOINT_NAME, run.device))
    train_loop(run, "train-similarity", show_progress, should_stop or (lambda: False))
    run.checkpoint()
    if run.step < config.steps:
        return out / CHECKPOINT_NAME
    return write_model(run.net, config, ARCHITECTURE, run.validate(), run.seconds, out,
                       task="similarity",
                       working_grid={"spacing_mm": 1.0, "max_voxels": int(torch.tensor(config.shape).prod())},
                       description="similarity network (seed 000 eq. 7), trained on synthetic pairs from "
                                   f"{', '.join(config.sources)} warped by {run.registration.name}")
