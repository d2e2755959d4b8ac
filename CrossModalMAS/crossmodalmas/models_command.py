"""``crossmodalmas models list|verify``: what models are there, and are their weights intact.

``list`` prints a table (name, task, architecture, working-grid spacing, size of the weights
file, default marker, measured CPU/GPU seconds per pair); ``--json`` prints the entries.
``verify [NAME]`` checks each weights file and its sha256 and prints ``ok NAME`` or
``FAILED <problem>`` per model; it exits 0 when all are intact, 2 otherwise. Both read the
bundled models unless ``--models-dir DIR`` names another folder holding a ``models.json``.
Neither imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crossmodalmas.errors import InputError
from crossmodalmas.models import ModelEntry, bundled_models_dir, read_manifest, verify

EXIT_OK, EXIT_BAD_INPUT = 0, 2
COLUMNS = ("name", "task", "architecture", "spacing_mm", "size_MB", "default", "cpu_s", "gpu_s")


def add_models_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``models`` (with ``list`` and ``verify``) on ``subparsers``; returns its parser.

    The parsed arguments have ``command == 'models'`` and ``models_command`` in
    ``('list', 'verify')``; hand them to :func:`run_models`.
    """
    models = subparsers.add_parser("models", help="list the bundled models or verify their weights")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="{list,verify}")
    listing = actions.add_parser("list", help="table of the models")
    listing.add_argument("--json", action="store_true", help="print the manifest entries as JSON")
    checking = actions.add_parser("verify", help="check every weights file and its sha256 (exit 2 on a problem)")
    checking.add_argument("name", nargs="?", metavar="NAME", help="verify this model only")
    for action in (listing, checking):
        action.add_argument("--models-dir", type=Path, metavar="DIR",
                            help="folder holding a models.json (default: the bundled models)")
    return models


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _size_mb(entry: ModelEntry) -> str:
    path = entry.path()
    return f"{path.stat().st_size / 1e6:.1f}" if path.is_file() else "missing"


def _row(entry: ModelEntry) -> list[str]:
    seconds = entry.inference_seconds
    return [entry.name, entry.task.value, entry.architecture, f"{entry.working_grid['spacing_mm']:g}",
            _size_mb(entry), "*" if entry.default else "", _seconds(seconds.get("cpu")), _seconds(seconds.get("gpu"))]


def format_table(entries: list[ModelEntry]) -> str:
    """The ``models list`` table: a header, one row per model, columns padded to fit."""
    rows = [list(COLUMNS)] + [_row(entry) for entry in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _list(entries: list[ModelEntry], where: Path, as_json: bool) -> int:
    if as_json:
        print(json.dumps([entry.to_dict() for entry in entries], indent=2))
    elif not entries:
        print(f"no models in {where}")
    else:
        print(format_table(entries))
        print("(* default model of its task; seconds: measured per atlas-target pair)")
    return EXIT_OK


def _verify(entries: list[ModelEntry], where: Path, name: str | None) -> int:
    if name is not None:
        chosen = [entry for entry in entries if entry.name == name]
        if not chosen:
            names = ", ".join(entry.name for entry in entries) or "none"
            raise InputError(f"models verify {name}: no such model in {where} (available: {names})")
        entries = chosen
    if not entries:
        print(f"no models in {where}")
        return EXIT_OK
    failed = 0
    for entry in entries:
        try:
            verify(entry)
        except InputError as error:
            failed += 1
            print(f"FAILED {error}")
        else:
            print(f"ok {entry.name}")
    if failed:
        print(f"crossmodalmas: error: {failed} of {len(entries)} model(s) in {where} failed verification",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def run_models(args: argparse.Namespace) -> int:
    """Run ``models list`` or ``models verify`` from parsed arguments; returns the exit code.

    Raises:
        InputError: an invalid manifest, a ``--models-dir`` without one, an unknown ``NAME``
            (the command line turns it into exit 2 and one error line).
    """
    where = args.models_dir if args.models_dir is not None else bundled_models_dir()
    entries = read_manifest(args.models_dir)
    if args.models_command == "list":
        return _list(entries, where, args.json)
    return _verify(entries, where, args.name)
