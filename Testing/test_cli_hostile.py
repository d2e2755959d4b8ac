"""The hostile-input catalogue (``scripts/hostile_cases.py``): one test per case, each case a
real ``python -m crossmodalmas`` process with the exit code, the stderr line and the files
left that the case names; and README's "What happens with bad input" lists every case."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import import_scripts

MODULES = ("hostile_files", "hostile_builders", "hostile_runs", "hostile_cases")
_loader = import_scripts(MODULES)  # the case names are needed to collect the tests
catalogue = next(_loader).hostile_cases
_loader.close()  # scripts/ off sys.path again; the loaded modules keep working
CASES = catalogue.CASES
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input(case, tmp_path):
    reason = case.unavailable()
    if reason:
        pytest.skip(reason)
    passed, detail = catalogue.run_case(case, tmp_path / "work")
    assert passed, f"{case.name} ({case.description}): {detail}"


def test_the_catalogue_is_well_formed():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) and all(re.fullmatch(r"[a-z0-9-]+", n) for n in names)
    for case in CASES:
        assert case.exit_code in (0, 2, 3), case.name
        assert (case.message is None) == (case.exit_code == 0), case.name  # refusals pin their line
        assert case.check is not None, f"{case.name}: every case checks what it leaves on disk"


def test_run_catalogue_counts_a_case_not_tried_as_neither_tried_nor_passed(monkeypatch):
    answers = {"runs": (True, "as documented"), "cannot": (True, "not tried: root ignores the mode"),
               "fails": (False, "exit 1, not 2")}
    monkeypatch.setattr(catalogue, "CASES", [type("Case", (), {"name": n})() for n in answers])
    monkeypatch.setattr(catalogue, "run_case", lambda case, workdir: answers[case.name])
    summary = catalogue.run_catalogue()
    assert (summary["cases_total"], summary["tried"], summary["passed"]) == (3, 2, 1)
    assert [c["passed"] for c in summary["cases"]] == [True, False, False]


def _bad_input_section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^### What happens with bad input\n(.*?)(?=^#{1,3} )", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '### What happens with bad input' subsection"
    return match.group(1)


def test_readme_lists_every_case_with_its_exit_code():
    """README holds the catalogue's table as ``python scripts/hostile_cases.py`` prints it."""
    section = _bad_input_section()
    for row in catalogue.readme_table().splitlines():
        assert row in section, f"README's bad-input table lacks or differs in: {row}"
