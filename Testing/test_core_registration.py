"""MIND-SSC features and the instance optimisation: modality independence, recovery of a known shift."""

import numpy as np
import pytest
import torch

from crossmodalmas.errors import CancelledError
from crossmodalmas.features import descriptor_support, mind_ssc, mind_ssc_each
from crossmodalmas.instance_opt import InstanceOptConfig, diffusion_energy, register
from crossmodalmas.metrics import folding_percent
from crossmodalmas.transforms import identity_grid, warp


def _blobs(shape=(32, 32, 32), centre_shift=(0.0, 0.0, 0.0)):
    """Two nested ellipsoids (labels 1 and 2), centred and shifted by ``centre_shift`` voxels."""
    coords = identity_grid(shape)[0]
    centre = torch.tensor([s / 2 for s in shape]).view(3, 1, 1, 1) + torch.tensor(centre_shift).view(3, 1, 1, 1)
    radius = (((coords - centre) / torch.tensor([9.0, 11.0, 8.0]).view(3, 1, 1, 1)) ** 2).sum(0).sqrt()
    labels = torch.zeros(shape, dtype=torch.long)
    labels[radius < 1.0] = 1
    labels[radius < 0.5] = 2
    return labels


def _render(labels, intensities, seed):
    generator = torch.Generator().manual_seed(seed)
    image = torch.tensor(intensities)[labels].float()
    return (image + 0.03 * torch.randn(labels.shape, generator=generator))[None, None]


def _dice(a, b, label):
    a, b = a == label, b == label
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_mind_is_invariant_to_contrast_inversion_and_shape():
    labels = _blobs((24, 24, 24))
    bright, dark = _render(labels, [0.0, 1.0, 0.5], 0), _render(labels, [1.0, 0.2, 0.7], 0)
    a, b = mind_ssc(bright), mind_ssc(dark)
    assert a.shape == (1, 12, 24, 24, 24)
    assert float((a - b).abs().mean()) < 0.1 * float((a - mind_ssc(torch.rand_like(bright))).abs().mean()) + 0.05


def test_an_images_descriptors_do_not_depend_on_its_batch_mates():
    labels = _blobs((16, 16, 16))
    image = _render(labels, [0.0, 1.0, 0.5], 0)
    flat_and_loud = torch.cat([image, torch.full_like(image, 3.0), 100.0 * torch.rand_like(image)])
    alone = mind_ssc(image)
    assert torch.equal(mind_ssc(flat_and_loud)[:1], alone)
    assert torch.equal(mind_ssc_each(flat_and_loud), mind_ssc(flat_and_loud))


def test_register_recovers_a_cross_contrast_shift_without_folding():
    torch.manual_seed(0)
    fixed_labels, moving_labels = _blobs(), _blobs(centre_shift=(2.0, -3.0, 2.0))
    fixed = mind_ssc(_render(fixed_labels, [0.0, 1.0, 0.5], 1))
    moving = mind_ssc(_render(moving_labels, [1.0, 0.2, 0.6], 2))
    fields = register(fixed, moving, InstanceOptConfig(levels=(2, 1), iterations=40))
    warped = warp(moving_labels[None, None].float(), fields.forward, mode="nearest")[0, 0].long()
    before, after = _dice(moving_labels, fixed_labels, 1), _dice(warped, fixed_labels, 1)
    assert after > before + 0.05 and after > 0.9
    assert folding_percent(fields.forward) < 0.5
    centre_shift = fields.forward[0, :, 16, 16, 16]
    assert torch.allclose(centre_shift, torch.tensor([2.0, -3.0, 2.0]), atol=0.6)


def test_register_is_batched_and_deterministic():
    labels = _blobs((16, 16, 16))
    target = mind_ssc(_render(labels, [0.0, 1.0, 0.5], 1))
    atlases = torch.cat([target, mind_ssc(_render(_blobs((16, 16, 16), (1.0, 0, 0)), [1.0, 0.0, 0.5], 2))])
    config = InstanceOptConfig(levels=(1,), iterations=5)
    first, second = register(target, atlases, config), register(target, atlases, config)
    assert first.forward.shape == (2, 3, 16, 16, 16) and first.backward.shape == (2, 3, 16, 16, 16)
    assert torch.equal(first.forward, second.forward)
    assert float(first.forward[0].abs().max()) < 0.3  # an atlas equal to the target stays put (within Adam's jitter)


def test_register_polls_cancel_and_reports_progress():
    target = mind_ssc(_render(_blobs((12, 12, 12)), [0.0, 1.0, 0.5], 1))
    fractions = []
    with pytest.raises(CancelledError):
        register(target, target, InstanceOptConfig(levels=(1,), iterations=10), progress=fractions.append,
                 cancel=lambda: len(fractions) >= 3)
    assert fractions == pytest.approx([0.1, 0.2, 0.3])


def test_descriptor_support_erodes_a_field_of_view_by_the_descriptors_reach():
    inside = torch.zeros(2, 1, 24, 8, 8, dtype=torch.bool)
    inside[0, :, :14] = True  # a slab from the grid's border to k = 13
    inside[1, :, 10:14] = True  # four slices: eroding by three from each side leaves nothing
    support = descriptor_support(inside)
    assert support[0, 0, :, 4, 4].nonzero().flatten().tolist() == list(range(11))  # 14 - (1 + 2)
    assert support[0, 0, :11].all()  # the grid's own border is no edge
    assert torch.equal(support[1], inside[1])  # kept whole rather than emptied
    assert descriptor_support(inside, radius=2, dilation=3)[0, 0, :, 4, 4].sum() == 14 - 5


def test_register_matches_a_partial_atlas_inside_its_field_of_view_only():
    image = _render(_blobs((24, 24, 24)), [0.0, 1.0, 0.5], 1)
    slab = image.clone()
    slab[:, :, 14:] = 0.0  # the atlas is the target, cut off at k = 14 through the blob
    inside = torch.zeros(1, 1, 24, 24, 24, dtype=torch.bool)
    inside[:, :, :14] = True
    config = InstanceOptConfig(levels=(2, 1), iterations=30)
    target, atlas = mind_ssc(image), mind_ssc(slab)
    unmasked = register(target, atlas, config).forward[:, :, :11]
    masked = register(target, atlas, config, support=descriptor_support(inside)).forward[:, :, :11]
    assert float(unmasked.abs().max()) > 0.6  # the cut pulled towards an edge of the target
    assert float(masked.abs().max()) < 0.3  # the atlas, equal to the target where it has data, stays put


def test_diffusion_energy_of_constant_field_is_zero():
    assert torch.all(diffusion_energy(torch.ones(2, 3, 5, 5, 5)) == 0)


def test_error_messages():
    with pytest.raises(ValueError, match=r"mind_ssc\(\): 'image' must be \(N, 1, D, H, W\), got \(1, 2, 8, 8, 8\)"):
        mind_ssc(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"register\(\): 'target_features' must be \(1, F, D, H, W\)"):
        register(torch.zeros(2, 12, 8, 8, 8), torch.zeros(2, 12, 8, 8, 8))
    with pytest.raises(ValueError, match=r"register\(\): 'atlas_features' must be \(N, 12, 8, 8, 8\), got \(1, 12, 8, 8, 9\)"):
        register(torch.zeros(1, 12, 8, 8, 8), torch.zeros(1, 12, 8, 8, 9))
    with pytest.raises(ValueError, match=r"register\(\): 'support' must be \(2, 1, 8, 8, 8\), got \(1, 1, 8, 8, 8\)"):
        register(torch.zeros(1, 12, 8, 8, 8), torch.zeros(2, 12, 8, 8, 8), support=torch.ones(1, 1, 8, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"descriptor_support\(\): 'inside' must be \(N, 1, D, H, W\), got \(8, 8, 8\)"):
        descriptor_support(torch.ones(8, 8, 8, dtype=torch.bool))


def test_affine_align_falls_back_to_the_centres_when_every_start_fails(monkeypatch):
    from crossmodalmas import affine
    from crossmodalmas.volume import Volume

    def fail(*args):
        raise RuntimeError("All samples map outside moving image buffer")

    monkeypatch.setattr(affine, "_affine_from", fail)
    image = Volume(np.random.default_rng(0).random((12, 12, 12), dtype=np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    moved = Volume(image.array.copy(), image.ijk_to_ras @ np.array([[1, 0, 0, 3], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    transform = affine.affine_align(image, moved)
    point = transform.TransformPoint((0.0, 0.0, 0.0))
    assert np.allclose(np.linalg.norm(point), 6.0, atol=1e-6)  # the centres, 3 voxels of 2 mm apart


def test_affine_align_prefers_the_pose_that_overlaps_over_a_far_off_one(monkeypatch):
    """The refined starts are compared by mutual information times overlap: a far-off pose
    that the Mattes metric (a mean over whatever overlaps) might like loses."""
    import SimpleITK as sitk

    from crossmodalmas import affine
    from crossmodalmas.volume import Volume

    far = sitk.TranslationTransform(3, (200.0, 0.0, 0.0))
    refined = iter([far])
    monkeypatch.setattr(affine, "_affine_from", lambda fixed, moving, start, seed: (next(refined, start), -1.0))
    body = np.zeros((16, 16, 16), dtype=np.float32)
    body[4:12, 4:12, 4:12] = 1.0
    image = Volume(body, np.diag([2.0, 2.0, 2.0, 1.0]))
    transform = affine.affine_align(image, Volume(body.copy(), image.ijk_to_ras.copy()))
    assert np.allclose(transform.TransformPoint((0.0, 0.0, 0.0)), (0.0, 0.0, 0.0), atol=1e-6)


def test_affine_align_samples_the_smaller_image_and_inverts_back(monkeypatch):
    """An atlas slab is registered as the fixed image (the metric samples the fixed one), and
    the result is turned back into target -> atlas. A whole pair's smaller atlas is registered
    from the header-based starts with the target fixed as well, and keeps the fit that the
    two-way metric prefers (whole anatomy cropped closer than the target); a partial pair's
    is fitted and kept with the slab fixed only."""
    import SimpleITK as sitk

    from crossmodalmas import affine
    from crossmodalmas.volume import Volume

    fixed_sizes, shift = [], sitk.TranslationTransform(3, (8.0, 0.0, 0.0))
    monkeypatch.setattr(affine, "_affine_from",
                        lambda fixed, moving, start, seed: fixed_sizes.append(fixed.GetSize()) or (shift, -1.0))
    # the inversion alone: no polish, and no unrefined pose competing with the refined ones
    monkeypatch.setattr(affine.GlobalSearch, "polish", lambda self, atlas, transform: transform)
    monkeypatch.setattr(affine.GlobalSearch, "slide", lambda self, atlas, transform, axis, reach: transform)
    monkeypatch.setattr(affine, "GLOBAL_STARTS", 0)
    monkeypatch.setattr(affine.GlobalSearch, "scores",  # every fit (8 mm off either way) above the centred starts
                        lambda self, atlas, transforms: [abs(t.TransformPoint((0.0, 0.0, 0.0))[0]) for t in transforms])
    rng = np.random.default_rng(0)
    target = Volume(rng.random((40, 24, 24), dtype=np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    slab, most = (Volume(target.array[a:b].copy(), target.ijk_to_ras.copy()) for a, b in ((10, 18), (1, 38)))
    for atlas, whole in ((slab, False), (most, True)):
        for inverted_better in (True, False):
            fixed_sizes.clear()
            monkeypatch.setattr(affine, "_two_way_mattes",  # lower is better
                                lambda fixed, moving, fit, better=inverted_better:
                                float((fit.TransformPoint((0.0, 0.0, 0.0))[0] < 0) != better))
            transform = affine.AffineAligner(target).align(atlas)
            # each start with the smaller atlas fixed; a whole pair's with the target fixed as well
            assert sorted(size[2] < 40 for size in fixed_sizes) == [False] * 2 * whole + [True, True]
            expected = -8.0 if inverted_better or not whole else 8.0  # -8: the atlas-fixed fit, inverted
            assert np.allclose(transform.TransformPoint((0.0, 0.0, 0.0))[0], expected)
    fixed_sizes.clear()
    monkeypatch.setattr(affine, "GLOBAL_STARTS", 2)
    affine.AffineAligner(target).align(slab)
    assert sum(size[2] < 40 for size in fixed_sizes) == 2 + 2  # the search's poses: the slab fixed only
    fixed_sizes.clear()
    affine.AffineAligner(slab).align(target)  # the other way round: the slab is the target
    assert all(size[2] < 40 for size in fixed_sizes)


def test_affine_align_waives_the_header_margin_for_the_headers_orientation_on_partial_pairs_only(monkeypatch):
    import SimpleITK as sitk

    from crossmodalmas import affine
    from crossmodalmas.volume import Volume

    monkeypatch.setattr(affine, "_affine_from", lambda fixed, moving, start, seed: (start, -1.0))
    monkeypatch.setattr(affine.GlobalSearch, "polish", lambda self, atlas, transform: transform)
    monkeypatch.setattr(affine.GlobalSearch, "slide", lambda self, atlas, transform, axis, reach: transform)
    monkeypatch.setattr(affine, "GLOBAL_STARTS", 1)
    partial_flags = []
    preferred = affine._preferred
    monkeypatch.setattr(affine, "_preferred", lambda header, searched, partial=False:
                        partial_flags.append(partial) or preferred(header, searched, partial))
    rng = np.random.default_rng(0)
    target = Volume(rng.random((40, 24, 24), dtype=np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    for rows, partial in (((10, 18), True), ((1, 38), False)):
        partial_flags.clear()
        atlas = Volume(target.array[slice(*rows)].copy(), target.ijk_to_ras.copy())
        assert isinstance(affine.AffineAligner(target).align(atlas), sitk.Transform)
        assert partial_flags == [partial]


def test_affine_align_falls_back_to_the_target_fixed_fits_when_the_atlas_fixed_ones_fail(monkeypatch):
    """A smaller atlas whose fits with itself fixed all fail is fitted with the target fixed
    before the image centres are fallen back on."""
    import SimpleITK as sitk

    from crossmodalmas import affine
    from crossmodalmas.volume import Volume

    shift = sitk.TranslationTransform(3, (8.0, 0.0, 0.0))

    def target_fixed_only(fixed, moving, start, seed):
        if fixed.GetSize()[2] < 40:
            raise RuntimeError("All samples map outside moving image buffer")
        return shift, -1.0

    monkeypatch.setattr(affine, "_affine_from", target_fixed_only)
    monkeypatch.setattr(affine, "GLOBAL_STARTS", 0)
    monkeypatch.setattr(affine.GlobalSearch, "polish", lambda self, atlas, transform: transform)
    monkeypatch.setattr(affine.GlobalSearch, "scores",
                        lambda self, atlas, transforms: [abs(t.TransformPoint((0.0, 0.0, 0.0))[0]) for t in transforms])
    target = Volume(np.random.default_rng(0).random((40, 24, 24), dtype=np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    most = Volume(target.array[1:38].copy(), target.ijk_to_ras.copy())
    transform = affine.AffineAligner(target).align(most)
    assert np.allclose(transform.TransformPoint((0.0, 0.0, 0.0))[0], 8.0)


def test_two_way_mattes_prefers_the_aligned_fit_and_has_no_favourite_direction():
    """The arbiter between a target-fixed and an atlas-fixed fit: lowest at the true shift,
    the same for a transform and its inverse with the images swapped, inf without overlap."""
    import SimpleITK as sitk

    from crossmodalmas import affine
    from crossmodalmas.volume import to_sitk

    rng = np.random.default_rng(1)
    blobs = affine.gaussian_smooth(to_sitk(rng.random((24, 24, 24), dtype=np.float32), np.diag([4.0, 4.0, 4.0, 1.0])),
                                   [4.0] * 3)
    small = sitk.RegionOfInterest(blobs, [16, 16, 16], [4, 4, 4])  # a smaller atlas, inside the target
    aligned, off = sitk.TranslationTransform(3), sitk.TranslationTransform(3, (8.0, 0.0, 0.0))
    assert affine._two_way_mattes(blobs, small, aligned) < affine._two_way_mattes(blobs, small, off)
    assert affine._two_way_mattes(blobs, small, off) == pytest.approx(
        affine._two_way_mattes(small, blobs, off.GetInverse()), rel=1e-6)
    assert affine._two_way_mattes(blobs, small, sitk.TranslationTransform(3, (1000.0, 0.0, 0.0))) == float("inf")


def test_an_atlas_fitted_from_its_starts_side_by_side_gets_the_transform_it_gets_one_start_at_a_time():
    """An atlas's Mattes fits run side by side (``fit_workers``); each is independent and runs
    one ITK thread, so the transform is the same to the last bit, for a whole atlas (whose
    target-fixed fits are added) and for a slab."""
    from crossmodalmas import affine
    from crossmodalmas.volume import Volume

    rng = np.random.default_rng(3)
    body = affine.gaussian_smooth(affine.to_sitk(rng.random((30, 24, 24), dtype=np.float32), np.eye(4)), [2.0] * 3)
    array = affine.sitk.GetArrayFromImage(body)
    target = Volume(array, np.diag([4.0, 4.0, 4.0, 1.0]))
    shift = np.array([[1, 0, 0, 3.0], [0, 1, 0, -2.0], [0, 0, 1, 5.0], [0, 0, 0, 1.0]])
    whole = Volume(array[1:29].copy(), target.ijk_to_ras @ shift)
    slab = Volume(array[8:16].copy(), target.ijk_to_ras @ shift)
    for atlas in (whole, slab):
        alone, side_by_side = (affine.AffineAligner(target, fit_workers=n).align(atlas) for n in (1, 3))
        assert alone.GetParameters() == side_by_side.GetParameters()
        assert alone.GetFixedParameters() == side_by_side.GetFixedParameters()


def test_affine_align_takes_4_mm_slices_with_finer_pixels():
    """A thick-slice image (MSD prostate: 0.6 x 0.6 x 4 mm) needs no smoothing across slices;
    ITK refuses a zero sigma, which once crashed the affine step."""
    from crossmodalmas import affine
    from crossmodalmas.volume import Volume

    body = np.zeros((10, 40, 40), dtype=np.float32)
    body[2:8, 10:30, 12:28] = 1.0
    body[3:6, 12:18, 14:20] = 0.5  # off-centre: the box alone is symmetric under a flip, the search may pick either
    image = Volume(body, np.diag([0.8, 0.8, 4.0, 1.0]))
    moved = Volume(body.copy(), image.ijk_to_ras @ np.array([[1, 0, 0, 2], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    point = affine.affine_align(image, moved).TransformPoint((0.0, 0.0, 0.0))
    assert np.linalg.norm(point) < 5.0  # the 1.6 mm shift (LPS), give or take the 4 mm search grid


def test_one_itk_thread_holds_while_any_thread_is_inside_and_restores_after_the_last():
    """Atlases are aligned side by side: one thread leaving must not give ITK its threads back
    under another's registration (their transforms would then vary from run to run)."""
    import threading

    import SimpleITK as sitk

    from crossmodalmas.affine import _one_itk_thread

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(3)
    try:
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
        seen = []

        def first():
            with _one_itk_thread:
                first_in.set()
                second_in.wait(5)
            first_out.set()

        def second():
            first_in.wait(5)
            with _one_itk_thread:
                second_in.set()
                first_out.wait(5)
                seen.append(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert seen == [1]
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 3
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
