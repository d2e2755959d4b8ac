"""A training run's folder: a new run never overwrites one, a resume reads the saved config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from crossmodalmas.errors import InputError
from crossmodalmas.train.checkpoint import CHECKPOINT_NAME


def _same_recipe(a, b) -> bool:
    """Equal apart from the number of steps (which a resume may extend)."""
    return {**a.to_dict(), "steps": 0} == {**b.to_dict(), "steps": 0}


def prepare_folder(config_type, config, out: Path, resume: bool, steps: Optional[int], command: str):
    """The run's config (the given one for a new run, the saved one for ``--resume``), with
    ``steps`` overriding its length, saved as ``out/config.json``.

    Args:
        config_type: the config's dataclass (a :class:`~crossmodalmas.train.config.JsonConfig`).
        config: the given config, or None (only with ``resume``).
        out: the run folder.
        resume: go on with the run in ``out``.
        steps: a new length for the run, or None.
        command: the command's name, for messages.

    Raises:
        InputError: a resume without a run, a resume with a different recipe, a new run
            without a config or into a folder that already holds one.
    """
    saved = out / "config.json"
    if resume:
        if not saved.is_file():
            raise InputError(f"--resume: {out} holds no training run (no config.json)")
        stored = config_type.from_json(saved)
        if config is not None and not _same_recipe(config, stored):
            raise InputError(f"--resume: --config differs from the run's {saved}; resume "
                             "without --config, or start a new run in another folder")
        config = stored
    elif config is None:
        raise InputError(f"{command}: --config is needed for a new run")
    elif (out / CHECKPOINT_NAME).exists() or saved.exists():
        raise InputError(f"--out {out} already holds a training run; pass --resume to go on "
                         "with it, or choose another folder (nothing was overwritten)")
    if steps is not None:
        config.steps = steps
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(config.to_dict(), indent=2))
    return config
