"""``crossmodalmas models list|verify`` on a manifest folder built in ``tmp_path``.

In-process through :func:`crossmodalmas.models_command.run_models` on arguments parsed by a
small parser that registers the subcommand the way ``cli.py`` does; as a real process once
``cli.py`` has the ``models`` subcommand (skipped, saying so, before that).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import pytest

from conftest import CliRun, run_process
from crossmodalmas.errors import InputError
from crossmodalmas.models import read_manifest
from crossmodalmas.models_command import add_models_parser, run_models
from test_core_models import models_dir  # noqa: F401  (the shared manifest fixture)

ROW = re.compile(r"^(\S+)\s+(registration|similarity)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\*?)\s*(\S+)\s+(\S+)$")


@pytest.fixture
def models(capsys):
    """Run ``models ARGV`` in-process; returns a :class:`CliRun` (InputError -> exit 2, as cli.main does)."""
    parser = argparse.ArgumentParser(prog="crossmodalmas")
    add_models_parser(parser.add_subparsers(dest="command", required=True))

    def run(*argv) -> CliRun:
        args = parser.parse_args(["models", *map(str, argv)])
        capsys.readouterr()
        try:
            code = run_models(args)
        except InputError as error:
            print(f"crossmodalmas: error: {error}", file=sys.stderr)
            code = 2
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


def test_list_prints_a_table(models, models_dir):
    run = models("list", "--models-dir", models_dir)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].split() == ["name", "task", "architecture", "spacing_mm", "size_MB", "default", "cpu_s", "gpu_s"]
    rows = {m.group(1): m.groups() for m in map(ROW.match, lines[1:4])}
    assert set(rows) == {"reg-a", "reg-b", "sim-a"}
    assert rows["reg-a"][1:] == ("registration", "tiny-conv", "2", "0.0", "*", "1.25", "-")
    assert rows["reg-b"][5] == "" and rows["sim-a"][5] == "*"
    assert "default model of its task" in lines[4]


def test_list_marks_a_missing_file(models, models_dir):
    (models_dir / "reg-b.pt").unlink()
    run = models("list", "--models-dir", models_dir)
    assert run.code == 0
    assert ROW.match(next(l for l in run.out.splitlines() if l.startswith("reg-b"))).group(5) == "missing"


def test_list_json_prints_the_entries(models, models_dir):
    run = models("list", "--json", "--models-dir", models_dir)
    assert run.code == 0, run.err
    assert json.loads(run.out) == [entry.to_dict() for entry in read_manifest(models_dir)]


def test_list_of_an_empty_manifest(models, tmp_path):
    (tmp_path / "models.json").write_text(json.dumps({"format": 1, "models": []}))
    run = models("list", "--models-dir", tmp_path)
    assert run.code == 0 and run.out.strip() == f"no models in {tmp_path}"


def test_verify_all_ok(models, models_dir):
    run = models("verify", "--models-dir", models_dir)
    assert run.code == 0, run.err
    assert run.out.splitlines() == ["ok reg-a", "ok reg-b", "ok sim-a"]
    assert run.err == ""


def test_verify_reports_each_problem_and_exits_2(models, models_dir):
    (models_dir / "reg-b.pt").unlink()
    damaged = models_dir / "sim-a.pt"
    damaged.write_bytes(damaged.read_bytes()[:-1])
    run = models("verify", "--models-dir", models_dir)
    assert run.code == 2
    lines = run.out.splitlines()
    assert lines[0] == "ok reg-a"
    assert re.fullmatch(r"FAILED model 'reg-b': weights file .*reg-b\.pt is missing", lines[1])
    assert re.fullmatch(r"FAILED model 'sim-a': sha256 mismatch for .*sim-a\.pt: expected [0-9a-f]{64}, "
                        r"got [0-9a-f]{64}; the file is damaged or was replaced", lines[2])
    assert re.fullmatch(r"crossmodalmas: error: 2 of 3 model\(s\) in .* failed verification", run.error_line())


def test_verify_one_model(models, models_dir):
    (models_dir / "reg-b.pt").unlink()
    run = models("verify", "reg-a", "--models-dir", models_dir)
    assert run.code == 0 and run.out.splitlines() == ["ok reg-a"]
    run = models("verify", "reg-b", "--models-dir", models_dir)
    assert run.code == 2 and run.out.startswith("FAILED model 'reg-b': weights file")


def test_verify_unknown_name(models, models_dir):
    run = models("verify", "reg-z", "--models-dir", models_dir)
    assert run.code == 2
    assert re.fullmatch(r"crossmodalmas: error: models verify reg-z: no such model in .*models "
                        r"\(available: reg-a, reg-b, sim-a\)", run.error_line())


def test_models_dir_without_a_manifest(models, tmp_path):
    run = models("verify", "--models-dir", tmp_path)
    assert run.code == 2
    assert run.error_line() == f"crossmodalmas: error: {tmp_path}: no models.json in this folder"


def test_the_bundled_models_verify(models):
    run = models("verify")
    assert run.code == 0, run.out + run.err


def test_as_a_process(models_dir):
    if run_process("models", "--help").returncode != 0:
        pytest.skip("models subcommand not wired yet")
    done = run_process("models", "list", "--models-dir", models_dir)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[1:4]] == ["reg-a", "reg-b", "sim-a"]
    done = run_process("models", "verify", "--models-dir", models_dir)
    assert (done.returncode, done.stdout.splitlines()) == (0, ["ok reg-a", "ok reg-b", "ok sim-a"])
    (models_dir / "reg-a.pt").write_bytes(b"replaced")
    done = run_process("models", "verify", "--models-dir", models_dir)
    assert done.returncode == 2 and "FAILED model 'reg-a': sha256 mismatch" in done.stdout
    assert "Traceback" not in done.stderr
    done = run_process("models", "verify", "nosuch", "--models-dir", models_dir)
    assert done.returncode == 2 and "crossmodalmas: error: models verify nosuch: no such model" in done.stderr
