"""crossmodalmas.global_search and crossmodalmas.affine: finding the anatomy before the affine step."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from crossmodalmas.affine import affine_align
from crossmodalmas.global_search import (GlobalSearch, _present_ranks, _ranks, pose_transform, rotation_about,
                                         search_orientations)
from crossmodalmas.preprocess import transform_points_to_target
from crossmodalmas.search_grid import ras_to_lps_affine
from crossmodalmas.volume import LabelMap, Volume

SPACING = 4.0


def _blobs(shape=(40, 32, 32), seed=0) -> np.ndarray:
    """A smooth random image with structure everywhere (no symmetry a flip could match)."""
    noise = np.random.default_rng(seed).random(shape)
    return ndimage.gaussian_filter(noise, 2.0).astype(np.float32)


def _grid(shape, origin=(0.0, 0.0, 0.0), rotation=np.eye(3)) -> np.ndarray:
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation * SPACING
    ijk_to_ras[:3, 3] = origin
    return ijk_to_ras


def _rot(axis: int) -> np.ndarray:
    """180 degrees about RAS axis ``axis``."""
    matrix = -np.eye(3)
    matrix[axis, axis] = 1.0
    return matrix


def _error_mm(atlas: Volume, frame: np.ndarray, transform) -> float:
    """Mean distance between where ``transform`` puts atlas voxels and where they truly are
    (the atlas is the target's voxels [k0:] re-labelled by ``frame``: RAS -> scanner RAS)."""
    ijk = np.argwhere(np.ones(atlas.array.shape, bool))[::97][:, ::-1].astype(float)
    points = atlas.grid.ijk_to_points(ijk)
    truth = (np.linalg.inv(frame) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    return float(np.linalg.norm(transform_points_to_target(points, transform) - truth, axis=1).mean())


def _case(k0: int, k1: int, frame: np.ndarray):
    image = _blobs()
    target = Volume(image, _grid(image.shape))
    slab = image[k0:k1]
    atlas = Volume(slab.copy(), frame @ _grid(slab.shape, origin=(0.0, 0.0, k0 * SPACING)))
    return target, atlas


def _frame(rotation=np.eye(3), offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    frame = np.eye(4)
    frame[:3, :3], frame[:3, 3] = rotation, offset
    return frame


@pytest.mark.parametrize("rotation, offset", [
    (np.eye(3), (0.0, 0.0, 0.0)),
    (np.eye(3), (700.0, -300.0, 1200.0)),  # origins in another frame
    (_rot(2), (0.0, 0.0, 0.0)),  # LPS read as RAS
    (_rot(1), (-50.0, 20.0, 900.0)),  # head-first vs feet-first, and far away
    (_rot(2) @ rotation_about(0, 15.0), (100.0, 0.0, -400.0)),  # LPS read as RAS, and a tilted patient
])
def test_a_slab_of_a_fifth_of_the_target_is_found_in_any_frame(rotation, offset):
    frame = _frame(rotation, offset)
    target, atlas = _case(24, 32, frame)  # 8 of 40 slices, near the end
    best = GlobalSearch(target, spacing_mm=SPACING).poses(atlas, keep=1)[0]
    assert _error_mm(atlas, frame, pose_transform(best)) < SPACING  # within one search voxel


def test_a_target_that_is_a_slab_of_the_atlas_is_found():
    image = _blobs()
    atlas = Volume(image, _frame(_rot(2), (300.0, 0.0, 0.0)) @ _grid(image.shape))
    target = Volume(image[10:20].copy(), _grid((10, 32, 32), origin=(0.0, 0.0, 10 * SPACING)))
    best = GlobalSearch(target, spacing_mm=SPACING).poses(atlas, keep=1)[0]
    point = transform_points_to_target(atlas.grid.ijk_to_points(np.array([[5.0, 5.0, 15.0]])), pose_transform(best))
    assert np.linalg.norm(point[0] - np.array([5.0, 5.0, 15.0]) * SPACING) < SPACING
    assert best.overlap == pytest.approx(1.0, abs=0.05)  # all of the target overlaps the atlas


def test_poses_are_sorted_and_kept_apart():
    target, atlas = _case(10, 18, _frame())
    poses = GlobalSearch(target, spacing_mm=SPACING).poses(atlas, keep=3, orientations=[np.eye(3)])
    assert [p.score for p in poses] == sorted((p.score for p in poses), reverse=True)
    shifts = [p.translation for p in poses]
    assert min(np.linalg.norm(a - b) for i, a in enumerate(shifts) for b in shifts[i + 1:]) >= 30.0 - 1e-6


@pytest.mark.parametrize("target_is_slab", [True, False])
def test_trimmed_correlations_find_the_poses_untrimmed_ones_find(monkeypatch, target_is_slab):
    from crossmodalmas import global_search

    image = _blobs()
    turn = _rot(1) @ rotation_about(0, 15.0)
    slab = Volume(image[12:20].copy(), _grid((8, 32, 32), origin=(0.0, 0.0, 12 * SPACING)))
    whole = Volume(image, _frame(turn, (40.0, -20.0, 300.0)) @ _grid(image.shape))
    target, atlas = (slab, whole) if target_is_slab else (whole, slab)
    orientations = [np.eye(3), _rot(1), turn]
    sizes = []
    real_size = global_search.correlation_size
    monkeypatch.setattr(global_search, "correlation_size", lambda *a: sizes.append(real_size(*a)) or sizes[-1])
    trimmed = GlobalSearch(target, spacing_mm=SPACING).poses(atlas, keep=4, orientations=orientations)
    monkeypatch.setattr(global_search, "least_shared_slices", lambda *a: np.ones(3, int))  # no trimming
    untrimmed = GlobalSearch(target, spacing_mm=SPACING).poses(atlas, keep=4, orientations=orientations)
    assert len(trimmed) == len(untrimmed) == 4
    for a, b in zip(trimmed, untrimmed):
        np.testing.assert_array_equal(a.rotation, b.rotation)
        np.testing.assert_allclose(a.translation, b.translation, atol=1e-9)
        assert a.score == pytest.approx(b.score, rel=1e-9) and a.overlap == b.overlap
    assert np.prod(sizes[0]) < np.prod(sizes[1])  # it did trim


def test_no_pose_asked_computes_none(monkeypatch):
    from crossmodalmas import global_search

    monkeypatch.setattr(global_search, "_dependence_map", lambda *a: pytest.fail("correlated though keep=0"))
    target, atlas = _case(24, 32, _frame())
    assert GlobalSearch(target, spacing_mm=SPACING).poses(atlas, keep=0) == []


def test_scores_of_transforms_rank_the_truth_first():
    frame = _frame(np.eye(3), (100.0, 0.0, 0.0))
    target, atlas = _case(16, 26, frame)
    search = GlobalSearch(target, spacing_mm=SPACING)
    truth = search.poses(atlas, keep=1)[0]
    shifted = pose_transform(truth)
    shifted.SetTranslation(tuple(np.array(shifted.GetTranslation()) + (0.0, 0.0, 30.0)))
    right, wrong = search.scores(atlas, [pose_transform(truth), shifted])
    assert right > wrong


def _featureless_with_labels(target: Volume, k0: int, k1: int):
    """Slices ``k0:k1`` of ``target`` as an atlas whose image shows nothing (one intensity) but
    whose label map does (the target's intensities cut into four structures)."""
    slab = target.array[k0:k1]
    ijk_to_ras = _grid(slab.shape, origin=(0.0, 0.0, k0 * SPACING))
    structures = np.digitize(slab, np.quantile(slab, [0.25, 0.5, 0.75])).astype(np.int32)
    return Volume(np.ones_like(slab), ijk_to_ras), LabelMap(structures, ijk_to_ras)


def test_scores_tell_structures_of_one_intensity_apart_by_their_labels():
    target = Volume(_blobs(), _grid((40, 32, 32)))
    atlas, labels = _featureless_with_labels(target, 14, 26)
    search = GlobalSearch(target, spacing_mm=SPACING)
    truth = sitk.Transform()
    shifted = sitk.TranslationTransform(3, (0.0, 0.0, 3 * SPACING))
    assert search.scores(atlas, [truth, shifted]) == pytest.approx([0.0, 0.0], abs=1e-6)  # intensities alone: no evidence
    right, wrong = search.scores(search.moving(atlas, labels), [truth, shifted])
    assert right > wrong > 0.0


def test_scores_depend_on_which_voxels_share_a_label_not_on_the_label_ids():
    target = Volume(_blobs(), _grid((40, 32, 32)))
    atlas, labels = _featureless_with_labels(target, 14, 26)
    sparse_ids = np.array([900, 3, 70000, 41], np.int64)[labels.array]  # out of order, with gaps
    search = GlobalSearch(target, spacing_mm=SPACING)
    transforms = [sitk.Transform(), sitk.TranslationTransform(3, (2.0, -4.0, 3 * SPACING))]
    dense = search.scores(search.moving(atlas, labels), transforms)
    relabelled = search.moving(atlas, LabelMap(sparse_ids, labels.ijk_to_ras))
    assert search.scores(relabelled, transforms) == pytest.approx(dense)


def test_ranks_are_what_a_sort_gives_slab_by_slab_in_the_smallest_type(monkeypatch):
    from crossmodalmas import global_search

    rng = np.random.default_rng(4)
    ids = rng.choice(np.array([-7, 0, 5, 2**31 + 9, 12]), size=(6, 5, 4))
    monkeypatch.setattr(global_search, "_RANK_SLAB_VOXELS", 7)  # slabs that split rows, one value absent from some
    ranks = _ranks(ids)
    np.testing.assert_array_equal(ranks, np.unique(ids, return_inverse=True)[1].reshape(ids.shape))
    assert ranks.dtype == np.uint8
    assert _ranks(np.arange(300).reshape(3, 10, 10)).dtype == np.uint16
    assert _ranks(np.full((2, 2, 2), 9)).tolist() == np.zeros((2, 2, 2), int).tolist()


def test_present_ranks_count_what_a_sort_would_give():
    rng = np.random.default_rng(3)
    ids = rng.choice(np.array([-7, 0, 5, 2**31 + 9, 12]), size=(6, 5, 4))
    ranks = _ranks(ids)
    some = ranks[ranks != ranks.max()]  # one rank absent: the rest re-ranked without a gap
    assert ranks.max() == 4
    np.testing.assert_array_equal(_present_ranks(some), np.unique(some, return_inverse=True)[1].reshape(-1))


def test_polish_follows_the_labels_of_a_featureless_atlas():
    target = Volume(_blobs(), _grid((40, 32, 32)))
    atlas, labels = _featureless_with_labels(target, 14, 26)
    search = GlobalSearch(target, spacing_mm=SPACING)
    off = sitk.TranslationTransform(3, (5.0, -6.0, 7.0))
    polished = search.polish(search.moving(atlas, labels), off)
    assert _error_mm(atlas, _frame(), polished) < SPACING
    assert _error_mm(atlas, _frame(), search.polish(atlas, off)) == pytest.approx(_error_mm(atlas, _frame(), off))


def test_slide_moves_a_slab_back_along_its_axis():
    target, atlas = _case(14, 26, _frame())  # the truth is the identity
    search = GlobalSearch(target, spacing_mm=SPACING)
    off = sitk.TranslationTransform(3, (0.0, 0.0, 6 * SPACING))  # 24 mm off along S
    slid = search.slide(atlas, off, np.array([0.0, 0.0, 1.0]), reach_mm=8 * SPACING)
    assert _error_mm(atlas, _frame(), slid) < 1e-6
    assert search.scores(atlas, [slid])[0] > search.scores(atlas, [off])[0]
    short = search.slide(atlas, off, np.array([0.0, 0.0, 1.0]), reach_mm=2 * SPACING)  # cannot reach it
    assert _error_mm(atlas, _frame(), short) == pytest.approx(4 * SPACING, abs=1e-6)


def _moved(transform, shift_lps=(0.0, 0.0, 0.0), degrees=0.0):
    """``transform`` after a rotation about the L axis and a shift (target LPS side)."""
    error = sitk.Euler3DTransform()
    error.SetRotation(np.radians(degrees), 0.0, 0.0)
    error.SetTranslation(shift_lps)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(transform)
    composite.AddTransform(error)
    return composite


def test_polish_walks_an_offset_pose_back_to_the_truth():
    frame = _frame(_rot(2), (200.0, 0.0, -300.0))
    target, atlas = _case(14, 26, frame)
    search = GlobalSearch(target, spacing_mm=SPACING)
    truth = pose_transform(search.poses(atlas, keep=1)[0])
    assert _error_mm(atlas, frame, truth) < SPACING
    off = _moved(truth, (6.0, -5.0, 9.0), degrees=5.0)
    assert _error_mm(atlas, frame, off) > 2 * SPACING
    polished = search.polish(atlas, off)
    assert isinstance(polished, sitk.AffineTransform)
    assert _error_mm(atlas, frame, polished) < SPACING
    assert search.scores(atlas, [polished])[0] >= search.scores(atlas, [off])[0]


def test_polish_keeps_a_pose_that_no_rigid_motion_improves():
    target, atlas = _case(14, 26, _frame())
    search = GlobalSearch(target, spacing_mm=SPACING)
    start = pose_transform(search.poses(atlas, keep=1)[0])
    polished = search.polish(atlas, start)
    assert search.scores(atlas, [polished])[0] >= search.scores(atlas, [start])[0]
    assert _error_mm(atlas, _frame(), polished) < SPACING


def test_orientations_are_proper_rotations():
    rotations = search_orientations()
    assert len(rotations) == 4 * 7  # each of the four flips alone and tilted +- about three axes
    for rotation in rotations:
        assert np.allclose(rotation @ rotation.T, np.eye(3)) and np.isclose(np.linalg.det(rotation), 1.0)
    assert min(np.abs(a - b).max() for i, a in enumerate(rotations) for b in rotations[i + 1:]) > 0.1  # distinct
    assert any(np.allclose(r, _rot(2) @ rotation_about(0, 15.0)) for r in rotations)  # a flip and a tilt together
    assert len(search_orientations(tilt_deg=0)) == 4


def test_search_leaves_its_inputs_alone():
    target, atlas = _case(24, 32, _frame(_rot(2)))
    before = (target.array.copy(), target.ijk_to_ras.copy(), atlas.array.copy(), atlas.ijk_to_ras.copy())
    GlobalSearch(target, spacing_mm=SPACING).poses(atlas, keep=2)
    for a, b in zip(before, (target.array, target.ijk_to_ras, atlas.array, atlas.ijk_to_ras)):
        assert np.array_equal(a, b)


def test_affine_align_recovers_a_flipped_and_tilted_slab():
    frame = _frame(_rot(2) @ rotation_about(0, 12.0) @ rotation_about(1, -8.0), (-300.0, 40.0, 600.0))
    target, atlas = _case(18, 28, frame)
    assert _error_mm(atlas, frame, affine_align(target, atlas)) < SPACING


def test_affine_align_recovers_a_flipped_far_off_slab():
    frame = _frame(_rot(2), (400.0, 250.0, -800.0))
    target, atlas = _case(20, 30, frame)
    assert _error_mm(atlas, frame, affine_align(target, atlas)) < SPACING


def test_shares_of_a_slab_and_of_a_whole_pair():
    target, slab = _case(24, 32, _frame())  # 8 of 40 slices, in place
    search = GlobalSearch(target, spacing_mm=SPACING)
    target_share, atlas_share = search.shares(slab, pose_transform(search.poses(slab, keep=1)[0]))
    assert target_share == pytest.approx(8 / 40, abs=0.04) and atlas_share == pytest.approx(1.0, abs=0.05)
    whole = Volume(target.array.copy(), target.ijk_to_ras.copy())
    assert min(search.shares(whole, sitk.Transform())) > 0.95
    shifted = sitk.TranslationTransform(3, (0.0, 0.0, 20 * SPACING))  # half of it hangs outside
    assert search.shares(whole, shifted) == pytest.approx((0.5, 0.5), abs=0.05)


@pytest.mark.parametrize("slab, partial", [((0, 40), False), ((14, 26), True)])
def test_each_kind_is_polished_and_only_a_partial_pair_again_finer(monkeypatch, slab, partial):
    from crossmodalmas import affine

    calls, slides = [], []
    real, real_slide = GlobalSearch.polish, GlobalSearch.slide
    monkeypatch.setattr(GlobalSearch, "polish", lambda self, atlas, t: calls.append(self.spacing_mm) or real(self, atlas, t))
    monkeypatch.setattr(GlobalSearch, "slide",
                        lambda self, *args: slides.append(self.spacing_mm) or real_slide(self, *args))
    target, atlas = _case(*slab, _frame())
    affine.AffineAligner(target).align(atlas)
    # the best header-based and the best searched transform on the search grid; for a partial
    # pair then the one chosen of them, slid along the slab's axis, on a grid twice as fine
    coarse, fine = GlobalSearch(target).spacing_mm, GlobalSearch(target, affine._POLISH_SPACING_MM).spacing_mm
    assert fine == pytest.approx(coarse / 2)
    assert calls == pytest.approx([coarse, coarse, fine] if partial else [coarse, coarse])
    assert slides == pytest.approx([fine] if partial else [])


@pytest.mark.parametrize("atlas_is_slab", [True, False])
def test_slab_axis_is_the_thin_axis_of_the_slab_seen_in_the_target(atlas_is_slab):
    from crossmodalmas.affine import slab_axis

    frame = _frame(_rot(1) @ rotation_about(0, 15.0), (40.0, 0.0, 300.0))  # head/feet, tilted, elsewhere
    slab, whole = _grid((8, 32, 32)), _grid((40, 32, 32))
    atlas = Volume(np.zeros((8, 32, 32) if atlas_is_slab else (40, 32, 32), np.float32),
                   frame @ (slab if atlas_is_slab else whole))
    target = Volume(np.zeros((40, 32, 32) if atlas_is_slab else (8, 32, 32), np.float32),
                    whole if atlas_is_slab else slab)
    truth = ras_to_lps_affine(frame[:3, :3], frame[:3, 3])  # target LPS -> atlas LPS: the frame, in LPS
    shares = (0.2, 1.0) if atlas_is_slab else (1.0, 0.2)
    axis = slab_axis(target, atlas, truth, shares)
    assert abs(axis @ np.array([0.0, 0.0, 1.0])) == pytest.approx(1.0)  # the target's S axis either way


def test_a_searched_transform_must_beat_the_header_by_the_margin():
    from crossmodalmas.affine import _HEADER_MARGIN, _preferred

    header, searched = sitk.Transform(), sitk.TranslationTransform(3, (1.0, 2.0, 3.0))
    assert _preferred([(header, 100.0)], [(searched, 100.0 * _HEADER_MARGIN - 1.0)]) is header
    assert _preferred([(header, 100.0)], [(searched, 100.0 * _HEADER_MARGIN + 1.0)]) is searched
    assert _preferred([], [(searched, 1.0), (header, 2.0)]) is header  # no header kind: the best
    assert _preferred([(header, 1.0)], []) is header


def _turned(rotation: np.ndarray, scale: float = 1.0) -> sitk.AffineTransform:
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((scale * rotation).ravel().tolist())
    transform.SetTranslation((40.0, -7.0, 3.0))
    return transform


def test_turn_between_measures_the_rotation_whatever_the_scale_and_shift():
    from crossmodalmas.affine import turn_between

    assert turn_between(_turned(np.eye(3)), sitk.Transform()) == pytest.approx(0.0, abs=1e-6)
    assert turn_between(_turned(np.eye(3), 1.3), _turned(rotation_about(0, 15.0), 0.8)) == pytest.approx(15.0)
    assert turn_between(_turned(rotation_about(1, 30.0)), _turned(rotation_about(1, -20.0))) == pytest.approx(50.0)
    assert turn_between(_turned(np.eye(3)), _turned(rotation_about(2, 180.0))) == pytest.approx(180.0)


def test_on_a_partial_pair_a_searched_pose_of_the_headers_orientation_needs_no_margin():
    """The margin guards the header's orientation (a flip of symmetric anatomy scores almost as
    well); a partial pair's header-based translation, centred on fields of view that differ, is
    worth nothing, so a pose turned the header's way wins by its score alone."""
    from crossmodalmas.affine import _HEADER_MARGIN, _SAME_ORIENTATION_DEG, _preferred

    header = _turned(np.eye(3))
    tilted, flipped = _turned(rotation_about(0, 15.0)), _turned(rotation_about(1, 180.0))
    beaten_narrowly = 100.0 * (1.0 + _HEADER_MARGIN) / 2.0
    assert _preferred([(header, 100.0)], [(tilted, beaten_narrowly)], partial=True) is tilted
    assert _preferred([(header, 100.0)], [(tilted, 99.0)], partial=True) is header
    assert _preferred([(header, 100.0)], [(tilted, 100.0)], partial=True) is header  # a tie keeps the header
    assert _preferred([(header, 100.0)], [(flipped, beaten_narrowly)], partial=True) is header
    assert _preferred([(header, 100.0)], [(tilted, beaten_narrowly)]) is header  # a whole pair: the margin
    just_turned = _turned(rotation_about(2, _SAME_ORIENTATION_DEG + 1.0))
    assert _preferred([(header, 100.0)], [(just_turned, beaten_narrowly)], partial=True) is header


def test_starts_rank_the_searched_poses_again_by_the_labels():
    from crossmodalmas import affine

    target = Volume(_blobs(), _grid((40, 32, 32)))
    atlas, labels = _featureless_with_labels(target, 14, 26)  # its intensities rank no pose above another
    search = GlobalSearch(target, spacing_mm=SPACING)
    ready = search.moving(atlas, labels)
    candidates = search.poses(ready, keep=affine._RERANKED * affine.GLOBAL_STARTS)
    errors = [_error_mm(atlas, _frame(), pose_transform(pose)) for pose in candidates]
    coarse = affine._downsampled(target)  # the centred starts need an image with mass; the atlas's has none
    centred, searched = affine._starts(coarse, coarse, ready, search)
    assert len(centred) == 2 and len(searched) == affine.GLOBAL_STARTS
    assert [score for _, score in searched] == sorted((score for _, score in searched), reverse=True)
    assert min(errors) < 6 * SPACING and errors.index(min(errors)) >= affine.GLOBAL_STARTS  # not kept by intensities
    assert _error_mm(atlas, _frame(), searched[0][0]) == pytest.approx(min(errors))  # the labels rank it first


def test_a_refinement_that_walks_off_loses_to_its_start(monkeypatch):
    from crossmodalmas import affine
    from crossmodalmas.search_grid import translated

    # Each Mattes fit ends 3 search voxels off, overlapping still (a whole pair's refinements
    # walked off from centred starts that were better, on a synthetic abdomen).
    monkeypatch.setattr(affine.AffineAligner, "_refined",
                        lambda self, moving, start, seed, atlas_fixed: translated(start, np.array([0.0, 3 * SPACING, 0.0])))
    frame = _frame(np.eye(3), (30.0, -20.0, 10.0))
    target, atlas = _case(0, 40, frame)  # a whole pair, its atlas in another frame
    assert _error_mm(atlas, frame, affine.AffineAligner(target).align(atlas)) < SPACING
