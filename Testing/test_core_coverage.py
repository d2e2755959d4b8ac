"""crossmodalmas.coverage: target voxels no atlas covers are unknown (0), never an atlas's label."""

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import phantom
from crossmodalmas.atlases import Atlas
from crossmodalmas.coverage import CoverageCounter, mask_unknown, unknown_warning
from crossmodalmas.options import SegmentOptions
from crossmodalmas import atlas_warping
from crossmodalmas.pipeline import segment
from crossmodalmas.refusion import refuse
from crossmodalmas.volume import Grid, LabelMap


def _grid(shape, spacing=2.0, origin=(0.0, 0.0, 0.0)) -> Grid:
    ijk_to_ras = np.diag([spacing, spacing, spacing, 1.0])
    ijk_to_ras[:3, 3] = origin
    return Grid(shape, ijk_to_ras)


def test_a_slab_covers_its_own_slices_only():
    target = _grid((40, 10, 10))  # 80 mm along S
    slab = _grid((10, 10, 10), origin=(0.0, 0.0, 40.0))  # S 40..58 mm
    counter = CoverageCounter(target)
    counter.add(counter.footprint(LabelMap(np.ones(slab.shape, np.int32), slab.ijk_to_ras), sitk.Transform()))
    unknown = counter.unknown()
    s = target.ijk_to_points(np.array([[0, 0, k] for k in range(40)]))[:, 2]
    inside = (s >= 40.0 - 4.0) & (s <= 58.0 + 4.0)  # located to the coverage grid's 4 mm
    assert not unknown[inside & (s >= 44.0) & (s <= 54.0)].any()
    assert unknown[(s < 32.0) | (s > 66.0)].all()


def test_two_atlases_cover_the_union():
    target = _grid((40, 10, 10))
    counter = CoverageCounter(target)
    for origin in ((0.0, 0.0, 0.0), (0.0, 0.0, 40.0)):
        slab = _grid((20, 10, 10), origin=origin)
        counter.add(counter.footprint(LabelMap(np.zeros(slab.shape, np.int32), slab.ijk_to_ras), sitk.Transform()))
    assert not counter.unknown().any()
    assert unknown_warning(counter.unknown()) == ""


def test_mask_unknown_sets_zero_and_leaves_the_input():
    labels = LabelMap(np.full((4, 4, 4), 7, np.int16), np.eye(4))
    unknown = np.zeros((4, 4, 4), bool)
    unknown[0] = True
    masked = mask_unknown(labels, unknown)
    assert (masked.array[0] == 0).all() and (masked.array[1:] == 7).all()
    assert (labels.array == 7).all()
    assert mask_unknown(labels, None) is labels


def test_unknown_warning_gives_the_share():
    unknown = np.zeros((10, 10, 10), bool)
    unknown[:3] = True
    assert unknown_warning(unknown).startswith("30.0% of the target lies outside every atlas's field of view")


def _slab_atlas(k0=12, k1=28) -> Atlas:
    """Slices k0..k1-1 (of 40) of another subject's MR phantom."""
    atlas_image, atlas_labels = phantom(1, "mr")
    slab = np.eye(4)
    slab[:3, 3] = atlas_image.ijk_to_ras[:3, :3] @ np.array([0.0, 0.0, k0])
    return Atlas("slab", type(atlas_image)(atlas_image.array[k0:k1].copy(), atlas_image.ijk_to_ras @ slab),
                 LabelMap(atlas_labels.array[k0:k1].copy(), atlas_labels.ijk_to_ras @ slab))


def test_segment_marks_what_the_atlas_slab_does_not_cover():
    image, labels = phantom(0, "ct")
    atlas = _slab_atlas()
    options = SegmentOptions(model="instance-opt", refine_iterations=2, fusion="mv")
    result = segment(image, [atlas], options)
    assert result.unknown is not None and 0.2 < result.unknown.mean() < 0.8
    assert not result.labels.array[result.unknown].any()  # no label where no atlas looked
    assert result.report()["unknown_fraction"] == round(float(result.unknown.mean()), 4)
    assert any("outside every atlas's field of view" in w for w in result.warnings)
    again = refuse(result, method="loa")
    assert not again.labels.array[result.unknown].any()


def test_the_registration_matches_a_slab_inside_its_field_of_view_only(monkeypatch):
    image, _ = phantom(0, "ct")
    whole_image, whole_labels = phantom(2, "mr", shape=(48, 48, 48))
    seen = {"inside": [], "support": []}  # one entry per atlas: the CPU deforms them one at a time

    def registration(*args, support, **kwargs):
        seen["support"].append(support)
        return real_registration(*args, support=support, **kwargs)

    def support_of(inside):
        seen["inside"].append(inside)
        return real_support(inside)

    real_registration, real_support = atlas_warping.deformable_registration, atlas_warping.descriptor_support
    monkeypatch.setattr(atlas_warping, "deformable_registration", registration)
    monkeypatch.setattr(atlas_warping, "descriptor_support", support_of)
    options = SegmentOptions(model="instance-opt", refine_iterations=1, fusion="mv", device="cpu")  # 1 atlas a chunk
    segment(image, [Atlas("whole", whole_image, whole_labels)], options)
    assert seen["support"] == [None] and seen["inside"] == []  # covering the working grid: matched everywhere
    seen["support"].clear()
    result = segment(image, [Atlas("whole", whole_image, whole_labels), _slab_atlas()], options)
    slab = result.atlas_names.index("slab")
    assert seen["support"][1 - slab] is None and len(seen["inside"]) == 1  # the whole atlas: everywhere
    inside, support = seen["inside"][0][0, 0], seen["support"][slab][0, 0]
    assert float(inside.float().mean()) == pytest.approx(result.qc[slab].coverage)  # its field of view
    assert 0 < support.sum() < inside.sum() and not (support & ~inside).any()  # eroded within it


def test_qc_judges_a_slab_atlas_on_its_own_anatomy(monkeypatch):
    from crossmodalmas import qc

    image, _ = phantom(0, "ct")
    whole_image, whole_labels = phantom(2, "mr", shape=(48, 48, 48))
    calls = []

    def similarity(a, b, where=None):
        calls.append((where, real_similarity(a, b)))
        return real_similarity(a, b, where)

    def registration(*args, support, **kwargs):
        calls.append(("registration", support))
        return real_registration(*args, support=support, **kwargs)

    real_similarity, real_registration = qc.descriptor_similarity, atlas_warping.deformable_registration
    monkeypatch.setattr(atlas_warping, "descriptor_similarity", similarity)
    monkeypatch.setattr(qc, "descriptor_similarity", similarity)
    monkeypatch.setattr(atlas_warping, "deformable_registration", registration)
    options = SegmentOptions(model="instance-opt", refine_iterations=1, fusion="mv", device="cpu")  # 1 atlas a chunk
    result = segment(image, [Atlas("whole", whole_image, whole_labels), _slab_atlas()], options)
    slab = result.atlas_names.index("slab")
    assert len(calls) == 6  # registration, before, after: one atlas at a time on the CPU
    (_, support), (before_where, before_everywhere), (after_where, after_everywhere) = calls[3 * slab:3 * slab + 3]
    assert support is not None and before_where is support and after_where is support  # where it was matched
    assert result.qc[slab].similarity_before > float(before_everywhere[0])  # not marked down for what it lacks
    assert result.qc[slab].similarity_after > float(after_everywhere[0])


def test_full_coverage_leaves_no_unknown():
    image, _ = phantom(0, "ct")
    atlas_image, atlas_labels = phantom(1, "mr", shape=(48, 48, 48))
    result = segment(image, [Atlas("whole", atlas_image, atlas_labels)],
                     SegmentOptions(model="instance-opt", refine_iterations=2, fusion="mv"))
    assert result.unknown is None and result.report()["unknown_fraction"] == 0.0
