"""The catalogue of hostile inputs to ``crossmodalmas``, each run as a real process.

Every :class:`HostileCase` makes its inputs in a work folder (files cut short, odd headers,
odd label values, DICOM folders, unwritable or shared output folders, tampered models),
names the command line, the exit code and the last stderr line expected, and may check what
is left on disk afterwards (no partial output, inputs unchanged). :func:`run_case` runs one
with ``python -m crossmodalmas`` (``OMP_NUM_THREADS=1``) and says whether it behaved.
``Testing/test_cli_hostile.py`` runs each case as one test and checks that README.md names
every case; ``scripts/benchmark_robustness.py`` counts how many were tried and passed.

Exit codes (see README, "What happens with bad input"): 0 the input is odd but usable and
the run works; 2 the input is refused with one line naming it; 3 cancelled, nothing left.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import hostile_builders as b
import hostile_files as hf
import hostile_runs as r
from crossmodalmas.validate import MAX_LABELS

WORK = b.WORK


@dataclass(frozen=True)
class HostileCase:
    """One hostile input and what ``crossmodalmas`` must do with it.

    Attributes:
        name: short id (a test id, a README entry).
        description: the class of input, one line.
        build: makes the inputs under the work folder; returns the arguments after ``crossmodalmas``.
        exit_code: the exit code expected.
        message: regex searched in stderr's last line (``<WORK>`` stands for the work folder);
            None where nothing is expected (a run that works).
        check: post-condition on the work folder (which also holds each copy's
            ``stdout-N.txt`` / ``stderr-N.txt``), e.g. no partial output, inputs unchanged.
        prelude: Python run in the child before the command line, to inject a fault (the
            child then runs ``python -c`` instead of ``python -m crossmodalmas``).
        setup: runs in the child before it executes (resource limits, dropped privileges).
        copies: how many identical processes run at once.
        unavailable: why the case cannot be made on this machine, or None.
    """

    name: str
    description: str
    build: Callable[[Path], list[str]]
    exit_code: int
    message: Optional[str]
    check: Optional[Callable[[Path], bool]] = None
    prelude: str = ""
    setup: Optional[Callable[[], None]] = None
    copies: int = 1
    unavailable: Callable[[], Optional[str]] = lambda: None


_MAIN = "import sys\nfrom crossmodalmas.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _command(case: HostileCase, argv: list[str]) -> list[str]:
    if case.prelude:
        return [sys.executable, "-c", case.prelude + "\n" + _MAIN, *argv]
    return [sys.executable, "-m", "crossmodalmas", *argv]


def _last_line(text: str) -> str:
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _judge(case: HostileCase, workdir: Path, codes: list[int], errors: list[str]) -> tuple[bool, str]:
    pattern = case.message.replace(WORK, re.escape(str(workdir))) if case.message else None
    for index, (code, err) in enumerate(zip(codes, errors)):
        line = _last_line(err)
        if code != case.exit_code:
            return False, f"copy {index}: exit {code}, expected {case.exit_code}; stderr ends: {line!r}"
        if "Traceback" in err:
            return False, f"copy {index}: a traceback on stderr: {err[-400:]!r}"
        if pattern and not re.search(pattern, line):
            return False, f"copy {index}: stderr's last line {line!r} does not match {pattern!r}"
    try:
        kept = case.check is None or case.check(workdir)
    except Exception as error:  # an unreadable output is the case failing, not the catalogue
        return False, f"the post-condition {case.check.__name__} raised {type(error).__name__}: {error}"
    if not kept:
        return False, f"exit {codes} as expected, but the post-condition {case.check.__name__} failed"
    return True, f"exit {case.exit_code}" + (f": {_last_line(errors[0])}" if case.message else "")


def run_case(case: HostileCase, workdir: Path, timeout_s: float = 300) -> tuple[bool, str]:
    """Build ``case`` in ``workdir`` and run it as a real process (``copies`` at once).

    Args:
        case: the case.
        workdir: an empty folder for its inputs and outputs (created if needed).
        timeout_s: the longest a process may run.

    Returns:
        (whether it behaved as the case says, one line of detail: what came, or what went wrong).
    """
    reason = case.unavailable()
    if reason:
        return False, f"not tried: {reason}"
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = case.build(workdir)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default", PYTHONIOENCODING="utf-8")
    processes = [subprocess.Popen(_command(case, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  encoding="utf-8", errors="replace", env=env, cwd=workdir, preexec_fn=case.setup)
                 for _ in range(case.copies)]
    codes, errors = [], []
    for index, process in enumerate(processes):
        try:
            out, err = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            return False, f"copy {index}: still running after {timeout_s:g} s"
        (workdir / f"stdout-{index}.txt").write_text(out, encoding="utf-8")
        (workdir / f"stderr-{index}.txt").write_text(err, encoding="utf-8")
        codes.append(process.returncode)
        errors.append(err)
    return _judge(case, workdir, codes, errors)


_REFUSED = "^crossmodalmas: error: "
CASES: list[HostileCase] = [
    # damaged or foreign files
    HostileCase("truncated-target-nifti", "a .nii.gz target cut short (ITK alone reads it, filling the gap)",
                b.truncated_target, 2,
                _REFUSED + r"<WORK>/target\.nii\.gz: NIfTI data is cut short: \d+ of \d+ bytes", b.no_output),
    HostileCase("truncated-atlas-labels-nifti", "an atlas label map (.nii.gz) cut short",
                b.truncated_atlas_labels, 2,
                _REFUSED + r"<WORK>/atlases/mr6_seg\.nii\.gz: NIfTI data is cut short", b.no_output),
    HostileCase("truncated-target-mha", "a MetaImage target cut short",
                b.truncated_target_mha, 2,
                _REFUSED + r"<WORK>/target\.mha: cannot be read as an image \(File cannot be read", b.no_output),
    HostileCase("not-an-image", "random bytes named target.nii.gz",
                b.not_an_image, 2,
                _REFUSED + r"<WORK>/target\.nii\.gz: cannot be read as an image", b.no_output),
    # geometry
    HostileCase("zero-size-dimension", "a MetaImage target 0 voxels thick",
                b.zero_size_dimension, 2,
                _REFUSED + r"target: image shape \(0, 40, 40\) \(k, j, i\) is thinner than 4 voxels", b.no_output),
    HostileCase("one-voxel-thick", "a single-slice target (1 x 40 x 40)",
                b.one_voxel_thick, 2,
                _REFUSED + r"target: image shape \(1, 40, 40\) \(k, j, i\) is thinner than 4 voxels", b.no_output),
    HostileCase("zero-spacing-nifti", "a NIfTI target whose pixdim gives 0 mm (ITK alone reads 1 mm)",
                b.zero_spacing_nifti, 2,
                _REFUSED + r"<WORK>/flat\.nii\.gz: NIfTI header gives voxel size 0 along axis 2 \(pixdim\[2\]\) "
                r"and no sform", b.no_output),
    HostileCase("zero-spacing-nrrd", "an NRRD target with spacing 0",
                b.zero_spacing_nrrd, 2,
                _REFUSED + r"<WORK>/flat\.nrrd: cannot be read as an image \(.*spacing \(0\) invalid", b.no_output),
    HostileCase("negative-spacing", "a target stored with a negative spacing (reads as a mirrored axis: works)",
                b.negative_spacing, 0, None, b.output_on_target_grid),
    HostileCase("absurd-spacing", "a target with 1e6 mm voxels",
                b.absurd_spacing, 2,
                _REFUSED + r"target: voxel spacing \[1000000\.0, 2\.5, 2\.5\] mm is not within \(0, 1000\] mm",
                b.no_output),
    HostileCase("non-orthogonal-nrrd", "an NRRD target with sheared direction cosines",
                b.sheared_nrrd, 2,
                _REFUSED + r"target: direction cosines are not orthogonal \(sheared or skewed geometry\)", b.no_output),
    HostileCase("non-orthogonal-nifti-sform", "a NIfTI target whose only geometry, the sform, is sheared",
                b.sheared_nifti_sform, 2,
                _REFUSED + r"<WORK>/sheared\.nii\.gz: cannot be read as an image \(ITK only supports orthonormal "
                r"direction cosines", b.no_output),
    # label maps
    HostileCase("negative-labels", "an atlas label map holding -1",
                b.negative_labels, 2,
                _REFUSED + r"atlas mr6 labels: label map holds negative values \(min -1\); labels must be >= 0",
                b.no_output),
    HostileCase("labels-above-int32", "uint32 label ids above 2^31",
                b.labels_above_int32, 2,
                _REFUSED + r"<WORK>/atlases/mr6_seg\.nii\.gz: label values span \[0, 3000000000\], outside the int32",
                b.no_output),
    HostileCase("thousand-labels", "atlases parcellated into 1000 labels (works; the working grid fits in memory)",
                b.thousand_labels, 0, None, b.labels_from_the_atlases),
    HostileCase("too-many-labels", f"an atlas with {MAX_LABELS + 1} labels, above the limit",
                b.too_many_labels, 2,
                _REFUSED + rf"atlases: {MAX_LABELS + 1} distinct labels; at most {MAX_LABELS} are supported",
                b.no_output),
    # DICOM folders
    HostileCase("dicom-several-series", "a DICOM folder holding two series, none chosen",
                b.dicom_several_series, 2,
                _REFUSED + r"<WORK>/dicom: folder holds 2 DICOM series: .*\.7\.[23] \(40 files, CT phantom.*; "
                r"pick one as <WORK>/dicom::SERIES_UID$", b.no_output),
    HostileCase("dicom-series-picked", "a DICOM folder of two series, one picked as FOLDER::SERIES_UID (works)",
                b.dicom_series_picked, 0, None, b.output_on_target_grid),
    HostileCase("dicom-unknown-series", "FOLDER::SERIES_UID naming a series the folder lacks",
                b.dicom_unknown_series, 2,
                _REFUSED + r"<WORK>/dicom::1\.2\.3\.4: folder holds no DICOM series 1\.2\.3\.4 \(it holds ",
                b.no_output),
    # paths and output folders
    HostileCase("spaces-and-non-ascii-paths", "every path with spaces and non-ASCII letters (works)",
                r.spaces_and_non_ascii, 0, None, b.output_and_report_readable),
    HostileCase("read-only-output-folder", "--output in a folder that cannot be written (refused before the work)",
                r.read_only_folder, 2,
                _REFUSED + r"--output <WORK>/out/seg\.nii\.gz: folder <WORK>/out is not writable", b.never_started,
                setup=hf.without_permission_override, unavailable=hf.read_only_unavailable),
    HostileCase("output-is-an-input", "--output naming the target itself",
                r.output_is_the_target, 2,
                _REFUSED + r"--output <WORK>/target\.nii\.gz: is also an input; refusing to overwrite it",
                b.inputs_unchanged),
    HostileCase("output-is-a-hard-link-to-an-input", "--output a hard link to an atlas label map",
                r.output_is_a_hard_link_to_an_input, 2,
                _REFUSED + r"--output <WORK>/seg\.nii\.gz: is also an input; refusing to overwrite it",
                b.inputs_unchanged),
    HostileCase("output-under-a-file", "--output inside a path that is a file",
                r.output_under_a_file, 2,
                _REFUSED + r"--output <WORK>/notes\.txt/seg\.nii\.gz: cannot create its folder <WORK>/notes\.txt",
                b.no_output),
    # writing
    HostileCase("disk-full-while-writing", "the disk fills while the output is written (a file-size limit)",
                r.full_disk, 2,
                _REFUSED + r"<WORK>/out/seg\.nii\.gz: cannot write \(the file came out incomplete: NIfTI data is "
                r"cut short.*is the disk full\?\)$", b.no_output, setup=hf.file_size_limit(512)),
    HostileCase("sigterm-while-writing", "SIGTERM while the outputs are written",
                r.sigterm_while_writing, 3,
                r"^crossmodalmas: cancelled; no output written$", b.no_output, prelude=b.SIGTERM_WHILE_WRITING),
    HostileCase("two-runs-one-folder", "two runs writing the same outputs into one folder at once",
                r.concurrent_runs, 0, None, b.only_complete_outputs, copies=2),
    # models
    HostileCase("tampered-model", "--model: a copy of a bundled model with one byte changed",
                r.tampered_model, 2,
                _REFUSED + r"model 'xmod-[\w.-]+': sha256 mismatch for <WORK>/models/[\w.-]+\.pt: "
                r"expected [0-9a-f]{64}, got [0-9a-f]{64}; the file is damaged or was replaced",
                b.bundled_models_intact),
    HostileCase("truncated-model", "--model: weights cut short (the manifest's sha256 matching)",
                r.truncated_model, 2,
                _REFUSED + r"model 'xmod-[\w.-]+': <WORK>/models/[\w.-]+\.pt cannot be read as a torch checkpoint",
                b.bundled_models_intact),
    HostileCase("model-manifest-missing-field", "--model: a models.json entry without its sha256",
                r.manifest_missing_field, 2,
                _REFUSED + r"<WORK>/models/models\.json: entry 1: model entry lacks key\(s\) \['sha256'\]",
                b.bundled_models_intact),
    HostileCase("model-manifest-wrong-field", "--model: a models.json entry with a spacing that is not a number",
                r.manifest_wrong_field, 2,
                _REFUSED + r"model 'xmod-[\w.-]+': working_grid 'spacing_mm' must be a positive number, got 'one'",
                b.bundled_models_intact),
    HostileCase("tampered-similarity-model", "--similarity-model: a tampered copy, with --fusion plf",
                r.tampered_similarity_model, 2,
                _REFUSED + r"model 'xmod-similarity': sha256 mismatch", b.bundled_models_intact),
    HostileCase("models-verify-tampered", "models verify on a folder with a tampered copy",
                r.verify_tampered_model, 2,
                _REFUSED + r"1 of 1 model\(s\) in <WORK>/models failed verification$", b.verify_reports_the_tampering),
]


def run_catalogue() -> dict:
    """Every case of :data:`CASES`, each in its own temporary folder.

    Returns:
        ``{"cases_total", "tried", "passed", "cases": [{"case", "tried", "passed", "detail"}]}``;
        a case not tried (e.g. a read-only folder where root cannot drop rights) is not passed.
    """
    results = []
    with tempfile.TemporaryDirectory(prefix="hostile_") as folder:
        for index, case in enumerate(CASES):
            workdir = Path(folder) / str(index)
            workdir.mkdir()
            passed, detail = run_case(case, workdir)
            tried = not detail.startswith("not tried")
            results.append({"case": case.name, "tried": tried, "passed": bool(passed) and tried, "detail": detail})
    return {"cases_total": len(results), "tried": sum(r["tried"] for r in results),
            "passed": sum(r["passed"] for r in results), "cases": results}


def readme_table() -> str:
    """The Markdown table of the catalogue that README's "What happens with bad input" holds."""
    rows = ["| Input | Case | Exit |", "|---|---|---|"]
    rows += [f"| {case.description} | `{case.name}` | {case.exit_code} |" for case in CASES]
    return "\n".join(rows)


if __name__ == "__main__":  # python scripts/hostile_cases.py > table.md: README's table, regenerated
    print(readme_table())
