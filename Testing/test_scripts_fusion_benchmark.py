"""scripts/benchmark_fusion.py's helpers: Markdown sections, targets, STAPLE on the working grid,
and the large-case re-fusion (tiny stand-ins, no registration, no ANTs)."""


import numpy as np
import pytest
import torch

from conftest import import_scripts
MODULES = ("markdown_sections", "fusion_report", "benchmark_fusion")


@pytest.fixture(scope="module")
def bench():
    yield from import_scripts(MODULES)


def test_a_section_is_appended_then_replaced_and_the_rest_kept(bench, tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# Registration\n\nnumbers\n")
    bench.markdown_sections.replace_section(path, "fusion", ["## Fusion", "old"])
    bench.markdown_sections.replace_section(path, "other", ["x"])
    bench.markdown_sections.replace_section(path, "fusion", ["## Fusion", "new"])
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Registration\n\nnumbers\n")
    assert "new" in text and "old" not in text and text.count("<!-- section:fusion -->") == 1
    assert text.index("section:fusion") < text.index("section:other")  # replaced in place


def _task(group, dice):
    return {"task": group, "group": group, "atlases": 8, "similarity": {"spearman": 0.7, "points": 10},
            "methods": {m: {"mean_dice": d, "hd95_mm": 1.0, "seconds": 0.1} for m, d in dice.items()}}


def test_targets_compare_the_cross_modality_means(bench):
    tasks = [_task("heart", {"mv": 0.70, "nlwv": 0.74, "plf": 0.75, "jlf": 0.60}),
             _task("abdomen", {"mv": 0.60, "nlwv": 0.66, "plf": 0.63, "jlf": 0.50}),
             _task("oasis", {"mv": 0.10, "nlwv": 0.90, "plf": 0.10, "jlf": 0.90})]  # not cross-modality
    speed = {"shape": [4, 4, 4], "atlases": 10, "disagreeing_fraction": 0.1,
             "fuse_s": {"mv": 1.0, "loa": 2.0, "plf": 6.0, "nlwv": 60.0}, "refuse_s": {"mv": 0.5, "loa": 0.6, "plf": 0.9}}
    rows = {r[0].split(" (")[0]: r for r in bench.fusion_report.targets({"tasks": tasks, "speed": speed})}
    assert rows["PLF >= majority vote + 0.01 Dice"][1:] == ("0.690 vs 0.650", "met")
    assert rows["PLF >= NLWV"][2] == "**missed**"  # 0.690 < 0.700
    assert rows["PLF >= joint label fusion"][2] == "met"
    assert next(r for k, r in rows.items() if k.startswith("fusion"))[2] == "**missed**"  # plf 6 s
    assert next(r for k, r in rows.items() if k.startswith("re-fusion"))[2] == "met"


def test_staple_of_agreeing_atlases_is_their_labels(bench):
    labels = np.zeros((3, 6, 6, 6), np.uint8)
    labels[:, 1:4, 1:4, 1:4] = 1
    labels[0, 0, 0, 0] = 2  # one atlas alone says 2 somewhere: outvoted
    result = bench.benchmark_fusion._large_result(torch.from_numpy(labels)[:, None], torch.zeros(3, 6, 6, 6))
    fused = bench.benchmark_fusion.run_staple(result)
    expected = np.zeros((6, 6, 6), np.int64)
    expected[1:4, 1:4, 1:4] = 1
    assert np.array_equal(fused, expected)


def test_refusion_of_the_large_stand_in_leaves_one_atlas_out(bench):
    labels = torch.randint(0, 3, (4, 1, 5, 6, 7), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    result = bench.benchmark_fusion._large_result(labels, torch.randn(4, 5, 6, 7, generator=torch.Generator().manual_seed(1)))
    again = bench.benchmark_fusion.refuse(result, [1, 2, 3], "plf")
    assert again.atlas_names == ["atlas-1", "atlas-2", "atlas-3"] and again.labels.array.shape == (5, 6, 7)
