"""Label maps with many labels (a parcellation): the one-hot warp in chunks of classes, the
label-count limit, the working grid kept within ``MAX_CLASS_VOXELS`` and the probability
resampling in slabs that fit, each giving what the unbounded computation gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import phantom
from crossmodalmas import pipeline, preprocess
from crossmodalmas.atlases import Atlas
from crossmodalmas.errors import InputError
from crossmodalmas.options import SegmentOptions
from crossmodalmas.phantoms import make_grid
from crossmodalmas.transforms import CLASS_CHUNK, one_hot, warp, warp_labels
from crossmodalmas.validate import MAX_LABELS, check_label_count


@pytest.mark.parametrize("classes", [2, CLASS_CHUNK, CLASS_CHUNK + 1, 300])
def test_chunked_onehot_warp_equals_the_whole_one(classes):
    generator = torch.Generator().manual_seed(classes)
    labels = torch.randint(0, classes, (3, 1, 9, 10, 11), generator=generator)
    flow = torch.randn(3, 3, 9, 10, 11, generator=generator) * 1.5
    expected = warp(one_hot(labels, classes), flow).argmax(dim=1, keepdim=True)
    assert torch.equal(warp_labels(labels, flow, classes), expected)


def test_a_tie_goes_to_the_first_class_in_every_chunk():
    """Half way between a voxel of class 3 and one of class 20 (another chunk), class 3 wins,
    as ``argmax`` over all classes gives."""
    labels = torch.zeros((1, 1, 1, 1, 2), dtype=torch.long)
    labels[..., 0], labels[..., 1] = 3, 20
    flow = torch.zeros((1, 3, 1, 1, 2))
    flow[0, 2, 0, 0, 0] = 0.5  # voxel 0 samples at i = 0.5: 50 % class 3, 50 % class 20
    assert warp_labels(labels, flow, 21)[0, 0, 0, 0].tolist() == [3, 20]


def test_the_label_count_limit():
    check_label_count(MAX_LABELS, "atlases")
    with pytest.raises(InputError, match=rf"^atlases: {MAX_LABELS + 1} distinct labels; at most {MAX_LABELS} are "
                                         r"supported \(the fusion holds one map per label on the working grid\); "
                                         r"merge labels or segment groups of them$"):
        check_label_count(MAX_LABELS + 1, "atlases")


@pytest.mark.filterwarnings("ignore:atlases have different label sets")
def test_many_labels_coarsen_the_working_grid(monkeypatch):
    """With a quarter of the class-voxels the region needs, the working grid is coarsened to
    about a quarter of the voxels (``working_grid``'s cap is approximate: it rounds the size),
    the run says so, and the labels still come back on the target's grid."""
    target, _ = phantom(1, "ct")
    atlases = [Atlas(f"mr{seed}", *phantom(seed, "mr")) for seed in (6, 9)]
    options = SegmentOptions(model="instance-opt", refine_iterations=0, fusion="mv", device="cpu")  # no deformation
    full = pipeline.segment(target, atlases, options)
    classes = len(full.label_values)
    budget = classes * int(np.prod(full.working_grid.shape)) // 4
    monkeypatch.setattr(pipeline, "MAX_CLASS_VOXELS", budget)
    with pytest.warns(UserWarning, match=rf"{classes - 1} labels: working grid coarsened to at most "
                                         rf"{budget // classes} voxels \(the fusion holds one map per label\)"):
        small = pipeline.segment(target, atlases, options)
    assert np.prod(small.working_grid.shape) < np.prod(full.working_grid.shape) / 2  # about a quarter
    assert small.working_grid.spacing[0] > full.working_grid.spacing[0]
    assert small.labels.grid.same_as(target.grid) and set(small.label_values) == set(full.label_values)


def test_probabilities_resampled_in_thin_slabs_give_the_same_labels(monkeypatch):
    source = make_grid((6, 7, 8), (3.0, 3.0, 3.0), rotation_deg=(0.0, 10.0, 0.0))
    target = make_grid((15, 16, 17), (1.2, 1.2, 1.2), rotation_deg=(5.0, 0.0, -5.0))
    probabilities = np.random.default_rng(0).random((40, 6, 7, 8)).astype(np.float32)
    whole = preprocess.resample_probabilities(probabilities, source, target)
    monkeypatch.setattr(preprocess, "_SAMPLED_VALUES", 1)  # one slice at a time
    np.testing.assert_array_equal(preprocess.resample_probabilities(probabilities, source, target), whole)
