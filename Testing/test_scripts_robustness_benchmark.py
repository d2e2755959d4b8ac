"""scripts/benchmark_robustness.py and scripts/robustness_cases.py: the partial field-of-view
pairs, the found-share verdict and the tables (the full benchmark runs outside the tests)."""

import os
import sys
import types

import numpy as np
import pytest

from conftest import import_scripts

MODULES = ("robustness_cases", "brain_partial_cases", "memory_runs", "benchmark_robustness", "partial_pair_profile")


@pytest.fixture(scope="module")
def bench():
    yield from import_scripts(MODULES)


def test_pairs_are_deterministic_and_cover_both_kinds(bench):
    first, again = bench.robustness_cases.partial_pair(0), bench.robustness_cases.partial_pair(0)
    assert np.array_equal(first.target.array, again.target.array)
    assert first.kind == "atlas slab" and bench.robustness_cases.partial_pair(1).kind == "target slab"


def test_atlas_slab_truth_is_the_slab_only(bench):
    pair = bench.robustness_cases.partial_pair(0)
    target, atlas = pair.target.grid, pair.atlas.image.grid
    assert 0.2 <= pair.fraction <= 0.5 and atlas.shape[0] < target.shape[0]
    rows = np.flatnonzero(pair.truth.array.any(axis=(1, 2)))
    assert 0 < len(rows) <= atlas.shape[0] + 2  # the truth spans the slab's slices, no more
    assert pair.labels and all(label < 100 for label in pair.labels)  # organs only
    assert np.linalg.norm(atlas.ijk_to_ras[:3, 3] - target.ijk_to_ras[:3, 3]) > 50.0  # another frame


def test_true_transform_lays_the_atlas_on_the_target_slab(bench):
    pair = bench.robustness_cases.partial_pair(0)  # an atlas slab in another scanner frame
    placed = bench.partial_pair_profile.placed_labels(pair, bench.robustness_cases.true_transform(pair))
    on_truth = bench.robustness_cases.mean_dice(placed, pair.truth.array, pair.labels)
    assert on_truth > 0.4  # two subjects: their organs overlap, not exactly
    assert set(np.flatnonzero(placed.any(axis=(1, 2)))) == set(np.flatnonzero(pair.truth.array.any(axis=(1, 2))))


def test_profile_puts_the_best_organ_overlap_at_the_pose_the_pair_was_made_with(bench):
    rows = bench.partial_pair_profile.profile(0, reach_mm=20.0, step_mm=10.0)
    assert [offset for offset, _, _ in rows] == pytest.approx([-20.0, -10.0, 0.0, 10.0, 20.0])
    dice = [d for _, _, d in rows]
    assert int(np.argmax(dice)) == 2 and dice[0] < dice[2] > dice[4]


def test_mean_dice_counts_each_label(bench):
    truth = np.zeros((4, 4, 4), np.int32)
    truth[:2], truth[2:] = 1, 2
    pred = truth.copy()
    pred[2:] = 0
    assert bench.robustness_cases.mean_dice(pred, truth, (1, 2)) == pytest.approx(0.5)


def _row(ours: float, syn: float) -> dict:
    return {"pair": "p", "kind": "atlas slab", "fraction": 0.3, "mix_up": "none",
            "ours": {"dice": ours, "seconds": 10.0}, "antspyx SyN": {"dice": syn, "seconds": 20.0}}


def test_found_share_and_verdict(bench):
    rows = [_row(0.7, 0.0)] * 9 + [_row(0.2, 0.6)]
    assert bench.benchmark_robustness._found(rows, "ours") == (9, 10)
    assert bench.benchmark_robustness._found(rows, "antspyx SyN") == (1, 10)
    lines = "\n".join(bench.benchmark_robustness._partial_lines(rows))
    assert "| ours | 9 / 10 | 90% | 0.650 | 10 |" in lines and "90%, met." in lines
    missed = "\n".join(bench.benchmark_robustness._partial_lines([_row(0.7, 0.0), _row(0.1, 0.0)]))
    assert "50%, **missed**." in missed and "control" not in missed


def test_the_syn_sentence_says_one_itk_thread_makes_the_run_repeat_and_older_runs_may_not(bench):
    lines = bench.benchmark_robustness._partial_lines
    rows = [_row(0.7, 0.0)]
    assert "seeded with `--random-seed 1` and one ITK thread (so that a run repeats exactly);" in "\n".join(
        lines(rows, ants_seed=1, ants_threads=1))
    assert "the run's ITK threads (a run may differ slightly from the next)" in "\n".join(lines(rows, ants_seed=1))
    assert ", 2 ITK threads (a run may differ" in "\n".join(lines(rows, ants_seed=1, ants_threads=2))


def test_syn_registers_with_one_itk_thread_and_gives_back_the_run_s(bench, monkeypatch):
    key, seen = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", []

    class FakeAnts:  # records the ITK threads each ants call would see; maps every label to 0
        @staticmethod
        def from_numpy(array, **geometry):  # antspyx's ITK takes its threads at the first image
            seen.append(os.environ.get(key))
            return np.asarray(array)

        @staticmethod
        def registration(fixed, moving, **settings):
            seen.append(os.environ.get(key))
            return {"fwdtransforms": [], "invtransforms": []}

        @staticmethod
        def apply_transforms(fixed, moving, transforms, interpolator):
            seen.append(os.environ.get(key))
            return types.SimpleNamespace(numpy=lambda: np.zeros_like(fixed))

    monkeypatch.setenv(key, "2")
    pair = bench.robustness_cases.partial_pair(0)
    labels, _ = bench.benchmark_robustness._syn(FakeAnts, pair)
    assert seen == ["1"] * 5 and os.environ[key] == "2"  # three images, the registration, the label warp
    assert labels.shape == pair.target.array.shape


def test_the_syn_sentence_names_the_run_s_seed_or_says_it_had_none(bench):
    rows = [_row(0.7, 0.0)]
    seeded = "\n".join(bench.benchmark_robustness._partial_lines(rows, ants_seed=7))
    assert 'syn_metric="mattes")`, seeded with `--random-seed 7`' in seeded
    assert "unseeded (one random draw)" in "\n".join(bench.benchmark_robustness._partial_lines(rows))
    without_syn = [{k: v for k, v in _row(0.7, 0.0).items() if k != "antspyx SyN"}]
    assert "random-seed" not in "\n".join(bench.benchmark_robustness._partial_lines(without_syn, ants_seed=7))


def test_control_column_is_shown_but_never_judged(bench):
    control = bench.benchmark_robustness.CONTROL
    rows = [dict(_row(0.1, 0.0), **{control: {"dice": dice, "seconds": 12.0}}) for dice in (0.9, 0.2, 0.8)]
    rows[2]["ours"] = {"dice": 0.7, "seconds": 10.0}
    for row, name in zip(rows, ("p0", "p1", "p2")):
        row["pair"] = name
    lines = "\n".join(bench.benchmark_robustness._partial_lines(rows))
    assert f"| {control} | 2 / 3 | 67% | 0.633 | 12 |" in lines
    assert "33%, **missed**." in lines and "The control is not a result" in lines
    assert "Of ours' 2 misses, found with the same anatomy: p0; missed with it too: p1." in lines


def test_memory_table_states_the_bound(bench):
    rows = [{"atlases": 10, "exit": 0, "seconds": 100.0, "peak_rss_gb": 9.1}]
    assert "**missed**" in "\n".join(bench.benchmark_robustness._memory_lines(rows))
    rows[0]["peak_rss_gb"] = 3.0
    assert "3.00 GB, met." in "\n".join(bench.benchmark_robustness._memory_lines(rows))


def test_capped_cuda_rows_name_their_machine_device_and_fallbacks(bench):
    run = {"date": "2026-01-02", "gpu": "NVIDIA H100 80GB HBM3", "cpu": "Xeon", "cores": 16, "torch": "2.11.0+cu130",
           "commit": "abc"}
    rows = [{"cap_gb": 0.0, "exit": 0, "seconds": 60.4, "peak_rss_gb": 3.1, "device": "cuda", "fallbacks": []},
            {"cap_gb": 1.0, "exit": 0, "seconds": 90.0, "peak_rss_gb": 3.3, "device": "cpu",
             "fallbacks": ["registration network: CUDA out of memory with one atlas; running on the CPU"]}]
    text = "\n".join(bench.benchmark_robustness._cuda_lines({"rows": rows, "run": run}))
    assert "Run 2026-01-02 on NVIDIA H100 80GB HBM3 with Xeon (16 cores), torch 2.11.0+cu130, commit abc" in text
    assert "| 0 | 0 | 60 | 3.10 | cuda | none |" in text
    assert "| 1 | 0 | 90 | 3.30 | cpu | registration network: CUDA out of memory with one atlas; running on the CPU |" \
        in text


def test_capped_cuda_rows_need_a_gpu(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench.benchmark_robustness.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.benchmark_robustness.main(["--cuda-caps", "0", "--pairs", "0"])
    assert "--cuda-caps: torch sees no CUDA device" in capsys.readouterr().err


def test_a_child_s_run_is_timed_and_its_stderr_never_stalls_it(bench, capsys):
    loud = "import sys; sys.stderr.write('x' * 200000); sys.exit({})"  # more than a pipe holds
    code, seconds, peak = bench.memory_runs._peak_rss_run([sys.executable, "-c", loud.format(0)])
    assert code == 0 and seconds > 0 and peak > 0 and capsys.readouterr().err == ""
    code, _, _ = bench.memory_runs._peak_rss_run([sys.executable, "-c", loud.format(3)])
    assert code == 3 and capsys.readouterr().err.strip().endswith("x" * 100)  # a failure shows its stderr's end


def test_memory_plot_is_written(bench, tmp_path):
    rows = [{"atlases": n, "exit": 0, "seconds": 10.0 * n, "peak_rss_gb": 1.0 + 0.5 * n} for n in (1, 5, 10)]
    sizes = [_size_row(scale) for scale in (0.5, 1.0)]
    for by_count, by_size in ((rows, []), (rows, sizes), ([], sizes)):
        path = tmp_path / f"{len(by_count)}_{len(by_size)}" / "memory.png"
        bench.benchmark_robustness._memory_plot(by_count, by_size, path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _size_row(scale: float) -> dict:
    return {"scale": scale, "shape": [256, 256, 300], "spacing_mm": [1.4, 1.4, 1.2], "megavoxels": 19.7,
            "atlases": 1, "exit": 0, "seconds": 30.0, "peak_rss_gb": 1.25}


def test_target_grids_keep_the_field_of_view_and_scale_the_voxels(bench):
    robustness = bench.memory_runs
    full = robustness.target_grid(1.0)
    assert full.shape == robustness.BIG_SHAPE
    np.testing.assert_allclose(full.spacing, robustness.BIG_SPACING)
    for scale, shape in ((0.5, (300, 256, 256)), (1.25, (750, 640, 640))):
        grid = robustness.target_grid(scale)
        assert grid.shape == shape
        np.testing.assert_allclose(grid.spacing * grid.shape[::-1], full.spacing * full.shape[::-1], atol=0.05)


def test_size_table_names_each_target(bench):
    lines = "\n".join(bench.benchmark_robustness._size_lines([_size_row(0.5)]))
    assert "### Memory and time against target size" in lines and "segmented with 1 atlas (the first" in lines
    assert "| 256 x 256 x 300 | 1.4 x 1.4 x 1.2 | 19.7 | 0 | 30 | 1.25 |" in lines


def test_memory_rows_are_taken_only_from_a_run_of_the_same_commit(bench):
    robustness = bench.benchmark_robustness
    machine = {"cpu": "x", "commit": "abc"}
    results = {"machine": machine, "partial_fov": [_row(0.7, 0.0)], "memory": []}
    memory = [{"atlases": 1, "exit": 0, "seconds": 1.0, "peak_rss_gb": 1.0}]
    merged = robustness._with_tables_of(results, {"machine": dict(machine), "date": "2026-11-02", "memory": memory})
    assert merged["memory"] == memory and merged["partial_fov"] == results["partial_fov"]
    assert robustness._sources_note(merged) == "The memory rows against atlas count ran in a second run of this commit."
    with pytest.raises(SystemExit, match="another machine or commit"):
        robustness._with_tables_of(results, {"machine": {"cpu": "x", "commit": "def"}, "memory": memory})


def test_memory_rows_of_another_commit_are_taken_only_when_asked_and_each_table_named(bench):
    robustness = bench.benchmark_robustness
    results = {"machine": {"cpu": "x", "commit": "abc"}, "partial_fov": [_row(0.7, 0.0)], "memory": []}
    memory = [{"atlases": 1, "exit": 0, "seconds": 1.0, "peak_rss_gb": 1.0}]
    earlier = {"machine": {"cpu": "x", "commit": "def"}, "date": "2026-11-01", "memory": memory}
    later = {"machine": {"cpu": "x", "commit": "fed"}, "date": "2026-11-03", "memory_by_size": [_size_row(1.0)]}
    merged = robustness._with_tables_of(robustness._with_tables_of(results, earlier, another_commit=True), later, True)
    assert merged["memory"] == memory and merged["memory_by_size"] == [_size_row(1.0)]
    assert robustness._sources_note(merged) == (
        "The memory rows against atlas count are of another commit: def, run on 2026-11-01. "
        "The memory rows against target size are of another commit: fed, run on 2026-11-03.")
    both = {**earlier, "memory_by_size": [_size_row(1.0)]}  # one run's two tables: one sentence
    assert robustness._sources_note(robustness._with_tables_of(results, both, True)) == (
        "The memory rows against atlas count and the memory rows against target size are of another commit: "
        "def, run on 2026-11-01.")
    own_sizes = {**results, "memory_by_size": [_size_row(0.5)]}  # the other run has no size rows: ours stay
    assert robustness._with_tables_of(own_sizes, earlier, True)["memory_by_size"] == [_size_row(0.5)]
    with pytest.raises(SystemExit, match="another machine or commit"):  # another machine, never
        robustness._with_tables_of(results, {**earlier, "machine": {"cpu": "y", "commit": "def"}}, another_commit=True)


def test_a_table_run_with_other_torch_threads_is_taken_and_its_threads_named(bench):
    robustness = bench.benchmark_robustness
    results = {"machine": {"cpu": "x", "commit": "abc", "threads": 1}, "partial_fov": [_row(0.7, 0.0)], "memory": []}
    memory = [{"atlases": 1, "exit": 0, "seconds": 1.0, "peak_rss_gb": 1.0}]
    other = {"machine": {"cpu": "x", "commit": "def", "threads": 2}, "date": "2026-11-04", "memory": memory}
    merged = robustness._with_tables_of(results, other, another_commit=True)
    assert merged["memory"] == memory
    assert robustness._sources_note(merged) == ("The memory rows against atlas count are of another commit: def, "
                                                "run on 2026-11-04 with 2 torch threads.")
    same_threads = {**other, "machine": {**other["machine"], "threads": 1}}
    assert robustness._sources_note(robustness._with_tables_of(results, same_threads, True)).endswith("2026-11-04.")
    with pytest.raises(SystemExit, match="another machine or commit"):  # threads may differ, the CPU never
        robustness._with_tables_of(results, {**other, "machine": {"cpu": "y", "commit": "def", "threads": 2}}, True)


def test_a_table_the_other_run_took_from_a_third_keeps_the_third_runs_name(bench):
    robustness = bench.benchmark_robustness
    results = {"machine": {"cpu": "x", "commit": "new"}, "partial_fov": [_row(0.7, 0.0)], "memory": []}
    memory = [{"atlases": 1, "exit": 0, "seconds": 1.0, "peak_rss_gb": 1.0}]
    brain = {"rows": [_row(0.7, 0.1)], "jobs": 2, "ants_seed": 1}
    published = {"machine": {"cpu": "x", "commit": "old"}, "date": "d2", "memory": memory, "brain_partial_fov": brain,
                 "table_sources": {"memory": {"commit": "mem", "date": "d1", "threads": 2}}}
    merged = robustness._with_tables_of(results, published, another_commit=True)
    assert merged["memory"] == memory and merged["brain_partial_fov"] == brain
    assert robustness._sources_note(merged) == (
        "The memory rows against atlas count are of another commit: mem, run on d1 with 2 torch threads. "
        "The brain pairs are of another commit: old, run on d2.")


def test_tables_this_run_measured_are_never_replaced_by_the_other_run_s(bench):
    robustness = bench.benchmark_robustness
    fresh = {"rows": [_row(0.8, 0.2)], "jobs": 2, "ants_seed": 1, "ants_threads": 1}
    results = {"machine": {"cpu": "x", "commit": "new"}, "partial_fov": [_row(0.7, 0.0)], "brain_partial_fov": fresh}
    memory = [{"atlases": 1, "exit": 0, "seconds": 1.0, "peak_rss_gb": 1.0}]
    older = {"machine": {"cpu": "x", "commit": "old"}, "date": "d1", "memory": memory,
             "brain_partial_fov": {"rows": [_row(0.1, 0.1)], "jobs": 2, "ants_seed": 1}}
    merged = robustness._with_tables_of(results, older, another_commit=True)
    assert merged["brain_partial_fov"] == fresh and merged["memory"] == memory
    assert robustness._sources_note(merged) == "The memory rows against atlas count are of another commit: old, run on d1."


def test_a_run_before_memory_sources_keeps_its_note(bench):
    assert bench.benchmark_robustness._sources_note({"machine": {"commit": "abc"}, "note": "As it was."}) == "As it was."
    assert bench.benchmark_robustness._sources_note({"machine": {"commit": "abc"}}) == ""


def test_a_run_that_named_its_sources_memory_sources_is_read_and_renamed(bench):
    robustness = bench.benchmark_robustness
    old = {"machine": {"cpu": "x", "commit": "abc"}, "memory_sources": {"memory": {"commit": "def", "date": "d1"}}}
    assert robustness._sources_note(old) == "The memory rows against atlas count are of another commit: def, run on d1."
    brain = {"rows": [_row(0.7, 0.1)], "jobs": 2, "ants_seed": 1}
    other = {"machine": {"cpu": "x", "commit": "fed"}, "date": "d2", "brain_partial_fov": brain}
    merged = robustness._with_tables_of(old, other, another_commit=True)
    assert "memory_sources" not in merged and merged["brain_partial_fov"] == brain
    assert robustness._sources_note(merged) == ("The memory rows against atlas count are of another commit: def, run "
                                                "on d1. The brain pairs are of another commit: fed, run on d2.")


def _brain_row(name: str, ours: float) -> dict:
    return {**_row(ours, 0.0), "pair": name, "ours without global search": {"dice": 0.0, "seconds": 5.0}}


def test_brain_pairs_are_tabled_with_their_run_and_never_judged(bench):
    brain = {"rows": [_brain_row("brain0", 0.7), _brain_row("brain1 (A inverted)", 0.3)], "jobs": 2, "ants_seed": 1}
    lines = "\n".join(bench.benchmark_robustness._brain_lines(brain))
    assert "### Partial field of view on real brains (2 OASIS pairs; found: mean Dice >= 0.5)" in lines
    assert "Not what the target is judged on" in lines
    assert "They ran 2 processes side by side (`--jobs 2`): their seconds share the cores." in lines
    assert "| brain1 (A inverted) | atlas slab | 0.30 | none | 0.300 (10) | 0.000 (5) | 0.000 (20) |" in lines
    assert "| ours | 1 / 2 | 50% | 0.500 | 10 |" in lines and "Target" not in lines and "control" not in lines
    assert "seeded with `--random-seed 1`" in lines


def test_brain_pairs_are_skipped_with_a_message_without_the_shared_data(bench, monkeypatch, capsys):
    robustness = bench.benchmark_robustness
    monkeypatch.setattr(robustness, "brain_data_missing", lambda: "/nowhere is absent")
    assert robustness.brain_partial_fov(12, with_ants=False) == []
    assert "skipping the brain partial pairs: /nowhere is absent" in capsys.readouterr().out


@pytest.mark.shared_data
def test_brain_pairs_cover_every_combination_and_lay_out_on_their_truth(bench):
    cases, brains = bench.robustness_cases, bench.brain_partial_cases
    if brains.brain_data_missing():
        pytest.skip(f"needs {brains.brain_data_missing()}")
    pairs = [brains.brain_partial_pair(seed) for seed in range(brains.BRAIN_PAIRS)]
    combos = {(p.kind, p.mix_up, "inverted" in p.name) for p in pairs}
    assert len(combos) == 12  # 2 kinds x 3 mix-ups x 2 contrasts
    again = brains.brain_partial_pair(0)
    assert np.array_equal(again.atlas.image.array, pairs[0].atlas.image.array)
    atlas_slab, target_slab = pairs[0], pairs[1]
    assert atlas_slab.kind == "atlas slab" and atlas_slab.atlas.image.array.shape[0] < atlas_slab.target.array.shape[0]
    rows = np.flatnonzero(atlas_slab.truth.array.any(axis=(1, 2)))
    assert len(rows) <= atlas_slab.atlas.image.array.shape[0]  # the truth is the slab only
    assert target_slab.target.array.shape[0] < target_slab.atlas.image.array.shape[0]
    for pair in (atlas_slab, target_slab):
        assert np.linalg.norm(pair.frame[:3, 3]) > 1.0  # the atlas is in a frame of its own
        placed = bench.partial_pair_profile.placed_labels(pair, cases.true_transform(pair))
        assert cases.mean_dice(placed, pair.truth.array, pair.labels) > 0.5  # two brains laid out as made


def test_same_anatomy_twin_differs_from_its_pair_only_in_the_atlas_anatomy(bench):
    cases = bench.robustness_cases
    pair, twin = cases.partial_pair(0), cases.partial_pair(0, same_anatomy=True)
    assert np.array_equal(pair.target.array, twin.target.array) and np.array_equal(pair.truth.array, twin.truth.array)
    assert np.array_equal(pair.frame, twin.frame) and pair.atlas.labels.array.shape == twin.atlas.labels.array.shape
    assert not np.array_equal(pair.atlas.labels.array, twin.atlas.labels.array)
    placed = bench.partial_pair_profile.placed_labels(twin, cases.true_transform(twin))
    # the target's own organs, resampled through a tilt: all but the voxels on organ boundaries
    assert cases.mean_dice(placed, twin.truth.array, twin.labels) > 0.9


def test_profile_of_a_same_anatomy_control_peaks_at_the_pose(bench, capsys):
    assert bench.partial_pair_profile.main(["--pairs", "0", "--reach", "6", "--step", "6", "--same-anatomy"]) == 0
    out = capsys.readouterr().out
    assert "pair0 (same anatomy): score peaks at +0 mm, organ Dice at +0 mm" in out


def test_deformed_profile_segments_from_each_placement_and_restores_the_affine_step(bench):
    from crossmodalmas.affine import AffineAligner
    from crossmodalmas.options import SegmentOptions

    real = AffineAligner.align
    quick = SegmentOptions(model="instance-opt", refine_iterations=2, fusion="mv")
    rows = bench.partial_pair_profile.profile(0, reach_mm=30.0, step_mm=30.0, same_anatomy=True, deform=quick)
    assert AffineAligner.align is real
    assert [len(row) for row in rows] == [5, 5, 5]
    after = [row[3] for row in rows]
    assert after[1] > 0.8 and after[1] > max(after[0], after[2])  # from the pose itself, the control is found
    assert all(0.0 < row[4] <= 1.0 for row in rows)


def test_the_section_says_when_the_pairs_ran_side_by_side(bench):
    assert bench.benchmark_robustness._jobs_note(1) == ""
    assert "ran 2 processes side by side (`--jobs 2`)" in bench.benchmark_robustness._jobs_note(2)


def test_found_share_is_judged_over_every_seed_ours_ran_at(bench):
    robustness = bench.benchmark_robustness
    rows = [dict(_row(0.7, 0.0), **{robustness.seeded(1): {"dice": dice, "seconds": 11.0}})
            for dice in (0.7, 0.7, 0.7, 0.7, 0.2)]
    rows[0]["ours"] = {"dice": 0.3, "seconds": 10.0}
    lines = "\n".join(robustness._partial_lines(rows))
    assert "| ours, seed 1 | 4 / 5 | 80% | 0.600 | 11 |" in lines
    assert "| pair | kind | fraction | mix-up | ours Dice (s) | ours, seed 1 Dice (s) | antspyx SyN Dice (s) |" in lines
    assert "seed N" not in "\n".join(robustness._partial_lines([_row(0.7, 0.0)]))
    assert "Target >= 90 % found: 80% (8 / 10) over the 2 seeds of the affine step's sampling (each: 80%, 80%), " \
           "**missed**." in lines
    assert '"ours, seed N" is ours with `SegmentOptions(seed=N)`' in lines
    rows[0]["ours"] = {"dice": 0.7, "seconds": 10.0}
    rows[4][robustness.seeded(1)] = {"dice": 0.6, "seconds": 11.0}
    assert "100% (10 / 10) over the 2 seeds" in "\n".join(robustness._partial_lines(rows))


def test_ours_runs_at_each_more_seed_with_that_seed(bench, monkeypatch):
    robustness = bench.benchmark_robustness
    seeds = []

    def ours(pair, global_search, seed=0):
        seeds.append((global_search, seed))
        return pair.truth.array, 1.0

    monkeypatch.setattr(robustness, "_ours", ours)
    row = robustness._pair_row(0, with_ants=False, more_seeds=(3,))
    assert (True, 3) in seeds and (True, 0) in seeds and (False, 0) in seeds
    assert list(row)[4:7] == ["ours", "ours, seed 3", "ours without global search"]
    assert row["ours, seed 3"]["dice"] == 1.0


@pytest.mark.parametrize("seeds", [["0"], ["1", "1"]])
def test_more_seeds_must_be_new_and_distinct(bench, capsys, seeds):
    with pytest.raises(SystemExit):
        bench.benchmark_robustness.main(["--more-seeds", *seeds, "--quick"])
    assert "--more-seeds: seeds besides the default 0, each once" in capsys.readouterr().err


def _evidence_row(pair: str, kind: str, peak_mm: float, control_peak_mm: float) -> dict:
    return {"pair": pair, "kind": kind, "mix_up": "none", "peak_mm": peak_mm, "dice_layout": 0.5,
            "dice_peak": 0.25, "control_peak_mm": control_peak_mm}


def test_evidence_lines_count_the_peaks_beyond_reach_per_kind_of_pair(bench):
    rows = [_evidence_row("pair0", "atlas slab", 12.0, 0.0), _evidence_row("pair1", "target slab", -3.0, 9.0),
            _evidence_row("pair2", "atlas slab", -6.0, 3.0)]  # 6 mm is near, not beyond
    lines = bench.partial_pair_profile.evidence_lines(rows, 30.0, 3.0)
    assert "| pair0 | atlas slab | none | +12 | +0 | 0.500 | 0.250 |" in lines
    assert ("Atlas slabs: the score peaks more than 6 mm from the layout on 1 of 2 between the two subjects "
            "(pair0), on 0 of 2 controls (none).") in lines
    assert ("Target slabs: the score peaks more than 6 mm from the layout on 0 of 1 between the two subjects "
            "(none), on 1 of 1 controls (pair1).") in lines


def test_evidence_section_is_written_for_the_pairs_given(bench, tmp_path, monkeypatch):
    profile = bench.partial_pair_profile
    monkeypatch.setattr(profile, "ROOT", tmp_path)
    assert profile.main(["--pairs", "0", "--reach", "6", "--step", "6", "--section"]) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert text.startswith("<!-- section:partial-evidence -->") and "--pairs $(seq 0 0) --section" in text
    row = next(line for line in text.splitlines() if line.startswith("| pair0 |"))
    assert row.split(" | ")[4] == "+0"  # the control's score peaks at the layout's pose


def test_the_section_names_the_pairs_it_ran(bench):
    assert bench.partial_pair_profile._pairs_argument([0, 1, 2]) == "$(seq 0 2)"
    assert bench.partial_pair_profile._pairs_argument([2, 16]) == "2 16"

