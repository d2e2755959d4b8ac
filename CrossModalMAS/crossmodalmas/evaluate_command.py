"""``crossmodalmas evaluate``: segment a labelled dataset under a protocol and score every target.

For each target of the protocol's plan (:mod:`crossmodalmas.evaluation`) the command segments it
with its atlases through :func:`crossmodalmas.pipeline.segment`, writes
``OUT/cases/<target-id>.nii.gz`` (on the target's grid), scores it
(:mod:`crossmodalmas.evaluation_metrics`) and rewrites ``OUT/metrics.csv`` atomically; at the
end ``summary.md`` and ``boxplots.png`` (:mod:`crossmodalmas.evaluation_report`).

Resumable: a target whose rows ``metrics.csv`` holds is skipped, so a run stopped by SIGTERM
(exit 3, what is done is kept) or a crash goes on where it stopped when started again.
``OUT/evaluation.json`` records the dataset and the settings; a re-run with other settings
into the same folder is refused rather than mixing results.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from crossmodalmas.atlases import Atlas
from crossmodalmas.atomic import write_json
from crossmodalmas.data import LAYOUTS, Dataset, open_dataset
from crossmodalmas.errors import CancelledError, InputError
from crossmodalmas.evaluation import Protocol, Task, case_name, plan
from crossmodalmas.evaluation_report import (done_keys, format_number, read_rows, row_key, write_boxplots,
                                             write_rows, write_summary)
from crossmodalmas.options import SegmentOptions
from crossmodalmas.volume import write_labels

EXIT_OK, EXIT_CANCELLED = 0, 3
SETTINGS_FILE = "evaluation.json"


def add_evaluate_parser(commands):
    """Register ``evaluate`` on ``commands`` (argparse sub-parsers); returns its parser.

    The caller adds the segmentation flags shared with ``segment`` (fusion, selection, device,
    model, refinement, similarity model, progress lines).
    """
    p = commands.add_parser("evaluate", help="segment a labelled dataset under a protocol and score it")
    p.add_argument("--dataset", required=True, type=Path, metavar="PATH",
                   help="a dataset CSV, a Decathlon folder (dataset.json), an MM-WHS folder or a folder of "
                        "X.nii.gz + X_seg.nii.gz")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="the dataset's layout (default: detected)")
    p.add_argument("--label-map", metavar="JSON|NAME",
                   help='remap label values: a JSON file like {"205": 1, "500": 2} (values not listed become '
                        'background) or a bundled map (mmwhs)')
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="results folder (new, empty, or a previous evaluation's to go on with it)")
    p.add_argument("--protocol", required=True, choices=[m.value for m in Protocol],
                   help="cross-modality: each modality's cases segment every other modality's; kfold: "
                        "K folds of subjects, the other folds are the atlases; split: test cases with the "
                        "train cases as atlases")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="folds of kfold (default 5)")
    p.add_argument("--atlases-per-target", type=int, metavar="N",
                   help="at most N atlases per target (a seeded draw; default all)")
    p.add_argument("--seed", type=int, default=0, help="seeds the folds and the atlas draw (default 0)")
    p.set_defaults(roi=None)  # one region cannot fit every target: each finds its own
    return p


def _options(args) -> SegmentOptions:
    from crossmodalmas.segment_command import options_from_args  # torch: imported when a run starts

    return options_from_args(args)


def _settings(args, dataset: Dataset, options: SegmentOptions) -> dict:
    """What the results depend on (the device is left out: it changes the speed, not the result)."""
    protocol = {"seed": args.seed, "atlases_per_target": args.atlases_per_target}
    if args.protocol == Protocol.KFOLD.value:
        protocol["folds"] = args.folds
    label_map = dataset.label_map
    segment_options = {k: v for k, v in options.to_dict().items() if k != "device"}
    return {"dataset": str(dataset.root), "layout": dataset.layout,
            "label_map": None if label_map is None else {str(k): v for k, v in sorted(label_map.items())},
            "segment_options": segment_options, "protocols": {args.protocol: protocol}}


def _differences(old: dict, new: dict, protocol: str) -> list[str]:
    keys = [k for k in ("dataset", "layout", "label_map", "segment_options") if old.get(k) != new[k]]
    recorded = old.get("protocols", {}).get(protocol)
    if recorded is not None and recorded != new["protocols"][protocol]:
        keys.append(f"{protocol} settings")
    return keys


def _prepare_out(out: Path, settings: dict, protocol: str) -> None:
    """Create ``out`` (and ``out/cases``), or check that it holds an evaluation of these settings.

    Raises:
        InputError: ``out`` is a file, holds other files, or an evaluation with other settings.
    """
    record = out / SETTINGS_FILE
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; give a folder")
    if record.is_file():
        try:
            old = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"--out {out}: {SETTINGS_FILE} cannot be read ({error})") from error
        different = _differences(old, settings, protocol)
        if different:
            raise InputError(f"--out {out}: holds an evaluation with other {', '.join(different)}; "
                             "use another folder")
        settings["protocols"] = {**old.get("protocols", {}), **settings["protocols"]}
    elif out.is_dir() and any(out.iterdir()):
        raise InputError(f"--out {out}: folder holds other files; give a new or empty folder")
    try:
        (out / "cases").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {out}: cannot create the folder ({error.strerror})") from error
    write_json(settings, record)


def _rows(task: Task, scores, atlases: int, seconds: float) -> list[dict[str, str]]:
    base = {"protocol": task.protocol, "group": task.group, "target_subject": task.target.subject,
            "target_modality": task.target.modality, "atlases": str(atlases), "seconds": f"{seconds:.2f}"}
    return [{**base, "label": score.label, "dice": format_number(score.dice),
             "hd95_mm": format_number(score.hd95_mm), "arvd": format_number(score.arvd),
             "dice_apex": format_number(score.dice_thirds[0]), "dice_mid": format_number(score.dice_thirds[1]),
             "dice_base": format_number(score.dice_thirds[2])} for score in scores]


def _task_key(task: Task) -> tuple[str, str, str, str]:
    return task.protocol, task.group, task.target.subject, task.target.modality


def evaluate_task(dataset: Dataset, task: Task, options: SegmentOptions, cases: Path,
                  progress=None, cancel=None) -> list[dict[str, str]]:
    """Segment one target with its atlases, write its segmentation, and score it.

    Args:
        dataset: where the cases are read from.
        task: the target and its atlases.
        options: the segmentation options.
        cases: folder of the segmentations (``<target-id>.nii.gz``).
        progress, cancel: as :func:`crossmodalmas.pipeline.segment` takes them.

    Returns:
        The target's ``metrics.csv`` rows (one per label, then the whole organ).

    Raises:
        InputError: a case cannot be read or is invalid (the message names its file).
        CancelledError: ``cancel()`` returned True.
    """
    from crossmodalmas.evaluation_metrics import evaluate_labels  # torch: imported when a run starts
    from crossmodalmas.pipeline import segment

    target, truth = dataset.load(task.target)
    atlases = [Atlas(case_name(case), *dataset.load(case)) for case in task.atlases]
    started = time.perf_counter()
    result = segment(target, atlases, options, progress=progress, cancel=cancel)
    seconds = time.perf_counter() - started
    write_labels(result.labels, cases / f"{task.target_id}.nii.gz")
    return _rows(task, evaluate_labels(result.labels, truth), len(atlases), seconds)


class _Progress:
    """A tqdm bar over the targets, or ``PROGRESS`` lines where ``lines`` is set."""

    def __init__(self, total: int, done: int, lines: bool):
        from tqdm import tqdm

        from crossmodalmas.progress import progress_lines

        self.total, self.done = max(total, 1), done
        self._lines = progress_lines() if lines else None
        self._bar = None if lines else tqdm(total=total, initial=done, file=sys.stderr, unit="target")
        self.name = ""

    def start(self, name: str) -> None:
        self.name = name
        if self._bar is not None:
            self._bar.set_description_str(name)
        self.step(0.0, "loading")

    def step(self, fraction: float, message: str) -> None:
        if self._lines is not None:
            self._lines((self.done + fraction) / self.total, f"{self.name}: {message}")
        else:
            self._bar.set_postfix_str(message, refresh=True)

    def finish(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _run_tasks(dataset, todo: list[Task], rows: list, out: Path, options, progress: _Progress,
               cancel) -> list[str]:
    """Evaluate ``todo`` in order, saving ``metrics.csv`` after each.

    A target the pipeline refuses (InputError) is reported on stderr and left out, so one odd
    case does not stop a long run; a re-run tries it again.

    Returns:
        The failed targets' ids.
    """
    failed = []
    for task in todo:
        if cancel():
            raise CancelledError("cancelled between targets")
        progress.start(task.target_id)
        try:
            new = evaluate_task(dataset, task, options, out / "cases", progress.step, cancel)
        except InputError as error:
            print(f"crossmodalmas: target {task.target_id} failed: {error}", file=sys.stderr)
            failed.append(task.target_id)
            continue
        key = _task_key(task)
        rows[:] = [row for row in rows if row_key(row) != key] + new
        write_rows(out / "metrics.csv", rows)
        progress.finish()
    return failed


def run_evaluate(args, cancel) -> int:
    """Run the ``evaluate`` command; returns the exit code.

    Exit 3 when cancelled (SIGINT/SIGTERM through ``cancel``): the targets done are kept in
    ``metrics.csv`` and their segmentations in ``cases/``; a re-run goes on from there.

    Raises:
        InputError: a bad dataset, protocol or results folder (before any work), or targets
            that failed (after the others are done and summarised).
    """
    dataset = open_dataset(args.dataset, args.layout, args.label_map)
    dataset.validate()
    tasks = plan(dataset, args.protocol, args.folds, args.atlases_per_target, args.seed)
    options = _options(args)
    _prepare_out(args.out, _settings(args, dataset, options), args.protocol)
    metrics = args.out / "metrics.csv"
    rows = read_rows(metrics)
    done = done_keys(rows)
    todo = [task for task in tasks if _task_key(task) not in done]
    progress = _Progress(len(tasks), len(tasks) - len(todo), args.progress_lines)
    try:
        failed = _run_tasks(dataset, todo, rows, args.out, options, progress, cancel)
    except CancelledError:
        progress.close()  # before the message, which the bar would overwrite
        print(f"crossmodalmas: cancelled; {progress.done} of {len(tasks)} targets done, kept in {metrics} "
              "(run again to go on)", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        progress.close()
    if rows:
        write_summary(rows, args.out / "summary.md", f"Evaluation of {dataset.root}")
        write_boxplots(rows, args.out / "boxplots.png")
    if failed:
        raise InputError(f"--dataset {args.dataset}: {len(failed)} of {len(tasks)} targets failed "
                         f"({', '.join(failed)}; see above); a re-run tries them again")
    print(f"evaluated {len(todo)} targets, skipped {len(tasks) - len(todo)} already in {metrics}; "
          f"summary: {args.out / 'summary.md'}")
    return EXIT_OK
