"""Evaluation protocols: which dataset cases are targets, and which atlases segment each.

Three protocols, after the papers:

- ``cross-modality`` (seed 000, MM-WHS): for every ordered pair of modalities (A, B), A != B,
  every case of modality B is a target segmented with the cases of modality A as atlases (MR
  atlases for CT targets and the reverse). Group ``"A->B"``.
- ``kfold`` (seed 004, 5-fold cross-validation on PROMISE12): the *subjects* are sorted,
  shuffled with the seed and dealt into K folds (fold = position % K); each fold's cases are
  targets, every case of the other folds (any modality) an atlas. Group ``"fold-N"``.
- ``split``: the dataset's own split: ``test`` cases are targets, ``train`` cases atlases.
  Group ``"test"``.

In every protocol a case never serves as an atlas for a target of the same subject (an MSD
multi-channel case gives one case per channel, all of one subject). ``atlases_per_target``
caps the atlases of a target at the first N of a draw seeded by the seed and the target's id,
so a resumed run draws the same atlases whatever was done before.
"""

from __future__ import annotations

import enum
import re
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from crossmodalmas.data import Case, Dataset
from crossmodalmas.errors import InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class Protocol(str, enum.Enum):
    """The evaluation protocols (see the module docstring)."""

    CROSS_MODALITY = "cross-modality"
    KFOLD = "kfold"
    SPLIT = "split"


@dataclass(frozen=True)
class Task:
    """One target and the atlases that segment it.

    Attributes:
        protocol: the protocol's name (:class:`Protocol` value).
        group: ``"A->B"`` (cross-modality: atlas -> target modality), ``"fold-N"`` (kfold),
            ``"test"`` (split).
        target: the case to segment.
        atlases: the atlas cases, in the order drawn.
    """

    protocol: str
    group: str
    target: Case
    atlases: tuple[Case, ...]

    @property
    def target_id(self) -> str:
        """File-name-safe id, unique across protocols (one results folder may hold several):
        ``subject_modality_from_A`` (cross-modality: a case is a target once per atlas
        modality A), ``subject_modality_kfold``, ``subject_modality_split``."""
        if self.protocol == Protocol.CROSS_MODALITY.value:
            suffix = f"from_{self.group.split('->')[0]}"
        else:
            suffix = self.protocol
        return _UNSAFE.sub("_", f"{self.target.subject}_{self.target.modality}_{suffix}")


def case_name(case: Case) -> str:
    """A case's name as an atlas: ``subject_modality``."""
    return f"{case.subject}_{case.modality}"


def fold_of_subjects(subjects: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    """Deal subjects into folds: sorted, shuffled with ``seed``, fold = position % ``folds``.

    Returns:
        ``{subject: fold}`` with folds in ``[0, folds)``.
    """
    ordered = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[index]: position % folds for position, index in enumerate(order)}


def _draw(task: Task, limit: Optional[int], seed: int) -> Task:
    """``task`` with its atlases capped at the first ``limit`` of a seeded permutation."""
    if limit is None or len(task.atlases) <= limit:
        return task
    rng = np.random.default_rng([seed, zlib.crc32(f"{task.protocol}/{task.target_id}".encode())])
    order = rng.permutation(len(task.atlases))[:limit]
    return Task(task.protocol, task.group, task.target, tuple(task.atlases[i] for i in order))


def _others(target: Case, pool: Sequence[Case]) -> tuple[Case, ...]:
    return tuple(case for case in pool if case.subject != target.subject)


def _cross_modality(cases: Sequence[Case]) -> list[Task]:
    modalities = sorted({case.modality for case in cases})
    if len(modalities) < 2:
        raise InputError(f"--protocol cross-modality: the dataset has one modality ({', '.join(modalities)}); "
                         "it needs cases of at least two")
    tasks = []
    for atlas_modality in modalities:
        pool = [case for case in cases if case.modality == atlas_modality]
        for target_modality in modalities:
            if target_modality == atlas_modality:
                continue
            group = f"{atlas_modality}->{target_modality}"
            tasks += [Task(Protocol.CROSS_MODALITY.value, group, target, _others(target, pool))
                      for target in cases if target.modality == target_modality]
    return tasks


def _kfold(cases: Sequence[Case], folds: int, seed: int) -> list[Task]:
    subjects = sorted({case.subject for case in cases})
    if folds < 2 or folds > len(subjects):
        raise InputError(f"--folds {folds}: must be between 2 and the dataset's number of subjects "
                         f"({len(subjects)})")
    fold = fold_of_subjects(subjects, folds, seed)
    tasks = []
    for n in range(folds):
        pool = [case for case in cases if fold[case.subject] != n]
        tasks += [Task(Protocol.KFOLD.value, f"fold-{n}", target, tuple(pool))
                  for target in cases if fold[target.subject] == n]
    return tasks


def _split(cases: Sequence[Case]) -> list[Task]:
    pool = [case for case in cases if case.split == "train"]
    targets = [case for case in cases if case.split == "test"]
    if not pool or not targets:
        raise InputError(f"--protocol split: the dataset has {len(targets)} 'test' and {len(pool)} 'train' "
                         "cases; it needs at least one of each (give a split column)")
    return [Task(Protocol.SPLIT.value, "test", target, _others(target, pool)) for target in targets]


def plan(dataset: Dataset, protocol: str | Protocol, folds: int = 5,
         atlases_per_target: Optional[int] = None, seed: int = 0) -> list[Task]:
    """The targets of ``protocol`` on ``dataset`` and the atlases of each.

    Args:
        dataset: the opened dataset (:func:`crossmodalmas.data.open_dataset`).
        protocol: a :class:`Protocol` or its value.
        folds: K of the kfold protocol.
        atlases_per_target: cap on the atlases of one target (None: all of them).
        seed: seeds the fold shuffle and the atlas draw.

    Returns:
        Tasks ordered by group, then as the dataset lists the targets.

    Raises:
        InputError: the dataset does not fit the protocol (one modality for cross-modality,
            fewer subjects than folds, no train/test split, a target left without an atlas),
            or ``atlases_per_target`` is below 1.
    """
    protocol = Protocol(protocol)
    if atlases_per_target is not None and atlases_per_target < 1:
        raise InputError(f"--atlases-per-target {atlases_per_target}: must be a positive integer")
    cases = list(dataset.cases)  # unique by (subject, modality): open_dataset checks it
    if protocol is Protocol.CROSS_MODALITY:
        tasks = _cross_modality(cases)
    elif protocol is Protocol.KFOLD:
        tasks = _kfold(cases, folds, seed)
    else:
        tasks = _split(cases)
    for task in tasks:
        if not task.atlases:
            raise InputError(f"--protocol {protocol.value}: target {task.target.image} ({task.group}) has no "
                             "atlas of another subject")
    return [_draw(task, atlases_per_target, seed) for task in tasks]
