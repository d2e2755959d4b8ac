"""crossmodalmas.pose_check: a partial pair's candidate poses, judged after the deformable step."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from crossmodalmas.affine import AffineAligner
from crossmodalmas.atlases import Atlas
from crossmodalmas.instance_opt import RegistrationFields
from crossmodalmas.pose_check import (MARGIN, TARGET_BINS, candidate_scores, chosen_candidate, label_information,
                                      quantile_bins)
from crossmodalmas.search_grid import affine_of
from crossmodalmas.volume import LabelMap, Volume

SPACING = 4.0


def test_label_information_is_n_log_k_where_the_label_fixes_the_bin_and_zero_where_independent():
    classes = np.repeat(np.arange(1, 5), 40)  # four labels, 40 voxels each
    determined = (classes - 1) * 4  # each label on one bin of its own
    assert label_information(classes, determined) == pytest.approx(160 * np.log(4.0))
    independent = np.tile(np.arange(4) * 4, 40)  # every label evenly over four bins
    assert label_information(classes, independent) == pytest.approx(0.0, abs=1e-9)
    # voxels of the outside class do not count, whatever their bins
    with_outside = np.concatenate([classes, np.zeros(30, int)])
    bins = np.concatenate([determined, np.arange(30) % TARGET_BINS])
    assert label_information(with_outside, bins, outside=0) == pytest.approx(160 * np.log(4.0))
    assert label_information(np.zeros(5, int), np.arange(5), outside=0) == 0.0


def test_label_information_refuses_arrays_of_two_shapes():
    with pytest.raises(ValueError, match=r"'classes' \(3,\) and 'target_bins' \(4,\) must have one shape"):
        label_information(np.zeros(3, int), np.zeros(4, int))


def test_quantile_bins_hold_equal_shares():
    bins = quantile_bins(np.random.default_rng(0).random((8, 8, 16)))
    assert bins.min() == 0 and bins.max() == TARGET_BINS - 1
    assert np.all(np.bincount(bins.ravel()) == 1024 // TARGET_BINS)


def test_an_alternative_replaces_the_affine_choice_only_by_the_margin():
    assert chosen_candidate([100.0, 100.0 * MARGIN - 0.1, 50.0]) == 0
    assert chosen_candidate([100.0, 50.0, 100.0 * MARGIN + 0.1]) == 2
    assert chosen_candidate([100.0]) == 0


def _target_and_slab(k0=12, k1=24):
    """A smooth random target whose labels are its own intensity quartiles, and the slab
    ``k0:k1`` of it as the atlas (the identity places it)."""
    image = ndimage.gaussian_filter(np.random.default_rng(0).random((36, 24, 24)), 2.0).astype(np.float32)
    ijk_to_ras = np.diag([SPACING, SPACING, SPACING, 1.0])
    labels = np.digitize(image, np.quantile(image, [0.25, 0.5, 0.75])).astype(np.int32)
    slab = ijk_to_ras.copy()
    slab[2, 3] = k0 * SPACING
    atlas = Atlas("slab", Volume(image[k0:k1].copy(), slab), LabelMap(labels[k0:k1].copy(), slab))
    return Volume(image, ijk_to_ras), atlas


def _no_deformation(calls):
    def register(target_t, atlases_t, target_features, atlas_features, support, grid):
        calls.append((tuple(target_t.shape), tuple(atlases_t.shape), tuple(support.shape), grid))
        zeros = torch.zeros((atlases_t.shape[0], 3, *atlases_t.shape[2:]))
        return RegistrationFields(forward=zeros, backward=zeros)
    return register


def test_the_pose_that_lays_the_labels_on_their_tissue_scores_best_all_on_one_grid():
    target, atlas = _target_and_slab()
    truth = sitk.Transform()
    candidates = [sitk.TranslationTransform(3, (0.0, 0.0, 12.0)), truth, sitk.TranslationTransform(3, (0.0, 0.0, -12.0))]
    before = atlas.image.array.copy(), atlas.labels.array.copy()
    calls = []
    scores = candidate_scores(target, atlas, candidates, (_no_deformation(calls), torch.device("cpu")), 8.0, None, 64 ** 3)
    assert int(np.argmax(scores)) == 1 and min(scores) > 0.0
    (target_shape, atlases_shape, support_shape, grid), = calls  # one call, every candidate on one grid
    assert atlases_shape == (3, 1, *target_shape[2:]) and support_shape == atlases_shape
    assert np.array_equal(atlas.image.array, before[0]) and np.array_equal(atlas.labels.array, before[1])


def test_candidates_whose_labels_miss_the_target_score_zero():
    target, atlas = _target_and_slab()
    far = [sitk.TranslationTransform(3, (0.0, 0.0, 5000.0))] * 2
    assert candidate_scores(target, atlas, far, (_no_deformation([]), torch.device("cpu")), 8.0, None, 64 ** 3) == [0.0, 0.0]


@pytest.mark.parametrize("k0, k1, partial", [(0, 36, False), (12, 22, True)])
def test_a_partial_pair_gets_its_choice_moved_along_the_slab_axis_a_whole_pair_its_choice_alone(k0, k1, partial):
    target, atlas = _target_and_slab(k0, k1)
    aligner = AffineAligner(target)
    candidates = aligner.candidates(atlas.image, 0, atlas.labels, shifts_mm=(-7.0, 14.0))
    assert len(candidates) == (3 if partial else 1)
    chosen = affine_of(candidates[0])
    assert np.allclose(np.asarray(chosen.GetMatrix()), aligner.align(atlas.image, 0, atlas.labels).GetMatrix())
    for shifted, shift in zip(candidates[1:], (-7.0, 14.0)):
        centre = np.array([0.0, 0.0, 60.0])  # any point: the shift is a translation in target space
        moved = np.array(shifted.GetInverse().TransformPoint(chosen.TransformPoint(centre.tolist())))
        assert np.linalg.norm(moved - centre) == pytest.approx(abs(shift), abs=1e-6)
        assert abs(abs((moved - centre)[2]) - abs(shift)) < 0.5  # along S, the slab's thin axis


def test_the_pipeline_aligns_a_slab_by_the_candidate_the_check_chooses(monkeypatch):
    from crossmodalmas import pipeline
    from crossmodalmas.options import SegmentOptions

    target, atlas = _target_and_slab(12, 22)
    offered, boxed = [], []
    real_candidates, real_box = AffineAligner.candidates, pipeline.label_box_in_target
    monkeypatch.setattr(AffineAligner, "candidates",
                        lambda *args, **kwargs: offered.append(real_candidates(*args, **kwargs)) or offered[-1])
    monkeypatch.setattr(pipeline, "candidate_scores", lambda target, atlas, candidates, *rest: [1.0, 1.0, 1.0, 9.0, 1.0])
    monkeypatch.setattr(pipeline, "label_box_in_target", lambda labels, t: boxed.append(t) or real_box(labels, t))
    pipeline.segment(target, [atlas], SegmentOptions(model="instance-opt", refine_iterations=1, fusion="mv"))
    assert len(offered) == 1 and len(offered[0]) == 5
    assert boxed == [offered[0][3]]  # the check's choice is the transform the run goes on with
