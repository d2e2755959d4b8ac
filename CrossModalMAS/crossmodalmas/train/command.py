"""``crossmodalmas train-registration --config FILE --out DIR [--resume]``."""

from __future__ import annotations

import sys
from pathlib import Path

from crossmodalmas.train.config import TrainRegistrationConfig

EXIT_OK, EXIT_STOPPED = 0, 3


def add_train_registration_parser(commands) -> None:
    p = commands.add_parser("train-registration",
                            help="train the registration network on synthetic labelled pairs")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="JSON of TrainRegistrationConfig fields (needed for a new run)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the run folder")
    p.add_argument("--resume", action="store_true", help="go on from DIR/checkpoint.pt")
    p.add_argument("--steps", type=int, metavar="N",
                   help="override the number of steps (a new run, or extend a resumed one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train_registration(args, cancel) -> int:
    """Train; on SIGINT/SIGTERM checkpoint and exit 3 (``--resume`` goes on from there)."""
    from crossmodalmas.train.registration import train_registration

    config = TrainRegistrationConfig.from_json(args.config) if args.config else None
    result = train_registration(config, args.out, resume=args.resume, show_progress=not args.quiet,
                                should_stop=cancel, steps=args.steps)
    if cancel():
        print(f"crossmodalmas: training stopped; checkpoint at {result}; --resume goes on",
              file=sys.stderr)
        return EXIT_STOPPED
    print(result)
    return EXIT_OK
