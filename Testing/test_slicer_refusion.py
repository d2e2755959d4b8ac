"""Re-fusion from a stored result: untick an atlas and re-fuse, without registering again.

The run goes through the background command line, which stores its result with
``--save-warped``; the module loads it (:class:`CrossModalMASLib.review.Review`) and re-fuses
in-process. With one atlas unticked the labels must be those of a fresh fusion of the
remaining atlases' stored warped data (the pipeline's own fusion step, called directly), and
the segmentation node must show them voxel for voxel; with every atlas ticked, the run's own
labels come back. A fresh run that registers only the remaining atlases agrees to within a few
voxels (registering a batch is not bit-identical to registering a smaller one).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import phantom
from test_slicer_fixtures import child_env, new_scene, require_slicer_core

slicer = require_slicer_core()
pytest.importorskip("crossmodalmas.refusion", reason="the compute package has no re-fusion yet")

from CrossModalMASLib.atlas_sources import SceneAtlas  # noqa: E402
from CrossModalMASLib.segmentation_job import SegmentationJob  # noqa: E402
from CrossModalMASLib.segmentation_nodes import describe_segments, labels_from_segmentation  # noqa: E402
from CrossModalMASLib.volume_nodes import add_volume_node  # noqa: E402
from crossmodalmas.atlases import Atlas  # noqa: E402
from crossmodalmas.options import SegmentOptions  # noqa: E402
from crossmodalmas.pipeline import segment  # noqa: E402
from crossmodalmas.refusion import fused_fields  # noqa: E402

SEEDS = (6, 9, 4)


def shown_labels(review, target_node) -> np.ndarray:
    """The label values the segmentation node shows, on the target's grid."""
    segmentation = review.segmentation.GetSegmentation()
    values = {s.segment_id: segmentation.GetSegment(s.segment_id).GetLabelValue()
              for s in describe_segments(review.segmentation)}
    return labels_from_segmentation(review.segmentation, target_node, values).array


@pytest.mark.parametrize("fusion", ["mv", "nlwv"])
def test_refuse_without_an_atlas_equals_a_fresh_fusion_of_the_others(tmp_path, fusion):
    target, _truth = phantom(1, "ct")
    centre = target.grid.corners_ras().mean(0)
    options = SegmentOptions(model="instance-opt", refine_iterations=2, device="cpu", fusion=fusion,
                             roi_ras=(*(centre - 40.0), *(centre + 40.0)))
    scene = new_scene()
    target_node = add_volume_node(scene, target, "target")
    pairs = {seed: phantom(seed, "mr") for seed in SEEDS}
    atlases = [SceneAtlas(add_volume_node(scene, image, f"mr{seed}"),
                          add_volume_node(scene, labels, f"mr{seed}-labels", labels=True))
               for seed, (image, labels) in pairs.items()]
    job = SegmentationJob(target_node, atlases, options=options, env=child_env(), work_parent=str(tmp_path))
    job.start()
    job.wait(timeout=300)
    review = job.finish()
    stored = review.result
    assert sorted(stored.atlas_names) == ["mr4", "mr6", "mr9"]

    again = review.refuse(stored.atlas_names)  # every atlas ticked, the same method: the run's labels
    np.testing.assert_array_equal(again.labels.array, stored.labels.array)

    refused = review.refuse(["mr6", "mr9"])
    keep = [stored.atlas_names.index(name) for name in refused.atlas_names]
    fresh = fused_fields(stored.fusion, stored.working_grid, stored.labels.grid, stored.label_values,
                         stored.target_image, stored.warped_images[keep], stored.warped_classes[keep],
                         [stored.qc[i] for i in keep], "cpu")
    assert sorted(refused.atlas_names) == ["mr6", "mr9"]
    np.testing.assert_array_equal(refused.labels.array, fresh["labels"].array)
    np.testing.assert_allclose(refused.weights, fresh["weights"], atol=1e-6)
    assert np.any(refused.labels.array != stored.labels.array), "leaving an atlas out changed nothing"
    np.testing.assert_array_equal(shown_labels(review, target_node), refused.labels.array)
    assert review.previews.qc_table.GetNumberOfRows() == 2

    registered_again = segment(target, [Atlas(f"mr{s}", *pairs[s]) for s in (6, 9)], options)
    agreement = np.mean(registered_again.labels.array == refused.labels.array)
    # Registered again from the arrays in memory, not from the NIfTI files the job read (their
    # float32 geometry is ~1e-6 mm off): the affine step's polish, a local search of a
    # piecewise-constant score, turns that into up to 1.6 mm on these atlases (0.3 % of voxels).
    assert agreement > 0.99, agreement
