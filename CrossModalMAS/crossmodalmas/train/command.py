"""``crossmodalmas train-registration|train-similarity [--config FILE] [--init NAME|PATH]
[--set KEY=VALUE ...] --out DIR [--resume] [--steps N]``.

Under ``torchrun`` every process runs this command with the same arguments
(:mod:`crossmodalmas.train.distributed`); rank 0 alone prints the result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from crossmodalmas.errors import InputError

EXIT_OK, EXIT_STOPPED = 0, 3

_HELP = {
    "train-registration": ("train the registration network on synthetic and/or real labelled pairs",
                           "TrainRegistrationConfig", "registration"),
    "train-similarity": ("train the similarity network (seed 000 Algorithm 1) on synthetic and/or real pairs "
                         "warped by a registration network", "TrainSimilarityConfig", "similarity"),
}


def add_train_parsers(commands) -> None:
    """The two training commands; both take the same flags."""
    for command, (description, config, _) in _HELP.items():
        p = commands.add_parser(command, help=description)
        p.add_argument("--config", type=Path, metavar="FILE",
                       help=f"JSON of {config} fields (a new run needs it, or --init)")
        p.add_argument("--init", metavar="NAME|PATH",
                       help="fine-tune: start from this model's weights (a bundled model's name or a model entry "
                            ".json); without --config the run takes the model's own training recipe")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="set a config field (VALUE as JSON, else as text; 'synth.noise_std=0.1' for a nested "
                            "one), e.g. --set dataset=/data/mmwhs --set real_fraction=1 (repeatable)")
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


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """``values`` with each ``KEY=VALUE`` of ``overrides`` set (VALUE parsed as JSON where it
    is JSON, else kept as text; ``a.b=VALUE`` sets key ``b`` of the object at ``a``).

    Raises:
        InputError: an override without ``=``, or a dotted key whose parent is not an object.
    """
    out = json.loads(json.dumps(values))  # a deep copy
    for text in overrides:
        key, equals, raw = text.partition("=")
        if not equals or not key.strip():
            raise InputError(f"--set {text}: expected KEY=VALUE, e.g. --set steps=500")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, name = key.strip().split(".")
        target = out
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise InputError(f"--set {text}: '{parent}' is not an object of the config")
        target[name] = value
    return out


def _config(args, config_type):
    """The config a run is asked for: --config, else --init's recipe, with --set and --init
    applied; None where the run's saved config is to be used (--resume)."""
    if args.config is None and args.init is None:
        if args.overrides:
            raise InputError("--set: needs --config or --init (a resumed run keeps its config.json; "
                             "--steps extends it)")
        return None
    if args.config is not None:
        values, origin = config_type.from_json(args.config).to_dict(), f"--config {args.config}"
    else:
        from crossmodalmas.train.fine_tune import init_recipe

        values, origin = init_recipe(args.init, _HELP[args.command][2]), f"--init {args.init}"
    if args.init is not None:
        values["init"] = args.init
    if args.overrides:
        origin = f"{origin} with --set"
    return config_type.from_dict(apply_overrides(values, args.overrides), origin=origin)


def run_train(args, cancel) -> int:
    """Train; on SIGINT/SIGTERM checkpoint and exit 3 (``--resume`` goes on from there)."""
    from crossmodalmas.train.checkpoint import CHECKPOINT_NAME
    from crossmodalmas.train.distributed import from_environment

    config_type, train = _trainer(args.command)
    result = train(_config(args, config_type), args.out, resume=args.resume, show_progress=not args.quiet,
                   should_stop=cancel, steps=args.steps)
    main = from_environment().is_main
    if result.name == CHECKPOINT_NAME:  # stopped before the last step (a signal here or on another rank)
        if main:
            print(f"crossmodalmas: training stopped; checkpoint at {result}; --resume goes on", file=sys.stderr)
        return EXIT_STOPPED
    if main:
        print(result)
    return EXIT_OK
