"""The command line (a stable contract: the Slicer module, scripts and benchmarks call it).

Exit codes: 0 done; 2 bad input or usage (one line naming the input); 3 cancelled
(SIGINT/SIGTERM, partial outputs removed); 1 anything else.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from crossmodalmas import __version__
from crossmodalmas.batch_command import add_batch_parser
from crossmodalmas.errors import CancelledError, InputError
from crossmodalmas.evaluate_command import add_evaluate_parser
from crossmodalmas.models_command import add_models_parser
from crossmodalmas.options import DEFAULT_REFINE, DeviceChoice, FusionMethod
from crossmodalmas.train.command import add_train_parsers

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 3
def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_segment_parser(commands) -> None:
    p = commands.add_parser("segment", help="segment a target image with labelled atlases")
    p.add_argument("--target", required=True, type=Path, help="image to segment (file or DICOM folder)")
    p.add_argument("--atlas", nargs=2, action="append", default=[], metavar=("IMG", "LABELS"), type=Path,
                   help="an atlas image and its label map (repeatable)")
    p.add_argument("--atlases", type=Path, metavar="CSV", help="CSV with 'image' and 'labels' columns")
    p.add_argument("--atlas-dir", type=Path, metavar="DIR", help="folder of X.nii.gz + X_seg.nii.gz pairs")
    p.add_argument("--output", required=True, type=Path, help="segmentation file, on the target's grid")
    p.add_argument("--roi", nargs=6, type=float, metavar=("R0", "A0", "S0", "R1", "A1", "S1"),
                   help="working region: two RAS corners in mm")
    p.add_argument("--save-warped", type=Path, metavar="DIR", help="write warped atlases, weights, uncertainty, and the result that re-fusion reads")
    p.add_argument("--report", type=Path, metavar="FILE.json", help="write timings, device, per-atlas QC")
    add_segmentation_flags(p)


def add_segmentation_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a segmentation run shared by ``segment``, ``segment-batch`` and ``evaluate``
    (what :func:`crossmodalmas.segment_command.options_from_args` reads, and --progress-lines)."""
    p.add_argument("--fusion", choices=[m.value for m in FusionMethod],
                   help="label fusion: mv majority vote, nlwv non-local weighted vote, plf the similarity "
                        "network's patch-based fusion, loa / loa-local label-overlap weights (global / "
                        "in 15-voxel windows); default plf where a similarity network is available, else nlwv")
    p.add_argument("--select", type=_positive_int, metavar="K", help="keep the K most similar atlases")
    p.add_argument("--device", choices=[d.value for d in DeviceChoice], default="auto")
    p.add_argument("--model", metavar="NAME|PATH",
                   help="registration network: a bundled model's name (`crossmodalmas models list`), a "
                        "model entry .json or a folder with models.json; 'instance-opt' for none "
                        "(default: the bundled default)")
    p.add_argument("--refine", type=_non_negative_int, metavar="N",
                   help="instance-optimisation iterations per level, started from the network's "
                        f"fields (0: the network alone; default {DEFAULT_REFINE['network']}); with "
                        f"--model instance-opt, from zero (default {DEFAULT_REFINE['instance-opt']})")
    p.add_argument("--similarity-model", metavar="NAME|PATH",
                   help="similarity network for --fusion plf (default: the bundled default)")
    p.add_argument("--progress-lines", action="store_true", help="print 'PROGRESS <0..1> <message>' lines on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossmodalmas", description="Cross-modality multi-atlas segmentation.")
    parser.add_argument("--version", action="version", version=f"crossmodalmas {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_segment_parser(commands)
    add_segmentation_flags(add_batch_parser(commands))
    demo = commands.add_parser("demo", help="make a phantom cross-modality case and segment it")
    demo.add_argument("--out", type=Path, help="folder for the case and results (default: a new temporary folder)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--atlases", type=_positive_int, default=4, help="number of phantom atlases")
    add_segmentation_flags(add_evaluate_parser(commands))
    add_train_parsers(commands)
    add_models_parser(commands)
    return parser


class _Cancellation:
    """Turns SIGINT/SIGTERM into a flag that the pipeline polls."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.requested


def _run(args) -> int:
    if args.command == "demo":
        from crossmodalmas.demo import run_demo
        return run_demo(args.out, seed=args.seed, n_atlases=args.atlases)
    if args.command == "models":
        from crossmodalmas.models_command import run_models
        return run_models(args)
    with _Cancellation() as cancel:
        if args.command in ("train-registration", "train-similarity"):
            from crossmodalmas.train.command import run_train
            return run_train(args, cancel)
        if args.command == "evaluate":
            from crossmodalmas.evaluate_command import run_evaluate
            return run_evaluate(args, cancel)
        from crossmodalmas.batch_command import run_segment_batch
        from crossmodalmas.segment_command import run_segment
        from crossmodalmas.progress import progress_bar, progress_lines
        run = run_segment_batch if args.command == "segment-batch" else run_segment
        if args.progress_lines:
            return run(args, progress_lines(), cancel)
        with progress_bar() as report:
            return run(args, report, cancel)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except InputError as error:
        print(f"crossmodalmas: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CancelledError:
        print("crossmodalmas: cancelled; no output written", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as error:  # the last resort: one line, exit 1, never a torch traceback
        print(f"crossmodalmas: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
