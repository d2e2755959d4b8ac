"""Fine-tuning: a run that starts from a trained model's weights (``--init NAME|PATH``, config ``init``).

The model is found as ``--model`` finds one (:func:`crossmodalmas.models.find_model`: a
bundled model's name, a model entry ``.json``, a ``models.json`` or its folder) and its weights
are loaded sha256-checked with ``weights_only=True`` (:func:`crossmodalmas.models.load_checkpoint`).
Its architecture and arguments must be the run's: fine-tuning changes weights, never shapes.
Without ``--config`` a run takes the model's own training recipe (its ``model.json`` keeps
it), so "the same training, on my data" needs no config file.
"""

from __future__ import annotations

import json
from typing import Optional

from crossmodalmas.errors import InputError
from crossmodalmas.models import ModelEntry, find_model, load_checkpoint

FINE_TUNED_SUFFIX = "-finetuned"


def init_entry(config, task: str, architecture: str) -> Optional[ModelEntry]:
    """The model ``config.init`` names (None when it names none), checked against the run.

    Args:
        config: the run's config (``init``, ``net``).
        task: "registration" or "similarity".
        architecture: the run's network.

    Raises:
        InputError: no such model, or one whose architecture or arguments differ from the run's
            (``--init X: model architecture ... differs from the run's config net ...``).
    """
    if not config.init:
        return None
    entry = find_model(config.init, task, flag="--init")
    try:
        arguments = type(config.net)(**entry.arguments).to_dict()
    except (TypeError, ValueError):
        arguments = entry.arguments  # arguments this version cannot build: they differ
    ours = config.net.to_dict()
    if entry.architecture != architecture or arguments != ours:
        raise InputError(f"--init {config.init}: model architecture {entry.architecture} "
                         f"{json.dumps(entry.arguments, sort_keys=True)} differs from the run's config net "
                         f"{architecture} {json.dumps(ours, sort_keys=True)}; fine-tuning needs the same network")
    return entry


def load_init(net, entry: ModelEntry, device) -> None:
    """Load ``entry``'s verified weights into ``net`` (strictly: every tensor, same shapes).

    Raises:
        InputError: missing, damaged or unsafe weights (:func:`crossmodalmas.models.load_checkpoint`),
            or weights that do not fit ``net``.
    """
    state = load_checkpoint(entry, device=device)["state_dict"]
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:200]
        raise InputError(f"--init {entry.name}: its weights do not fit the run's network ({reason})") from error


def init_recipe(init: str, task: str) -> dict:
    """A new run's config values from ``init``'s saved training recipe, fine-tuning it.

    ``init`` is set to ``init`` and ``name`` to the model's name plus ``-finetuned`` (so that
    the result never takes the original's place in a ``models.json``); every other value is
    the original run's, to be overridden where the new run differs.

    Raises:
        InputError: no such model, or an entry without a recipe.
    """
    entry = find_model(init, task, flag="--init")
    recipe = entry.training.get("recipe") if isinstance(entry.training, dict) else None
    if not isinstance(recipe, dict):
        raise InputError(f"--init {init}: model {entry.name!r} keeps no training recipe; give --config")
    return {**recipe, "init": init, "name": f"{recipe.get('name', entry.name)}{FINE_TUNED_SUFFIX}"}
