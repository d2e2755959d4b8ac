"""``crossmodalmas train-registration|train-similarity --config FILE --out DIR [--resume]``."""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_OK, EXIT_STOPPED = 0, 3

_HELP = {
    "train-registration": ("train the registration network on synthetic labelled pairs",
                           "TrainRegistrationConfig"),
    "train-similarity": ("train the similarity network (seed 000 Algorithm 1) on synthetic pairs "
                         "warped by a registration network", "TrainSimilarityConfig"),
}


def add_train_parsers(commands) -> None:
    """The two training commands; both take the same flags."""
    for command, (description, config) in _HELP.items():
        p = commands.add_parser(command, help=description)
        p.add_argument("--config", type=Path, metavar="FILE",
                       help=f"JSON of {config} fields (needed for a new run)")
        p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the run folder")
        p.add_argument("--resume", action="store_true", help="go on from DIR/checkpoint.pt")
        p.add_argument("--steps", type=int, metavar="N",
                       help="override the number of steps (a new run, or extend a resumed one)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")


def _trainer(command: str):
    if command == "train-registration":
        from crossmodalmas.train.config import TrainRegistrationConfig
        from crossmodalmas.train.registration import train_registration
        return TrainRegistrationConfig, train_registration
    from crossmodalmas.train.similarity import train_similarity
    from crossmodalmas.train.similarity_config import TrainSimilarityConfig
    return TrainSimilarityConfig, train_similarity


def run_train(args, cancel) -> int:
    """Train; on SIGINT/SIGTERM checkpoint and exit 3 (``--resume`` goes on from there)."""
    config_type, train = _trainer(args.command)
    config = config_type.from_json(args.config) if args.config else None
    result = train(config, args.out, resume=args.resume, show_progress=not args.quiet,
                   should_stop=cancel, steps=args.steps)
    if cancel():
        print(f"crossmodalmas: training stopped; checkpoint at {result}; --resume goes on",
              file=sys.stderr)
        return EXIT_STOPPED
    print(result)
    return EXIT_OK
