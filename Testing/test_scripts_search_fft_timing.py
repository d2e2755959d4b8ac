"""scripts/search_fft_timing.py: trimmed and full-size searches side by side (run outside the tests on all pairs)."""

import numpy as np
import pytest

from conftest import import_scripts

from crossmodalmas import global_search


@pytest.fixture(scope="module")
def bench():
    yield from import_scripts(("search_fft_timing",))


def test_a_pair_searched_both_ways_gives_the_same_poses_from_a_smaller_fft(bench, monkeypatch):
    monkeypatch.setattr(global_search, "search_orientations", lambda: [np.eye(3), global_search.rotation_about(1, 180.0)])
    row = bench.search_fft_timing.row(1, keep=3)  # a target slab
    assert row["same_poses"] and row["kind"] == "target slab"
    assert np.prod(row["size_trimmed"]) < np.prod(row["size_full"])
    assert global_search.least_shared_slices is not None and global_search.least_shared_slices.__name__ == \
        "least_shared_slices"  # put back


def test_same_poses_tells_a_moved_pose_apart(bench):
    pose = global_search.Pose(np.eye(3), np.zeros(3), np.array([1.0, 2.0, 3.0]), 10.0, 0.9)
    moved = global_search.Pose(np.eye(3), np.zeros(3), np.array([1.0, 2.0, 10.0]), 10.0, 0.9)
    assert bench.search_fft_timing.same_poses([pose], [pose])
    assert not bench.search_fft_timing.same_poses([pose], [moved]) and not bench.search_fft_timing.same_poses([pose], [])


def test_the_table_names_a_disagreement(bench):
    row = {"pair": "pair1", "kind": "target slab", "spacing_mm": 3.5, "size_trimmed": [2, 3, 4], "size_full": [4, 6, 8],
           "seconds_trimmed": 1.0, "seconds_full": 3.0, "same_poses": False}
    assert bench.search_fft_timing.table([row])[-1] == \
        "| pair1 | target slab | 3.5 | 4 x 6 x 8 | 2 x 3 x 4 | 3.0 | 1.0 | 3.0x | **no** |"
