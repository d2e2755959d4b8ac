"""Atlas selection: rank the affinely aligned atlases by a modality-robust similarity.

Seed 004 ranks atlases by ImageNet DenseNet features, which cannot be downloaded here and do
not suit cross-modality pairs; we rank by normalised mutual information (Studholme et al.,
1999) between the target and each affinely aligned atlas on the working grid, which depends
on how well intensities *predict* each other, not on their being alike.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """NMI = (H(a) + H(b)) / H(a, b) of two images on the same grid, in [1, 2].

    Both images are expected in [0, 1] (as :func:`crossmodalmas.preprocess.robust_normalise` gives).
    """
    if a.shape != b.shape:
        raise ValueError(f"normalised_mutual_information(): shapes differ, {a.shape} and {b.shape}")
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins, range=[[0, 1], [0, 1]])
    joint = joint / max(joint.sum(), 1.0)

    def entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    joint_entropy = entropy(joint)
    if joint_entropy == 0.0:
        return 1.0
    return (entropy(joint.sum(0)) + entropy(joint.sum(1))) / joint_entropy


def selection_scores(target: np.ndarray, atlases: np.ndarray) -> np.ndarray:
    """NMI of each affinely aligned atlas ``(N, K, J, I)`` with the ``target`` ``(K, J, I)``: ``(N,)``."""
    return np.array([normalised_mutual_information(target, atlas) for atlas in atlases])


def select_atlases(scores: np.ndarray, keep: Optional[int]) -> np.ndarray:
    """Indices of the ``keep`` atlases with the highest ``scores``, best first.

    Args:
        scores: ``(N,)`` selection scores (:func:`selection_scores`).
        keep: how many to keep; None or >= N keeps all, in their given order.

    Returns:
        ``(min(keep, N),)`` int indices.

    Raises:
        ValueError: ``keep`` < 1.
    """
    count = len(scores)
    if keep is None or keep >= count:
        return np.arange(count)
    if keep < 1:
        raise ValueError(f"select_atlases(): 'keep' must be >= 1, got {keep}")
    return np.argsort(-np.asarray(scores), kind="stable")[:keep]
