"""Builders of :mod:`hostile_cases` about a run's surroundings rather than its
images: odd paths, output folders that cannot or must not be written, a disk that fills,
SIGTERM while writing, two runs into one folder, and tampered or broken model files.

Model cases copy a bundled model into the work folder and spoil the copy; the bundled files
are only read (the checks verify them afterwards).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hostile_files as hf
from hostile_builders import output_path, remember_inputs, segment
from crossmodalmas.models import sha256_of

# --- paths -----------------------------------------------------------------------------------


def spaces_and_non_ascii(workdir: Path) -> list[str]:
    """Every path with spaces and non-ASCII letters (folders and files, inputs and outputs)."""
    folder = workdir / "my data ünï 目录" / "case one"
    files = hf.write_tiny_case(folder)
    renamed = []
    for image, labels in files.atlases:
        pair = (image.with_name("atlas é " + image.name), labels.with_name("atlas é " + labels.name))
        image.rename(pair[0])
        labels.rename(pair[1])
        renamed.append(pair)
    files.atlases = renamed
    files.target = files.target.rename(folder / "tärget ct.nii.gz")
    results = workdir / "résultats finaux"
    out, report = results / "ségmentation 1.nii.gz", results / "rapport ü.json"
    (workdir / "outputs.json").write_text(json.dumps([str(out), str(report)]), encoding="utf-8")
    return segment(files, out, "--report", report)


# --- output folders ----------------------------------------------------------------------------

def read_only_folder(workdir: Path) -> list[str]:
    files = hf.write_tiny_case(workdir)
    folder = workdir / "out"
    folder.mkdir()
    folder.chmod(0o555)
    return segment(files, folder / "seg.nii.gz", "--progress-lines")


def output_is_the_target(workdir: Path) -> list[str]:
    files = hf.write_tiny_case(workdir)
    remember_inputs(workdir, [files.target])
    return segment(files, files.target)


def output_is_a_hard_link_to_an_input(workdir: Path) -> list[str]:
    files = hf.write_tiny_case(workdir)
    remember_inputs(workdir, [files.atlases[0][1]])
    link = workdir / "seg.nii.gz"
    os.link(files.atlases[0][1], link)
    return segment(files, link)


def output_under_a_file(workdir: Path) -> list[str]:
    files = hf.write_tiny_case(workdir)
    (workdir / "notes.txt").write_text("a file, not a folder\n")
    return segment(files, workdir / "notes.txt" / "seg.nii.gz")


# --- writing: a full disk, SIGTERM, two runs at once ------------------------------------------

def full_disk(workdir: Path) -> list[str]:
    return segment(hf.write_tiny_case(workdir), output_path(workdir))


def sigterm_while_writing(workdir: Path) -> list[str]:
    return segment(hf.write_tiny_case(workdir), output_path(workdir), "--report", workdir / "out" / "report.json")


def concurrent_runs(workdir: Path) -> list[str]:
    out = workdir / "out"
    return segment(hf.write_tiny_case(workdir), out / "seg.nii.gz", "--report", out / "report.json",
                   "--save-warped", out / "previews")


# --- models ----------------------------------------------------------------------------------

def _with_model(workdir: Path, task: str, spoil, *extra) -> list[str]:
    """``segment`` with a copy of the default ``task`` model in ``models/``, spoilt by
    ``spoil(weights_path, entry) -> entry``, named by --model / --similarity-model."""
    files = hf.write_tiny_case(workdir)
    weights, entry = hf.copy_model(workdir / "models", hf.default_model(task))
    hf.write_manifest(workdir / "models", spoil(weights, entry))
    flag = "--model" if task == "registration" else "--similarity-model"
    return segment(files, output_path(workdir), flag, workdir / "models", *extra)


def _tampered(weights: Path, entry: dict) -> dict:
    hf.flip_byte(weights)
    return entry


def _truncated(weights: Path, entry: dict) -> dict:
    hf.truncate(weights, 0.5)
    return {**entry, "sha256": sha256_of(weights)}  # the manifest agrees: torch must notice


def tampered_model(workdir: Path) -> list[str]:
    return _with_model(workdir, "registration", _tampered)


def truncated_model(workdir: Path) -> list[str]:
    return _with_model(workdir, "registration", _truncated)


def manifest_missing_field(workdir: Path) -> list[str]:
    return _with_model(workdir, "registration",
                       lambda weights, entry: {key: v for key, v in entry.items() if key != "sha256"})


def manifest_wrong_field(workdir: Path) -> list[str]:
    return _with_model(workdir, "registration",
                       lambda weights, entry: {**entry, "working_grid": {**entry["working_grid"], "spacing_mm": "one"}})


def tampered_similarity_model(workdir: Path) -> list[str]:
    return _with_model(workdir, "similarity", _tampered, "--fusion", "plf")


def verify_tampered_model(workdir: Path) -> list[str]:
    weights, entry = hf.copy_model(workdir / "models", hf.default_model("registration"))
    hf.write_manifest(workdir / "models", _tampered(weights, entry))
    return ["models", "verify", "--models-dir", str(workdir / "models")]
