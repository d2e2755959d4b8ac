"""scripts/benchmark_training.py: its smallest mode end to end (tiny network, heart phantoms, one
process), and the helpers that turn logs into rates and curves into steps to a threshold."""

import json

import pytest

from conftest import import_scripts

MODULES = ("markdown_sections", "training_report", "training_cases", "benchmark_training")


@pytest.fixture(scope="module")
def bench():
    yield from import_scripts(MODULES)


def test_rates_come_from_the_first_and_last_logged_steps(bench, tmp_path):
    (tmp_path / "log.csv").write_text("step,seconds,loss,val_dice\n10,4.0,1.5,\n20,6.0,1.4,0.5\n20,6.0,,0.6\n"
                                      "30,9.0,1.3,\n")
    rows = bench.benchmark_training.loss_rows(tmp_path)
    assert rows == [(10, 4.0), (20, 6.0), (30, 9.0)]  # the validation-only row is left out
    assert bench.benchmark_training.rate(rows) == pytest.approx(20 / 5.0)
    assert bench.benchmark_training.rate(rows[:1]) is None


def test_steps_to_the_threshold_is_the_first_validated_step_reaching_it(bench):
    run = {"steps": [0, 20, 40, 60], "val_dice": [0.3, 0.55, 0.7, 0.65]}
    assert bench.benchmark_training.steps_to(run, 0.6) == 40
    assert bench.benchmark_training.steps_to(run, 0.2) == 0
    assert bench.benchmark_training.steps_to(run, 0.9) is None


@pytest.mark.slow
def test_the_quick_mode_writes_its_json_figure_and_section(bench, tmp_path):
    markdown = tmp_path / "B.md"
    markdown.write_text("# Registration\n\nkept\n")
    argv = ["--quick", "--out", str(markdown), "--json", str(tmp_path / "b.json"),
            "--figure", str(tmp_path / "docs" / "curve.png")]
    assert bench.benchmark_training.main(argv) == 0
    report = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))
    assert [(r["device"], r["processes"], r["pairs"]) for r in report["throughput"]][:2] == [
        ("cpu", 1, "synthetic"), ("cpu", 1, "real")]
    assert all(r["steps_per_s"] > 0 and r["pairs_per_s"] == r["steps_per_s"] for r in report["throughput"][:2])
    runs = report["curve"]["runs"]
    assert runs["fine-tuned"]["steps"] == runs["scratch"]["steps"] == [0, 1]
    assert report["curve"]["threshold"] == pytest.approx(0.95 * runs["fine-tuned"]["val_dice"][-1])
    assert runs["fine-tuned"]["steps_to_threshold"] is not None
    assert (tmp_path / "docs" / "curve.png").stat().st_size > 0
    text = markdown.read_text(encoding="utf-8")
    assert text.startswith("# Registration\n\nkept\n") and "<!-- section:training -->" in text
    assert "# Benchmarks: training" in text and ", torch " in text and "GPU: " in text
    assert "](docs/curve.png)" in text and "| fine-tuned |" in text and "| scratch |" in text
    # --from-json draws the same section again without measuring anything
    again = tmp_path / "again.md"
    argv = ["--from-json", str(tmp_path / "b.json"), "--out", str(again), "--figure", str(tmp_path / "docs" / "curve.png")]
    assert bench.benchmark_training.main(argv) == 0
    assert again.read_text(encoding="utf-8").strip() == text[text.index("<!-- section:training -->"):].strip()
