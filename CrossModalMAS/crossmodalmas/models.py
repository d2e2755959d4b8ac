"""The bundled-model registry: the ``models.json`` manifest and safe loading of weights.

Bundled models live in ``CrossModalMAS/Resources/Models/`` beside a ``models.json``::

    {"format": 1, "models": [ENTRY, ...]}

where each ENTRY is a :class:`ModelEntry` in JSON (see :meth:`ModelEntry.to_dict`), its
``file`` relative to the manifest's folder. A training run writes one entry on its own
(:func:`write_entry`: the same schema, ``file`` relative to that JSON file), so a user's own
model drops in: ``--model`` takes a bundled model's name, a path to such an entry file, or a
path to a folder that holds a ``models.json``.

Loading never runs code from a file: the sha256 of the weights is checked first
(:func:`verify`), then the file is read with ``torch.load(..., weights_only=True)``, which
refuses any pickled object other than tensors and plain containers. A checkpoint holds
``{"config": dict, "state_dict": dict, "version": str}`` and loads with ``strict=True``.

torch is imported only by the functions that load weights, so listing and verifying models
does not need it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path

from crossmodalmas.atomic import write_json
from crossmodalmas.errors import InputError

MANIFEST_NAME = "models.json"
MANIFEST_FORMAT = 1
CHECKPOINT_KEYS = ("config", "state_dict", "version")
TRAINING_KEYS = ("recipe", "data", "steps", "seconds", "machine")
WORKING_GRID_KEYS = ("spacing_mm", "max_voxels")
REQUIRED_KEYS = ("name", "file", "sha256", "task", "architecture", "arguments", "working_grid", "normalisation",
                 "training")  # the others: accuracy {}, inference_seconds {}, default false, description ""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class Task(str, Enum):
    """What a model does: the consistent registration network or the similarity network."""

    REGISTRATION = "registration"
    SIMILARITY = "similarity"


def bundled_models_dir() -> Path:
    """The folder of the bundled models: ``CrossModalMAS/Resources/Models``."""
    return Path(__file__).resolve().parents[1] / "Resources" / "Models"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_task(value, where: str) -> Task:
    try:
        return Task(value)
    except ValueError:
        raise InputError(f"{where}: 'task' must be one of {[t.value for t in Task]}, got {value!r}") from None


@dataclass(frozen=True)
class ModelEntry:
    """One model of a manifest: where its weights are and how to build, feed and judge it.

    Attributes:
        name: unique name, letters, digits, ``.``, ``_``, ``-`` (what ``--model`` takes).
        file: the weights file, relative to the manifest's folder (or to the entry's own JSON).
        sha256: lower-case hex sha256 of the weights file.
        task: :class:`Task` (``"registration"`` or ``"similarity"``).
        architecture: name that ``crossmodalmas.nets.build_network`` knows.
        arguments: keyword arguments of the architecture, passed to the builder.
        working_grid: ``{"spacing_mm": float > 0, "max_voxels": int > 0}``: the isotropic grid
            the network runs on and the most voxels one pass may take.
        normalisation: name of the intensity normalisation the network expects.
        training: ``{"recipe", "data", "steps", "seconds", "machine"}`` (values may be null).
        accuracy: measured numbers, free-form (e.g. ``{"dice_mmwhs_ct_from_mr": 0.81}``).
        inference_seconds: measured seconds per pair, e.g. ``{"cpu": 1.2, "gpu": None}``.
        default: whether this is the model used for its task when none is named (at most one
            per task and manifest).
        description: one line for people.
        folder: where ``file`` is relative to; set by the readers, never written to JSON.
    """

    name: str
    file: str
    sha256: str
    task: Task
    architecture: str
    arguments: dict
    working_grid: dict
    normalisation: str
    training: dict
    accuracy: dict = field(default_factory=dict)
    inference_seconds: dict = field(default_factory=dict)
    default: bool = False
    description: str = ""
    folder: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        where = f"model {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name) or self.name.endswith(".json"):
            raise InputError(f"model name {self.name!r}: must be letters, digits, '.', '_' or '-' "
                             "(not starting with a punctuation mark, not ending in '.json')")
        object.__setattr__(self, "task", _parse_task(self.task, where))
        if not isinstance(self.file, str) or not self.file or Path(self.file).is_absolute():
            raise InputError(f"{where}: 'file' must be a path relative to the manifest, got {self.file!r}")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise InputError(f"{where}: 'sha256' must be 64 lower-case hex digits, got {self.sha256!r}")
        for key in ("architecture", "normalisation"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise InputError(f"{where}: {key!r} must be a non-empty string, got {getattr(self, key)!r}")
        for key in ("arguments", "working_grid", "training", "accuracy", "inference_seconds"):
            if not isinstance(getattr(self, key), dict):
                raise InputError(f"{where}: {key!r} must be an object, got {getattr(self, key)!r}")
        self._check_details(where)
        if self.folder is not None:
            object.__setattr__(self, "folder", Path(self.folder))

    def _check_details(self, where: str) -> None:
        grid = self.working_grid
        if sorted(grid) != sorted(WORKING_GRID_KEYS):
            raise InputError(f"{where}: 'working_grid' must have exactly the keys {list(WORKING_GRID_KEYS)}, "
                             f"got {sorted(grid)}")
        spacing, voxels = grid["spacing_mm"], grid["max_voxels"]
        if not _is_number(spacing) or spacing <= 0:
            raise InputError(f"{where}: working_grid 'spacing_mm' must be a positive number, got {spacing!r}")
        if not isinstance(voxels, int) or isinstance(voxels, bool) or voxels < 1:
            raise InputError(f"{where}: working_grid 'max_voxels' must be a positive integer, got {voxels!r}")
        missing = [key for key in TRAINING_KEYS if key not in self.training]
        if missing:
            raise InputError(f"{where}: 'training' lacks {missing} (use null where unknown)")
        for device, seconds in self.inference_seconds.items():
            if seconds is not None and (not _is_number(seconds) or seconds < 0):
                raise InputError(f"{where}: inference_seconds {device!r} must be a number >= 0 or null, "
                                 f"got {seconds!r}")
        if not isinstance(self.default, bool):
            raise InputError(f"{where}: 'default' must be true or false, got {self.default!r}")
        if not isinstance(self.description, str):
            raise InputError(f"{where}: 'description' must be a string, got {self.description!r}")

    @classmethod
    def from_dict(cls, data: dict, folder: Path | None = None, where: str = "model entry") -> "ModelEntry":
        """An entry from its JSON object.

        Args:
            data: the entry's JSON object.
            folder: the folder ``file`` is relative to.
            where: names the source in error messages (a file, ``models.json entry 2``).

        Raises:
            InputError: not an object, an unknown or missing key, or a value of the wrong kind.
        """
        if not isinstance(data, dict):
            raise InputError(f"{where}: a model entry must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in fields(cls) if f.name != "folder"]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"{where}: unknown key(s) {unknown} in model entry (known: {known})")
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise InputError(f"{where}: model entry lacks key(s) {missing}")
        return cls(**data, folder=folder)

    def to_dict(self) -> dict:
        """The entry as a JSON-ready object (``folder`` left out)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "folder"}
        data["task"] = self.task.value
        return json.loads(json.dumps(data))  # deep copy, plain JSON types only

    def path(self, folder: Path | None = None) -> Path:
        """The weights file: ``file`` under ``folder``, else under the entry's own folder,
        else under the bundled models folder."""
        base = folder if folder is not None else self.folder if self.folder is not None else bundled_models_dir()
        return Path(base) / self.file


# --- reading and writing manifests -------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot be read ({error})") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: is not valid JSON ({error})") from error


def check_entries(entries: list[ModelEntry], where: str) -> None:
    """Refuse duplicate names and more than one default per task.

    Raises:
        InputError: naming ``where`` and the clashing entries.
    """
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise InputError(f"{where}: model name {entry.name!r} appears more than once")
        seen.add(entry.name)
    for task in Task:
        defaults = [e.name for e in entries if e.task == task and e.default]
        if len(defaults) > 1:
            raise InputError(f"{where}: more than one default {task.value} model ({', '.join(defaults)}); "
                             "at most one per task")


def _entries_from_manifest(data, path: Path) -> list[ModelEntry]:
    if not isinstance(data, dict) or "models" not in data or "format" not in data:
        raise InputError(f"{path}: not a model manifest (expected {{\"format\": 1, \"models\": [...]}})")
    if data["format"] != MANIFEST_FORMAT:
        raise InputError(f"{path}: manifest format {data['format']!r} is not supported (this version reads "
                         f"format {MANIFEST_FORMAT})")
    unknown = sorted(set(data) - {"format", "models"})
    if unknown:
        raise InputError(f"{path}: unknown key(s) {unknown} in manifest (known: ['format', 'models'])")
    if not isinstance(data["models"], list):
        raise InputError(f"{path}: 'models' must be a list")
    entries = [ModelEntry.from_dict(item, path.parent, f"{path}: entry {index + 1}")
               for index, item in enumerate(data["models"])]
    check_entries(entries, str(path))
    return entries


def read_manifest(folder: Path | None = None) -> list[ModelEntry]:
    """The entries of ``folder / 'models.json'`` (default: the bundled models folder).

    Each entry's ``folder`` is set to ``folder``. The bundled folder without a manifest has no
    models (an empty list); a folder given explicitly must hold one.

    Raises:
        InputError: no manifest in a given folder; unreadable or invalid manifest; duplicate
            names; more than one default per task.
    """
    explicit = folder is not None
    folder = Path(folder) if explicit else bundled_models_dir()
    path = folder / MANIFEST_NAME
    if not path.is_file():
        if explicit:
            raise InputError(f"{folder}: no {MANIFEST_NAME} in this folder")
        return []
    return _entries_from_manifest(_read_json(path), path)


def read_entry(path: Path) -> ModelEntry:
    """The single entry written by a training run (``file`` relative to ``path``'s folder)."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, dict) and "models" in data and "format" in data:
        raise InputError(f"{path}: is a manifest, not a single model entry")
    return ModelEntry.from_dict(data, path.parent, str(path))


def write_entry(entry: ModelEntry, path: Path) -> None:
    """Write ``entry`` alone as JSON at ``path`` (what a training run leaves beside its weights;
    ``entry.file`` must then be relative to ``path``'s folder). Atomic: temp file + replace."""
    write_json(entry.to_dict(), path)


def add_to_manifest(entry: ModelEntry, folder: Path) -> None:
    """Add ``entry`` to ``folder / 'models.json'`` (created if absent), replacing an entry of
    the same name where it stands (a benchmark's updated figures keep the manifest's order),
    else at the end. The weights must already be in ``folder`` with the entry's sha256.

    Raises:
        InputError: weights missing or damaged (:func:`verify`); the result would have two
            defaults for one task; the existing manifest is invalid.
    """
    folder = Path(folder)
    verify(entry, folder)
    existing = read_manifest(folder) if (folder / MANIFEST_NAME).is_file() else []
    entries = [entry if e.name == entry.name else e for e in existing]
    if all(e.name != entry.name for e in existing):
        entries.append(entry)
    check_entries(entries, str(folder / MANIFEST_NAME))
    write_json({"format": MANIFEST_FORMAT, "models": [e.to_dict() for e in entries]}, folder / MANIFEST_NAME)


# --- finding a model ---------------------------------------------------------------------------

def _pick_in(entries: list[ModelEntry], task: Task, where: str) -> ModelEntry:
    """The default of ``task`` among ``entries``, else its only model."""
    of_task = [e for e in entries if e.task == task]
    defaults = [e for e in of_task if e.default]
    if defaults:
        return defaults[0]
    if len(of_task) == 1:
        return of_task[0]
    names = ", ".join(e.name for e in of_task) or "none"
    raise InputError(f"{where}: no default {task.value} model (available {task.value} models: {names})")


def _from_path(path: Path, task: Task) -> ModelEntry:
    if path.is_dir():
        return _pick_in(read_manifest(path), task, str(path))
    data = _read_json(path)
    if isinstance(data, dict) and "models" in data and "format" in data:
        return _pick_in(_entries_from_manifest(data, path), task, str(path))
    entry = ModelEntry.from_dict(data, path.parent, str(path))
    if entry.task != task:
        raise InputError(f"{path}: model {entry.name!r} is a {entry.task.value} model, "
                         f"a {task.value} model is needed here")
    return entry


def find_model(name_or_path: str | None, task: str | Task, folder: Path | None = None,
               flag: str = "--model") -> ModelEntry:
    """The model that ``--model`` names.

    Args:
        name_or_path: ``None`` for the default model of ``task``; a model's name in the
            manifest; a path to a single-entry JSON written by training, to a ``models.json``,
            or to a folder holding one (its default, or only, model of ``task``).
        task: ``"registration"`` or ``"similarity"``.
        folder: the manifest folder (default: the bundled models).
        flag: the option that named the model, for messages.

    Returns:
        The entry, its ``folder`` set to where its ``file`` is relative to.

    Raises:
        InputError: unknown name (the message lists the available names), a path that does not
            exist, a model of another task, no default model for the task.
    """
    task = _parse_task(task, "find_model()")
    where = str(folder) if folder is not None else "bundled models"
    entries = read_manifest(folder)
    if name_or_path is None:
        return _pick_in(entries, task, where)
    for entry in entries:
        if entry.name == name_or_path:
            if entry.task != task:
                raise InputError(f"{flag} {name_or_path}: is a {entry.task.value} model, "
                                 f"a {task.value} model is needed here")
            return entry
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _from_path(path, task)
    if os.sep in name_or_path or "/" in name_or_path or name_or_path.endswith(".json"):
        raise InputError(f"{flag} {name_or_path}: does not exist")
    names = ", ".join(e.name for e in entries if e.task == task) or "none"
    raise InputError(f"{flag} {name_or_path}: no such {task.value} model (available: {names}; "
                     "or give a path to a model entry .json or a folder with models.json)")


@dataclass
class LoadedModel:
    """A network loaded from its model entry (what the pipeline's engines hold)."""

    entry: ModelEntry
    net: object  # torch.nn.Module; torch is imported lazily by this module

    @property
    def name(self) -> str:
        return self.entry.name


# --- checking and loading weights -------------------------------------------------------------

def sha256_of(path: Path) -> str:
    """Lower-case hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(entry: ModelEntry, folder: Path | None = None) -> None:
    """Check that the weights file exists and has the entry's sha256.

    Args:
        entry: the model.
        folder: where ``entry.file`` is relative to (default: ``entry.folder``, else the
            bundled models folder).

    Raises:
        InputError: ``model 'X': weights file F is missing`` or ``model 'X': sha256 mismatch
            for F: expected ..., got ...; the file is damaged or was replaced``.
    """
    path = entry.path(folder)
    if not path.is_file():
        raise InputError(f"model {entry.name!r}: weights file {path} is missing")
    try:
        actual = sha256_of(path)
    except OSError as error:
        raise InputError(f"model {entry.name!r}: weights file {path} cannot be read ({error.strerror})") from error
    if actual != entry.sha256:
        raise InputError(f"model {entry.name!r}: sha256 mismatch for {path}: expected {entry.sha256}, got {actual}; "
                         "the file is damaged or was replaced")


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_failure(entry: ModelEntry, path: Path, error: BaseException) -> InputError:
    """One line from torch's long load errors: a refused Python object, or an unreadable file."""
    text = " ".join(str(error).split())
    reason = text.split("WeightsUnpickler error:", 1)[-1].split(" Check the documentation of torch.load")[0].strip()
    if "Unsupported global" in reason:
        return InputError(f"model {entry.name!r}: {path} holds pickled Python objects other than tensors and "
                          f"plain containers ({reason.split(' was not an allowed global')[0]}); refused: only "
                          "plain weights are loaded (torch.load weights_only=True)")
    reason = reason or ("the file ends early" if isinstance(error, EOFError) else type(error).__name__)
    return InputError(f"model {entry.name!r}: {path} cannot be read as a torch checkpoint "
                      f"({reason if len(reason) <= 200 else reason[:197] + '...'})")


def load_checkpoint(entry: ModelEntry, folder: Path | None = None, device="cpu") -> dict:
    """Verify, then read the checkpoint with ``torch.load(..., weights_only=True)``.

    Args:
        entry: the model.
        folder: where ``entry.file`` is relative to (default as in :func:`verify`).
        device: ``map_location`` of the tensors (``'cpu'``, ``'cuda'``, a ``torch.device``).

    Returns:
        ``{"config": dict, "state_dict": dict, "version": str, ...}``.

    Raises:
        InputError: missing or damaged file; not a torch checkpoint; a pickled object other
            than tensors and plain containers; a checkpoint without config/state_dict/version.
    """
    import torch

    verify(entry, folder)
    path = entry.path(folder)
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as error:
        raise _load_failure(entry, path, error) from error
    if not isinstance(checkpoint, dict):
        raise InputError(f"model {entry.name!r}: {path} holds a {type(checkpoint).__name__}, not a checkpoint "
                         f"dict with keys {list(CHECKPOINT_KEYS)}")
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise InputError(f"model {entry.name!r}: checkpoint {path} lacks key(s) {missing} "
                         f"(expected {list(CHECKPOINT_KEYS)})")
    for key, kind in (("config", dict), ("state_dict", dict), ("version", str)):
        if not isinstance(checkpoint[key], kind):
            raise InputError(f"model {entry.name!r}: checkpoint {path}: {key!r} must be a {kind.__name__}, "
                             f"got {type(checkpoint[key]).__name__}")
    return checkpoint


def load_network(entry: ModelEntry, folder: Path | None = None, device="cpu"):
    """Build the entry's network, load its verified weights strictly, and put it in eval mode.

    Args:
        entry: the model.
        folder: where ``entry.file`` is relative to (default as in :func:`verify`).
        device: where the network goes.

    Returns:
        The ``torch.nn.Module`` on ``device``, in eval mode.

    Raises:
        InputError: anything :func:`load_checkpoint` raises; an architecture
            ``crossmodalmas.nets`` does not know; weights that do not fit the architecture
            (missing or unexpected keys, other shapes).
    """
    from crossmodalmas.nets import build_network

    checkpoint = load_checkpoint(entry, folder, device)
    try:
        network = build_network(entry.architecture, dict(entry.arguments))
    except (ValueError, TypeError) as error:
        raise InputError(f"model {entry.name!r}: cannot build architecture {entry.architecture!r} "
                         f"with arguments {entry.arguments}: {_one_line(error)}") from error
    try:
        network.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise InputError(f"model {entry.name!r}: weights in {entry.path(folder)} do not fit architecture "
                         f"{entry.architecture!r}: {_one_line(error)}") from error
    return network.eval().to(device)
