"""``crossmodalmas segment-batch``: segment a cohort of targets with one atlas set.

For each target of ``--targets`` (a CSV with ``image`` and an optional ``subject`` column) it
writes ``OUT/<subject>.nii.gz`` (the labels on the target's grid) and ``OUT/<subject>.json``
(the report ``segment --report`` writes). The atlases are read and checked once, and the
networks are loaded once for the whole batch (:mod:`crossmodalmas.model_cache`).

- Resumable: a target whose two outputs exist is skipped. Each file is written atomically,
  the label map first and the report last, so a report's presence means the target is done.
- Sharded: ``--shard I/N`` (0 <= I < N) takes the targets at rows ``i`` with ``i % N == I``
  (counted over the whole CSV), so N processes (a SLURM array passing
  ``$SLURM_ARRAY_TASK_ID`` as I) split a cohort between them, each target in one shard.
- A bad target (unreadable, constant, no overlap with the atlases...) is reported on stderr
  with its subject and the batch goes on; a bad atlas, model or flag stops it before any target.
- Exit codes: 0 all targets done (now or before); 2 some target failed as bad input;
  3 cancelled (SIGINT/SIGTERM): the target in progress leaves no file, finished ones stay.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from crossmodalmas import atlases as atlas_io
from crossmodalmas.atomic import write_json
from crossmodalmas.errors import CancelledError, InputError
from crossmodalmas.options import SegmentOptions
from crossmodalmas.validate import check_labels, check_volume
from crossmodalmas.volume import read_volume, write_labels

EXIT_OK, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 2, 3


@dataclass(frozen=True)
class Target:
    """One target of the batch: its row index in the CSV (0-based), subject and image path."""

    row: int
    subject: str
    image: Path


def _shard(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N) with 0 <= I < N (argparse type of ``--shard``)."""
    index, _, count = text.partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"must be I/N with 0 <= I < N (e.g. 0/10), got {text}")
    return int(index), int(count)


def add_batch_parser(commands) -> argparse.ArgumentParser:
    """Register ``segment-batch`` on ``commands`` (argparse sub-parsers); returns its parser.

    The caller adds the segmentation flags shared with ``segment``.
    """
    p = commands.add_parser("segment-batch", help="segment every target of a CSV with one atlas set "
                                                  "(resumable, shardable)")
    p.add_argument("--targets", required=True, type=Path, metavar="CSV",
                   help="CSV with an 'image' column and an optional 'subject' column (default: the image's "
                        "file stem); relative paths are relative to the CSV's folder")
    p.add_argument("--atlases", required=True, type=Path, metavar="CSV", help="CSV with 'image' and 'labels' columns")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="writes DIR/<subject>.nii.gz and DIR/<subject>.json; a target with both is skipped")
    p.add_argument("--shard", type=_shard, metavar="I/N",
                   help="take only the targets at rows i with i %% N == I (0-based; e.g. a SLURM array's "
                        "$SLURM_ARRAY_TASK_ID/N)")
    p.set_defaults(roi=None)  # a working region is per target: segment-batch has no --roi
    return p


def _check_subject(path: Path, line: int, subject: str) -> None:
    """A subject names output files: refuse what is not a plain file name."""
    if subject in (".", "..") or subject.startswith(".") or any(c in subject for c in "/\\\0"):
        raise InputError(f"--targets {path}: line {line}: subject {subject!r} cannot be a file name "
                         "(no path separators, no leading dot)")


def read_targets(path: Path) -> list[Target]:
    """The targets of a CSV with an ``image`` column and an optional ``subject`` column.

    Raises:
        InputError: missing file, no ``image`` column, no row, an empty image cell, a subject
            that cannot be a file name, or subjects listed more than once (all named).
    """
    if not path.is_file():
        raise InputError(f"--targets {path}: CSV does not exist")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
        header = [name.strip() for name in reader.fieldnames or []]
    if "image" not in header:
        raise InputError(f"--targets {path}: needs an 'image' column (and optionally 'subject'); "
                         f"it has {', '.join(repr(h) for h in header) or 'no header'}")
    targets = []
    for row_index, row in enumerate(rows):
        if not row.get("image"):
            raise InputError(f"--targets {path}: line {row_index + 2}: the 'image' cell is empty")
        image = path.parent / row["image"]
        subject = row.get("subject") or atlas_io.file_stem(image)
        _check_subject(path, row_index + 2, subject)
        targets.append(Target(row_index, subject, image))
    if not targets:
        raise InputError(f"--targets {path}: lists no target")
    subjects = [t.subject for t in targets]
    repeated = sorted({s for s in subjects if subjects.count(s) > 1})
    if repeated:
        raise InputError(f"--targets {path}: subject(s) listed more than once: {', '.join(repeated)}")
    return targets


def _load_atlases(atlas_files: list[atlas_io.AtlasFiles]) -> list[atlas_io.Atlas]:
    """Read and check every atlas once (errors name the file)."""
    loaded = []
    for files in atlas_files:
        atlas = atlas_io.load(files)
        check_volume(atlas.image, str(files.image))
        loaded.append(atlas_io.Atlas(atlas.name, atlas.image, check_labels(atlas.labels, atlas.image, str(files.labels))))
    return loaded


def _outputs(out: Path, subject: str) -> tuple[Path, Path]:
    return out / f"{subject}.nii.gz", out / f"{subject}.json"


def _segment_one(target: Target, atlases, options, out: Path, progress, cancel) -> None:
    """Segment one target and write its label map, then its report; on any failure or
    cancellation neither is left behind."""
    from crossmodalmas.pipeline import segment  # torch: imported by the run, not by the CLI's parser
    from crossmodalmas.segment_command import run_report

    started = time.perf_counter()
    image = read_volume(target.image)
    check_volume(image, str(target.image))
    result = segment(image, atlases, options, progress=progress, cancel=cancel)
    report = run_report(result, target.image, started)
    report["subject"] = target.subject
    labels_path, report_path = _outputs(out, target.subject)
    try:
        write_labels(result.labels, labels_path)
        write_json(report, report_path)
    except BaseException:
        labels_path.unlink(missing_ok=True)
        raise


def _prepare(args) -> tuple[list[Target], list[atlas_io.Atlas], SegmentOptions]:
    """Targets of this shard, atlases and options; every up-front check (exit 2 before any target)."""
    from crossmodalmas.devices import resolve_device  # torch: imported by the run, not by the CLI's parser
    from crossmodalmas.pipeline import fusion_method
    from crossmodalmas.registration_engine import load_registration_model
    from crossmodalmas.segment_command import check_output, options_from_args

    targets = read_targets(args.targets)
    atlas_files = atlas_io.from_csv(args.atlases)
    atlases = _load_atlases(atlas_files)
    options = options_from_args(args)
    device = resolve_device(options.device)
    fusion_method(options, device)  # loads (and caches) the networks now: a bad model fails the batch here
    load_registration_model(options.model, device)
    inputs = [t.image for t in targets] + [p for f in atlas_files for p in (f.image, f.labels)]
    if args.shard:
        index, count = args.shard
        targets = [t for t in targets if t.row % count == index]
    for target in targets:
        for path in _outputs(args.out, target.subject):
            check_output(path, inputs, "--out")
    return targets, atlases, options


def _batch_progress(progress, position: int, total: int, subject: str) -> Callable[[float, str], None]:
    """One target's ``progress(fraction, message)`` as a share of the whole batch's."""
    return lambda fraction, message: progress((position + fraction) / total, f"{subject}: {message}")


def _say(line: str) -> None:
    """A line on stderr, on a line of its own also while a tqdm progress bar is drawn there."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def run_segment_batch(args, progress, cancel) -> int:
    """Run ``segment-batch``; returns the exit code (up-front errors propagate as InputError)."""
    targets, atlases, options = _prepare(args)
    todo = [t for t in targets if not all(p.exists() for p in _outputs(args.out, t.subject))]
    done, failed = 0, []
    for position, target in enumerate(todo):
        try:
            if cancel():
                raise CancelledError("cancelled between targets")
            _segment_one(target, atlases, options, args.out, _batch_progress(progress, position, len(todo),
                                                                             target.subject), cancel)
            done += 1
        except InputError as error:
            failed.append(target.subject)
            _say(f"crossmodalmas: error: target {target.subject}: {error}")
        except CancelledError:
            _say(f"crossmodalmas: cancelled at target {target.subject} (no output for it); "
                 f"{done} segmented in this run are kept")
            return EXIT_CANCELLED
    summary = f"{done} segmented, {len(targets) - len(todo)} skipped (done), {len(failed)} failed"
    print(summary + (f": {', '.join(failed)}" if failed else ""), flush=True)
    return EXIT_BAD_INPUT if failed else EXIT_OK
