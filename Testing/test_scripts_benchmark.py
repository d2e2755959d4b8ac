"""scripts/benchmark_registration.py and its sibling modules: pure helpers on tiny arrays and made-up
results (no registration run, no ANTs, no network)."""

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import import_scripts
from crossmodalmas import metrics
from crossmodalmas.label_sources import EVAL_SEED_START
from crossmodalmas.models import ModelEntry, add_to_manifest, find_model, read_manifest, sha256_of
from crossmodalmas.volume import LabelMap

MODULES = ("registration_cases", "registration_methods", "benchmark_speed", "benchmark_targets", "benchmark_report",
           "benchmark_registration")


@pytest.fixture(scope="module")
def bench():
    yield from import_scripts(MODULES)


def test_invert_contrast_inside_head_only(bench):
    image = np.array([[[0.0, 0.01, 0.5, 1.0, 0.25]]], dtype=np.float32)
    inverted = bench.registration_cases.invert_contrast(image, fraction=0.02)
    np.testing.assert_allclose(inverted, [[[0.0, 0.0, 0.5, 0.0, 0.75]]])
    assert inverted.dtype == np.float32


def test_group_labels_merges_and_drops_the_rest(bench):
    labels = np.array([[[0, 2, 41, 3, 42, 24, 16]]])
    grouped = bench.registration_cases.group_labels(labels, {1: (2, 41), 2: (3, 42), 3: (16,)})
    np.testing.assert_array_equal(grouped, [[[0, 1, 1, 2, 2, 0, 3]]])


def test_synthseg_groups_are_disjoint(bench):
    ids = [i for members in bench.registration_cases.SYNTHSEG_GROUPS.values() for i in members]
    assert len(ids) == len(set(ids))


def test_render_contrast_seeded_background_dark(bench):
    labels = np.zeros((12, 12, 12), dtype=np.int32)
    labels[3:9, 3:9, 3:9] = 5
    render = bench.registration_cases.render_contrast
    a = render(labels, np.random.default_rng(1), blur_vox=0.0, noise=0.0)
    b = render(labels, np.random.default_rng(1), blur_vox=0.0, noise=0.0)
    np.testing.assert_array_equal(a, b)
    assert a[0, 0, 0] == 0.0 and 0.0 <= a[5, 5, 5] <= 1.0


def test_cropped_keeps_physical_positions(bench):
    array = np.zeros((20, 20, 20), dtype=np.int32)
    array[8:11, 5:7, 12:15] = 3
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    crop = bench.registration_cases._cropped(LabelMap(array, ijk_to_ras), margin=2)
    assert crop.array.shape == (7, 6, 7)
    first = np.argwhere(crop.array == 3)[0][::-1]  # (i, j, k)
    np.testing.assert_allclose(crop.grid.ijk_to_points(first[None]),
                               LabelMap(array, ijk_to_ras).grid.ijk_to_points(np.array([[12, 5, 8]])))


def test_centred_grid_is_isotropic_identity_direction_centred_at_zero(bench):
    ijk_to_ras = bench.registration_cases.centred_grid((4, 6, 8), 2.0)
    np.testing.assert_allclose(ijk_to_ras[:3, :3], 2.0 * np.eye(3))
    np.testing.assert_allclose(LabelMap(np.zeros((4, 6, 8)), ijk_to_ras).grid.corners_ras().mean(0), 0.0, atol=1e-12)


def test_synthetic_pairs_tiny_heart_from_the_eval_split(bench):
    torch.set_num_threads(1)
    pairs = bench.registration_cases.synthetic_pairs(sources=("heart",), shape=(24, 24, 24), count=1)
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair.extra["map"] == f"heart/seed{EVAL_SEED_START}" and pair.group == "synthetic heart"
    assert pair.case == "synthetic" and pair.cross and pair.extra["trained_on"]
    grids = [pair.atlas.grid, pair.atlas_labels.grid, pair.target.grid, pair.truth.grid]
    assert all(g.same_as(grids[0]) for g in grids) and grids[0].shape == (24, 24, 24)
    np.testing.assert_allclose(grids[0].spacing, 2.0)
    assert pair.atlas.array.dtype == np.float32 and pair.truth.array.dtype == np.int32
    assert pair.labels == tuple(int(v) for v in pair.truth.labels) and len(pair.labels) > 3
    assert not np.array_equal(pair.atlas.array, pair.target.array)  # two contrasts, two deformations


def test_synthetic_pairs_skip_a_file_source_without_its_data(bench, tmp_path, capsys):
    assert bench.registration_cases.synthetic_pairs(sources=("prostate",), shape=(8, 8, 8), data_root=tmp_path) == []
    assert "skipping the synthetic prostate pairs" in capsys.readouterr().out


def test_hd95_cropped_equals_the_full_computation(bench):
    rng = np.random.default_rng(0)
    truth = np.zeros((20, 22, 24), dtype=np.int32)
    truth[4:12, 5:15, 0:9] = 1
    pred = np.roll(truth, 2, axis=1)
    pred[rng.random(pred.shape) < 0.01] = 1
    spacing = (1.0, 1.5, 2.0)
    assert bench.benchmark_registration.hd95_cropped(pred, truth, 1, spacing) == \
        pytest.approx(metrics.hausdorff95(pred, truth, 1, spacing))
    assert bench.benchmark_registration.hd95_cropped(pred, truth, 7, spacing) == 0.0


def test_score_counts_labels_missing_from_the_prediction(bench):
    truth = np.zeros((8, 8, 8), dtype=np.int32)
    truth[1:4, 1:4, 1:4], truth[5:7, 5:7, 5:7] = 1, 2
    grid = np.eye(4)
    pair = bench.registration_cases.Pair("x", "x", True, None, None, None, LabelMap(truth, grid), (1, 2))
    scored = bench.benchmark_registration.score(pair, np.where(truth == 1, 1, 0))
    assert scored["dice"] == {1: 1.0, 2: 0.0} and scored["mean_dice"] == 0.5
    assert scored["hd95_missing"] == 1 and scored["mean_hd95_mm"] == 0.0 and scored["hd95_mm"][2] is None


def test_median_seconds_warms_up_then_repeats(bench):
    calls = []
    seconds = bench.benchmark_speed.median_seconds(lambda: calls.append(1), repeats=3, warmup=1)
    assert len(calls) == 4 and seconds >= 0.0


def _method(dice, folding=0.0, ice=None, seconds=1.0):
    return {"mean_dice": dice, "mean_hd95_mm": 2.0, "hd95_missing": 0, "folding_percent": folding,
            "sd_log_jacobian": 0.05, "inverse_consistency_mm": ice, "seconds": seconds, "device": "cpu"}


def _results():
    """Two synthetic pairs and the two OASIS pairs, made up."""
    synthetic = [{"case": "synthetic", "group": f"synthetic {s}", "pair": f"synthetic {s}/seed1", "cross": True,
                  "methods": {"syn": _method(0.60, seconds=20.0), "net-diffeo": _method(0.70, 0.001, 0.1),
                              "net-paper": _method(0.62, 0.2, 0.2), "net-paper-noinv": _method(0.62, 0.3, 0.5),
                              "net-diffeo@working-grid": _method(0.66, 0.0, 0.1)}} for s in ("heart", "abdomen")]
    brain = [{"case": "brain", "group": "brain", "pair": name, "cross": "inverted" in name,
              "methods": {"syn": _method(0.75, seconds=50.0), "net-diffeo": _method(dice, 0.02, 0.1)}}
             for name, dice in (("oasis A(inverted)->B", 0.74), ("oasis A->B", 0.76))]
    return synthetic + brain


def _speed(gpu=None):
    return {"shape": [160, 192, 224], "threads": 2, "gpu_atlases": 10, "synth_shape": [128, 128, 128],
            "models": {"diffeo": "d", "paper": "p", "noinv": "n"}, "syn_brain_s_per_atlas": 50.0,
            "networks": {"diffeo": {"name": "d", "cpu_s": 0.5}, "paper": {"name": "p", "cpu_s": 4.0}},
            "synth_cpu_s": 2.0, "gpu": gpu}


def test_targets_are_computed_from_the_results(bench):
    checked = bench.benchmark_targets.targets(_results(), _speed())
    by = {(t.requirement, t.subject): t for t in checked}
    synthetic = "mean Dice >= SyN + 0.05 on the held-out synthetic pairs"
    assert by[(synthetic, "net-diffeo")].met is True and by[(synthetic, "net-paper")].met is False
    assert by[(synthetic, "net-diffeo+refine")].met is None
    assert by[("Dice >= SyN on `oasis A->B`", "net-diffeo")].met is True
    assert by[("Dice >= SyN on `oasis A(inverted)->B`", "net-diffeo")].met is False
    assert by[("% non-positive Jacobian < 0.01 % on every pair", "net-diffeo")].met is False  # worst pair 0.02 %
    assert by[("% non-positive Jacobian < 0.5 % on every pair", "net-paper")].met is True
    ice = next(t for t in checked if t.subject == "net-paper vs net-paper-noinv")
    assert ice.met is True and "0.40" in ice.measured  # 0.2 / 0.5
    assert by[("one pass, one atlas, 160x192x224, CPU < 3 s", "d")].met is True
    assert by[("one pass, one atlas, 160x192x224, CPU < 3 s", "p")].met is False
    assert by[("SyN s per atlas / one pass on the CPU >= 50", "d")].met is True  # 50 / 0.5 = 100
    gpu = [t for t in checked if "H100" in t.requirement]
    assert gpu and all(t.met is None and t.measured.startswith("no GPU was lent") for t in gpu)
    missing = [t for t in checked if t.subject == "n"]
    assert len(missing) == 1 and missing[0].met is None


def test_gpu_targets_judged_only_on_an_h100(bench):
    gpu = {"device_name": "NVIDIA H100 80GB HBM3", "synth_s": 0.2,
           "networks": {"diffeo": {"one_s": 0.05, "batch_s": 0.4}, "paper": {"one_s": 0.05, "batch_s": 1.5}}}
    checked = bench.benchmark_targets.targets(_results(), _speed(gpu))
    batch = {t.subject: t.met for t in checked if t.requirement.startswith("10 atlases")}
    assert batch == {"d": True, "p": False}
    assert next(t for t in checked if "synth_pair" in t.requirement and "H100" in t.requirement).met is True
    other = {**gpu, "device_name": "NVIDIA A10"}
    assert all(t.met is None for t in bench.benchmark_targets.targets(_results(), _speed(other))
               if "H100" in t.requirement)


def test_summaries_ablation_and_coarse_grid(bench):
    targets = bench.benchmark_targets
    means = targets.group_means(_results())
    assert means["net-diffeo"]["synthetic heart"] == pytest.approx(0.70)
    assert means["net-diffeo"]["brain"] == pytest.approx(0.75)
    assert means["syn"]["synthetic (all)"] == pytest.approx(0.60)
    ablation = targets.ablation(_results())
    assert ablation["pairs"] == 2 and ablation["inverse_consistency_mm"]["ratio"] == pytest.approx(0.4)
    cost = targets.coarse_grid_cost(_results())
    assert cost["all"]["pairs"] == 2 and cost["all"]["cost"] == pytest.approx(-0.04)
    assert "brain" not in cost


def test_markdown_holds_every_section_and_row(bench, tmp_path):
    results, speed = _results(), _speed()
    checked = bench.benchmark_targets.targets(results, speed)
    info = {"date": "2026-01-01", "command": "python x", "commit": "abc", "cpu": "CPU", "cores": 2, "torch": "2",
            "threads": 2, "antspyx": "0.6", "simpleitk": "2.5", "python": "3.11", "ours_device": "cpu", "refine": 30,
            "models": speed["models"], "peak_load": 1.0}
    path = tmp_path / "bench.md"
    bench.benchmark_report.write_markdown(path, results, speed, checked, info)
    text = path.read_text(encoding="utf-8")
    for heading in ("## Targets", "## Mean Dice by group of pairs", "## All pairs and methods",
                    "## Ablation: the invertibility loss", "## What the coarse grid costs", "## Speed",
                    "## Published figures (others' papers, not measured here)", "## Notes"):
        assert heading in text
    assert ("| synthetic | synthetic heart/seed1 | yes | net-diffeo | 0.700 | 2.00 | 0.0010 | 0.050 | 0.100 | 1.0 "
            "| cpu |") in text
    assert "| brain | oasis A->B | no | syn | 0.750 | 2.00 | 0.0000 | 0.050 | n/a | 50.0 | cpu |" in text
    assert "| inverse_consistency_mm" not in text and "| mean ICE (mm) | 0.2000 | 0.5000 | 0.40 |" in text
    assert "| all | 2 | 0.700 | 0.660 | -0.040 |" in text
    assert "| d | 0.50 | 100.0 |" in text and "no GPU was lent to this run" in text
    assert "VoxelMorph" in text and "never trained on" in text
    assert ("| mean Dice >= SyN + 0.05 on the held-out synthetic pairs | net-diffeo | 0.700 vs SyN 0.600 (2 pairs) "
            "| met |") in text


def test_a_dice_verdict_between_figures_equal_to_3_decimals_shows_4(bench):
    results = _results()
    results[2]["methods"]["net-diffeo"]["mean_dice"] = 0.74656  # oasis A(inverted)->B, SyN 0.75
    results[2]["methods"]["syn"]["mean_dice"] = 0.74720
    by = {(t.requirement, t.subject): t for t in bench.benchmark_targets.targets(results, _speed())}
    inverted = by[("Dice >= SyN on `oasis A(inverted)->B`", "net-diffeo")]
    assert inverted.measured == "0.7466 vs SyN 0.7472" and inverted.met is False
    assert by[("Dice >= SyN on `oasis A->B`", "net-diffeo")].measured == "0.760 vs SyN 0.750"


def test_from_json_redraws_the_section_of_an_earlier_run(bench, tmp_path, capsys):
    info = {"date": "2026-01-01", "command": "python x", "commit": "abc", "cpu": "CPU", "cores": 2, "torch": "2",
            "threads": 2, "antspyx": "0.6", "simpleitk": "2.5", "python": "3.11", "ours_device": "cpu", "refine": 30,
            "models": _speed()["models"], "peak_load": 1.0}
    raw = tmp_path / "run.json"
    raw.write_text(json.dumps({"machine": info, "results": _results(), "speed": _speed(), "targets": []}))
    out = tmp_path / "bench.md"
    assert bench.benchmark_registration.main(["--from-json", "--json", str(raw), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "Run on 2026-01-01 with `python x`, code at `abc`" in text
    assert "| Dice >= SyN on `oasis A->B` | net-diffeo | 0.760 vs SyN 0.750 | met |" in text
    assert "redrew" in capsys.readouterr().out


def test_gpu_from_puts_a_separate_run_s_gpu_columns_in_the_section_saying_where_they_ran(bench, tmp_path):
    info = {"date": "2026-01-01", "command": "python x", "commit": "abc", "cpu": "CPU", "cores": 2, "torch": "2",
            "threads": 2, "antspyx": "0.6", "simpleitk": "2.5", "python": "3.11", "ours_device": "cpu", "refine": 30,
            "models": _speed()["models"], "peak_load": 1.0}
    raw, gpu_file, out = tmp_path / "run.json", tmp_path / "gpu.json", tmp_path / "bench.md"
    raw.write_text(json.dumps({"machine": info, "results": _results(), "speed": _speed(), "targets": []}))
    run = {"date": "2026-01-02", "command": "python scripts/benchmark_speed.py --json gpu.json", "commit": "def",
           "cpu": "Xeon", "cores": 16, "torch": "2.11.0+cu130", "python": "3.12.3"}
    gpu_file.write_text(json.dumps({"device_name": "NVIDIA H100 80GB HBM3", "synth_s": 0.2, "run": run,
                                    "networks": {"diffeo": {"one_s": 0.05, "batch_s": 0.4}}}))
    assert bench.benchmark_registration.main(["--from-json", "--json", str(raw), "--out", str(out),
                                              "--gpu-from", str(gpu_file)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "GPU: NVIDIA H100 80GB HBM3 (its columns of a separate run, see Speed)." in text
    assert ("GPU: NVIDIA H100 80GB HBM3, measured in a separate run on 2026-01-02 with `python "
            "scripts/benchmark_speed.py --json gpu.json`, code at `def` (Xeon, 16 cores, torch 2.11.0+cu130, "
            "Python 3.12.3).") in text
    assert "| 10 atlases in one batch on an H100 < 1 s | d | 0.400 s on NVIDIA H100 80GB HBM3 | met |" in text


def test_the_gpu_columns_alone_need_a_gpu(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.benchmark_speed.main(["--json", str(tmp_path / "gpu.json")])
    assert "torch sees no CUDA device" in capsys.readouterr().err and not (tmp_path / "gpu.json").exists()


def _fake_entry(folder: Path, name="tiny") -> ModelEntry:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pt").write_bytes(b"not really weights")
    return ModelEntry(name=name, file=f"{name}.pt", sha256=sha256_of(folder / f"{name}.pt"), task="registration",
                      architecture="consistent-registration-net", arguments={}, normalisation="x",
                      working_grid={"spacing_mm": 1.0, "max_voxels": 4096},
                      training={k: None for k in ("recipe", "data", "steps", "seconds", "machine")},
                      accuracy={"synthetic_validation": {"val_dice": 0.5}}, folder=folder)


def test_working_grid_copy_is_a_findable_entry_on_the_full_grid(bench, tmp_path):
    path = bench.registration_methods.working_grid_copy(_fake_entry(tmp_path / "run"), tmp_path / "copy")
    entry = find_model(str(path), "registration")
    assert entry.name == "tiny.working-grid" and entry.working_grid == bench.registration_methods.FULL_GRID
    assert entry.path() == tmp_path / "copy" / "tiny.pt"  # find_model verified its sha256 would match on load


def test_update_manifest_writes_figures_of_bundled_networks_only(bench, tmp_path, capsys):
    folder = tmp_path / "Models"
    add_to_manifest(_fake_entry(folder, "xmod-d"), folder)
    entries = {"diffeo": read_manifest(folder)[0], "paper": _fake_entry(tmp_path / "elsewhere", "xmod-p")}
    updated = bench.benchmark_registration.update_manifest(_results(), _speed(), entries, "2026-01-01", folder)
    assert updated == ["xmod-d"] and "xmod-p is not a bundled model" in capsys.readouterr().out
    entry = read_manifest(folder)[0]
    assert entry.accuracy["mean_dice"]["brain"] == pytest.approx(0.75)
    assert entry.accuracy["benchmark"] == "BENCHMARKS.md 2026-01-01"
    assert entry.accuracy["synthetic_validation"] == {"val_dice": 0.5}  # training's figure kept
    assert entry.accuracy["folding_percent"] == pytest.approx(0.0105)  # 2 x 0.001 and 2 x 0.02
    assert entry.inference_seconds == {"cpu": 0.5, "gpu": None}


def test_missing_networks_and_ants_leave_their_columns_out(bench, capsys):
    methods = bench.registration_methods
    entries = methods.resolve_models({"diffeo": "no-such-model-anywhere"})
    assert entries == {} and "skipping net-diffeo, net-diffeo+refine" in capsys.readouterr().out
    built = methods.build_methods(list(methods.METHODS), None, {"diffeo": "no-such-model-anywhere"}, {}, 5, "cpu",
                                  Path("/nonexistent"))
    assert list(built) == ["identity", "affine", "instance-opt"]


def test_import_ants_seeds_antspyx_and_keeps_the_run_s_itk_threads(bench, monkeypatch):
    calls = []

    def set_ants_deterministic(on=True, seed_value=123):  # as antspyx's: seeds, and sets ITK to one thread
        calls.append((on, seed_value))
        monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

    fake = types.ModuleType("ants")
    fake.config = types.SimpleNamespace(set_ants_deterministic=set_ants_deterministic)
    monkeypatch.setitem(sys.modules, "ants", fake)
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "4")
    assert bench.registration_methods.import_ants() is fake
    assert calls == [(True, bench.registration_methods.ANTS_SEED)]
    assert os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "4"
    monkeypatch.delenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
    bench.registration_methods.import_ants()
    assert "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS" not in os.environ


@pytest.mark.parametrize("before", [None, "4"])
def test_itk_threads_sets_the_count_inside_and_gives_back_the_run_s_setting(bench, monkeypatch, before):
    key = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
    if before is None:
        monkeypatch.delenv(key, raising=False)
    else:
        monkeypatch.setenv(key, before)
    with pytest.raises(RuntimeError, match="inside"):  # given back on an error too
        with bench.registration_methods.itk_threads(1):
            assert os.environ[key] == "1"
            raise RuntimeError("inside")
    assert os.environ.get(key) == before


def test_parse_args(bench):
    parse = bench.benchmark_registration.parse_args
    args = parse(["--cases", "synthetic", "--methods", "identity,net-diffeo", "--refine", "3"])
    assert args.cases == ["synthetic"] and args.methods == ["identity", "net-diffeo"] and args.refine == 3
    assert args.diffeo_model == "xmod-general-diffeo" and args.noinv_model == "xmod-general-paper-noinv"
    assert parse([]).methods == list(bench.registration_methods.METHODS)
    for bad in (["--cases", "liver"], ["--methods", "voxelmorph"], ["--refine", "-1"]):
        with pytest.raises(SystemExit):
            parse(bad)


def test_a_method_that_raises_scores_zero_and_keeps_its_error(bench):
    truth = np.zeros((6, 6, 6), dtype=np.int32)
    truth[1:4, 1:4, 1:4] = 1
    pair = bench.registration_cases.Pair("x", "x", True, None, None, None, LabelMap(truth, np.eye(4)), (1,))

    def refuses(_pair):
        raise RuntimeError("All samples map outside moving image buffer")

    out = bench.benchmark_registration.run_pair(pair, {"broken": refuses})["broken"]
    assert out["mean_dice"] == 0.0 and out["hd95_missing"] == 1 and "outside moving image" in out["error"]
