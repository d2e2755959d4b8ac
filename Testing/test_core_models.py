"""The model registry (``crossmodalmas.models``): manifest, lookup, sha256 checks, safe loading.

Every test builds its own manifest folder in ``tmp_path`` with a tiny checkpoint saved by
``torch.save``. The loader tests replace ``crossmodalmas.nets`` with a one-architecture stand-in
(``tiny-conv``: ``Conv3d(1, 1, 1)``) so they do not depend on the real networks.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from crossmodalmas.errors import InputError
from crossmodalmas.models import (ModelEntry, Task, add_to_manifest, find_model, load_checkpoint, load_network,
                                  read_entry, read_manifest, sha256_of, verify, write_entry)

TINY = "tiny-conv"


def tiny_state_dict() -> dict:
    torch.manual_seed(0)
    return torch.nn.Conv3d(1, 1, 1).state_dict()


def save_checkpoint(path: Path, state_dict=None, **overrides) -> Path:
    """``torch.save`` a ``{config, state_dict, version}`` checkpoint (``overrides`` replace or,
    given as None, drop keys)."""
    checkpoint = {"config": {"architecture": TINY}, "state_dict": tiny_state_dict() if state_dict is None
                  else state_dict, "version": "0.1.0"}
    checkpoint.update(overrides)
    checkpoint = {key: value for key, value in checkpoint.items() if value is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def entry_dict(name: str, file: str, sha: str, task: str = "registration", default: bool = False) -> dict:
    return {"name": name, "file": file, "sha256": sha, "task": task, "architecture": TINY, "arguments": {},
            "working_grid": {"spacing_mm": 2.0, "max_voxels": 128 ** 3}, "normalisation": "robust-minmax",
            "training": {"recipe": "synth-pairs", "data": "phantoms", "steps": 10, "seconds": 1.5, "machine": "cpu"},
            "accuracy": {"dice_phantom": 0.8}, "inference_seconds": {"cpu": 1.25, "gpu": None},
            "default": default, "description": f"test model {name}"}


def make_model(folder: Path, name: str, task: str = "registration", default: bool = False, **save) -> ModelEntry:
    """Save a tiny checkpoint ``folder / f'{name}.pt'`` and return its entry (not yet in a manifest)."""
    path = save_checkpoint(folder / f"{name}.pt", **save)
    return ModelEntry.from_dict(entry_dict(name, path.name, sha256_of(path), task, default), folder)


def write_manifest(folder: Path, entries: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.json").write_text(json.dumps({"format": 1, "models": entries}), encoding="utf-8")
    return folder


@pytest.fixture
def models_dir(tmp_path) -> Path:
    """A manifest with a default registration model, a second registration model and a similarity model."""
    folder = tmp_path / "models"
    for name, task, default in (("reg-a", "registration", True), ("reg-b", "registration", False),
                                ("sim-a", "similarity", True)):
        add_to_manifest(make_model(folder, name, task, default), folder)
    return folder


@pytest.fixture
def fake_nets(monkeypatch):
    """``crossmodalmas.nets`` replaced by a module whose ``build_network`` knows only ``tiny-conv``."""
    def build_network(architecture: str, arguments: dict) -> torch.nn.Module:
        if architecture != TINY:
            raise ValueError(f"build_network(): unknown architecture {architecture!r}")
        return torch.nn.Conv3d(1, 1, 1, **arguments)

    module = types.ModuleType("crossmodalmas.nets")
    module.build_network = build_network
    monkeypatch.setitem(sys.modules, "crossmodalmas.nets", module)
    return module


# --- the manifest ----------------------------------------------------------------------------

def test_manifest_round_trip(models_dir):
    entries = read_manifest(models_dir)
    assert [e.name for e in entries] == ["reg-a", "reg-b", "sim-a"]
    assert all(e.folder == models_dir for e in entries)
    assert entries[0].task is Task.REGISTRATION and entries[0].inference_seconds == {"cpu": 1.25, "gpu": None}
    data = json.loads((models_dir / "models.json").read_text())
    assert data["format"] == 1
    assert [ModelEntry.from_dict(d).to_dict() for d in data["models"]] == data["models"]
    assert data["models"][0] == entry_dict("reg-a", "reg-a.pt", entries[0].sha256, default=True)
    assert ModelEntry.from_dict(entries[1].to_dict(), models_dir) == entries[1]
    assert not list(models_dir.glob(".partial-*"))


def test_write_entry_and_read_it_back(models_dir, tmp_path):
    entry = read_manifest(models_dir)[1]
    write_entry(entry, models_dir / "reg-b.json")
    again = read_entry(models_dir / "reg-b.json")
    assert again == entry and again.folder == models_dir
    assert json.loads((models_dir / "reg-b.json").read_text()) == entry.to_dict()


def test_add_to_manifest_replaces_an_entry_of_the_same_name(models_dir):
    newer = make_model(models_dir, "reg-b", state_dict={"weight": torch.ones(1, 1, 1, 1, 1), "bias": torch.zeros(1)})
    add_to_manifest(newer, models_dir)
    entries = read_manifest(models_dir)
    assert [e.name for e in entries] == ["reg-a", "reg-b", "sim-a"]  # where it stood
    assert entries[1].sha256 == newer.sha256


def test_add_to_manifest_refuses_a_second_default_for_a_task(models_dir):
    second = make_model(models_dir, "reg-c", default=True)
    with pytest.raises(InputError, match=r"models\.json: more than one default registration model \(reg-a, reg-c\)"):
        add_to_manifest(second, models_dir)
    assert [e.name for e in read_manifest(models_dir)] == ["reg-a", "reg-b", "sim-a"]


def test_manifest_with_two_defaults_for_one_task_is_refused(tmp_path):
    sha = "0" * 64
    folder = write_manifest(tmp_path / "m", [entry_dict("a", "a.pt", sha, default=True),
                                             entry_dict("b", "b.pt", sha, default=True),
                                             entry_dict("s", "s.pt", sha, "similarity", default=True)])
    with pytest.raises(InputError, match=r"more than one default registration model \(a, b\); at most one per task"):
        read_manifest(folder)


def test_duplicate_names_are_refused(tmp_path):
    sha = "0" * 64
    folder = write_manifest(tmp_path / "m", [entry_dict("a", "a.pt", sha), entry_dict("a", "b.pt", sha)])
    with pytest.raises(InputError, match=r"model name 'a' appears more than once"):
        read_manifest(folder)


def test_unknown_key_in_an_entry_is_refused(tmp_path):
    data = entry_dict("a", "a.pt", "0" * 64) | {"weights_url": "http://example.org/a.pt"}
    folder = write_manifest(tmp_path / "m", [data])
    with pytest.raises(InputError, match=r"models\.json: entry 1: unknown key\(s\) \['weights_url'\] in model entry"):
        read_manifest(folder)


@pytest.mark.parametrize("key, value, message", [
    ("task", "segmentation", r"'task' must be one of \['registration', 'similarity'\], got 'segmentation'"),
    ("sha256", "ABC", r"'sha256' must be 64 lower-case hex digits, got 'ABC'"),
    ("file", "/abs/a.pt", r"'file' must be a path relative to the manifest, got '/abs/a.pt'"),
    ("working_grid", {"spacing_mm": 0, "max_voxels": 10}, r"working_grid 'spacing_mm' must be a positive number"),
    ("working_grid", {"spacing_mm": 2.0}, r"'working_grid' must have exactly the keys \['spacing_mm', 'max_voxels'\]"),
    ("training", {"recipe": "x"}, r"'training' lacks \['data', 'steps', 'seconds', 'machine'\]"),
    ("inference_seconds", {"cpu": "fast"}, r"inference_seconds 'cpu' must be a number >= 0 or null"),
    ("default", "yes", r"'default' must be true or false, got 'yes'"),
    ("name", "../evil", r"model name '\.\./evil': must be letters, digits"),
])
def test_bad_entry_values_are_refused(key, value, message):
    with pytest.raises(InputError, match=message):
        ModelEntry.from_dict(entry_dict("a", "a.pt", "0" * 64) | {key: value})


def test_entry_missing_a_required_key_is_refused():
    data = entry_dict("a", "a.pt", "0" * 64)
    del data["sha256"], data["normalisation"]
    with pytest.raises(InputError, match=r"model entry lacks key\(s\) \['sha256', 'normalisation'\]"):
        ModelEntry.from_dict(data)


def test_manifest_of_another_format_is_refused(tmp_path):
    (tmp_path / "models.json").write_text(json.dumps({"format": 2, "models": []}))
    with pytest.raises(InputError, match=r"manifest format 2 is not supported \(this version reads format 1\)"):
        read_manifest(tmp_path)


def test_folder_without_a_manifest_is_refused(tmp_path):
    with pytest.raises(InputError, match=rf"{re.escape(str(tmp_path))}: no models\.json in this folder"):
        read_manifest(tmp_path)


def test_the_bundled_manifest_is_valid():
    entries = read_manifest()  # the bundled folder; no manifest there yet means no models
    for entry in entries:
        assert entry.path().is_file(), f"bundled model {entry.name}: {entry.path()} is missing"


# --- finding a model -------------------------------------------------------------------------

def test_find_the_default_model_of_each_task(models_dir):
    assert find_model(None, "registration", models_dir).name == "reg-a"
    assert find_model(None, Task.SIMILARITY, models_dir).name == "sim-a"


def test_find_a_model_by_name(models_dir):
    entry = find_model("reg-b", "registration", models_dir)
    assert entry.name == "reg-b" and entry.path() == models_dir / "reg-b.pt"


def test_unknown_name_lists_the_available_models(models_dir):
    with pytest.raises(InputError, match=r"--model reg-z: no such registration model \(available: reg-a, reg-b;"):
        find_model("reg-z", "registration", models_dir)


def test_model_of_another_task_is_refused(models_dir):
    with pytest.raises(InputError, match=r"--model sim-a: is a similarity model, a registration model is needed"):
        find_model("sim-a", "registration", models_dir)


def test_no_default_for_a_task(tmp_path):
    folder = tmp_path / "m"
    for name in ("r1", "r2"):
        add_to_manifest(make_model(folder, name), folder)
    with pytest.raises(InputError, match=r"no default registration model \(available registration models: r1, r2\)"):
        find_model(None, "registration", folder)
    with pytest.raises(InputError, match=r"no default similarity model \(available similarity models: none\)"):
        find_model(None, "similarity", folder)


def test_find_a_model_by_the_path_of_its_entry_json(models_dir, tmp_path):
    run = tmp_path / "my_run"
    entry = make_model(run / "weights", "mine")
    write_entry(ModelEntry.from_dict(entry.to_dict() | {"file": "weights/mine.pt"}), run / "mine.json")
    found = find_model(str(run / "mine.json"), "registration", models_dir)
    assert found.name == "mine" and found.path() == run / "weights" / "mine.pt"
    verify(found)


def test_find_a_model_by_the_path_of_a_folder_with_a_manifest(models_dir):
    assert find_model(str(models_dir), "similarity").name == "sim-a"
    assert find_model(str(models_dir / "models.json"), "registration").name == "reg-a"


def test_entry_json_of_another_task_is_refused(models_dir, tmp_path):
    write_entry(make_model(tmp_path, "s", "similarity"), tmp_path / "s.json")
    with pytest.raises(InputError, match=r"s\.json: model 's' is a similarity model, a registration model is needed"):
        find_model(str(tmp_path / "s.json"), "registration", models_dir)


def test_path_that_does_not_exist(models_dir, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(InputError, match=rf"--model {re.escape(str(missing))}: does not exist"):
        find_model(str(missing), "registration", models_dir)


# --- checking the weights --------------------------------------------------------------------

def test_sha256_of_streams_the_whole_file(tmp_path):
    import hashlib
    data = bytes(range(256)) * 9000  # more than one 1 MiB chunk
    (tmp_path / "blob").write_bytes(data)
    assert sha256_of(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_verify_passes_on_intact_weights(models_dir):
    for entry in read_manifest(models_dir):
        verify(entry)


def test_missing_weights_file(models_dir):
    (models_dir / "reg-b.pt").unlink()
    entry = find_model("reg-b", "registration", models_dir)
    with pytest.raises(InputError, match=rf"model 'reg-b': weights file {re.escape(str(models_dir / 'reg-b.pt'))} "
                                         r"is missing$"):
        verify(entry)


def test_sha256_mismatch(models_dir):
    path = models_dir / "reg-a.pt"
    path.write_bytes(path.read_bytes() + b"\0")
    entry = find_model("reg-a", "registration", models_dir)
    with pytest.raises(InputError, match=rf"model 'reg-a': sha256 mismatch for {re.escape(str(path))}: "
                                         rf"expected {entry.sha256}, got {sha256_of(path)}; "
                                         r"the file is damaged or was replaced"):
        verify(entry)
    with pytest.raises(InputError, match=r"sha256 mismatch"):
        load_checkpoint(entry)


# --- loading ---------------------------------------------------------------------------------

def test_load_checkpoint(models_dir):
    checkpoint = load_checkpoint(find_model(None, "registration", models_dir), device="cpu")
    assert set(checkpoint) == {"config", "state_dict", "version"}
    assert torch.equal(checkpoint["state_dict"]["weight"], tiny_state_dict()["weight"])


def test_checkpoint_missing_keys(tmp_path):
    entry = make_model(tmp_path, "nover", config=None, version=None)
    with pytest.raises(InputError, match=r"model 'nover': checkpoint .*nover\.pt lacks key\(s\) "
                                         r"\['config', 'version'\] \(expected \['config', 'state_dict', 'version'\]\)"):
        load_checkpoint(entry)


def test_checkpoint_that_is_not_a_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    entry = ModelEntry.from_dict(entry_dict("list", "list.pt", sha256_of(tmp_path / "list.pt")), tmp_path)
    with pytest.raises(InputError, match=r"model 'list': .*list\.pt holds a list, not a checkpoint dict"):
        load_checkpoint(entry)


@pytest.mark.parametrize("content, reason", [(b"not a checkpoint at all", r"Unsupported operand"),
                                             (b"", r"the file ends early"),
                                             (b"PK\x03\x04 a damaged zip", r"PytorchStreamReader failed")])
def test_file_that_torch_cannot_load(tmp_path, content, reason):
    (tmp_path / "junk.pt").write_bytes(content)
    entry = ModelEntry.from_dict(entry_dict("junk", "junk.pt", sha256_of(tmp_path / "junk.pt")), tmp_path)
    with pytest.raises(InputError, match=rf"model 'junk': .*junk\.pt cannot be read as a torch checkpoint \({reason}"):
        load_checkpoint(entry)


class _Payload:
    """An arbitrary object whose unpickling would run code (it would create ``marker``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_python_objects_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "code_ran"
    entry = make_model(tmp_path, "evil", config={"hook": _Payload(marker)})
    assert not marker.exists()
    with pytest.raises(InputError, match=r"model 'evil': .*evil\.pt holds pickled Python objects other than "
                                         r"tensors and plain containers \(Unsupported global: .*\); refused: "
                                         r"only plain weights are loaded \(torch\.load weights_only=True\)$"):
        load_checkpoint(entry)
    assert not marker.exists()


def test_load_network(models_dir, fake_nets):
    network = load_network(find_model(None, "registration", models_dir), device="cpu")
    assert isinstance(network, torch.nn.Conv3d) and not network.training
    assert torch.equal(network.weight, tiny_state_dict()["weight"])


def test_state_dict_that_does_not_fit_the_architecture(tmp_path, fake_nets):
    weights = tiny_state_dict() | {"extra.weight": torch.zeros(2)}
    del weights["bias"]
    entry = make_model(tmp_path, "odd", state_dict=weights)
    with pytest.raises(InputError, match=r"model 'odd': weights in .*odd\.pt do not fit architecture 'tiny-conv': "
                                         r".*Missing key\(s\) in state_dict: \"bias\".*Unexpected key\(s\)"):
        load_network(entry)


def test_state_dict_of_other_shapes(tmp_path, fake_nets):
    entry = make_model(tmp_path, "wide", state_dict=torch.nn.Conv3d(1, 2, 1).state_dict())
    with pytest.raises(InputError, match=r"model 'wide': weights in .* do not fit .*size mismatch for weight"):
        load_network(entry)


def test_unknown_architecture(tmp_path, fake_nets):
    entry = ModelEntry.from_dict(make_model(tmp_path, "alien").to_dict() | {"architecture": "alien-net"}, tmp_path)
    with pytest.raises(InputError, match=r"model 'alien': cannot build architecture 'alien-net' with arguments \{\}: "
                                         r"build_network\(\): unknown architecture 'alien-net'"):
        load_network(entry)


def test_load_network_with_the_real_networks(tmp_path):
    """The real ``crossmodalmas.nets.build_network``: a strict round trip of its first architecture."""
    nets = pytest.importorskip("crossmodalmas.nets")
    if not hasattr(nets, "build_network") or not getattr(nets, "ARCHITECTURES", None):
        pytest.skip("crossmodalmas.nets has no build_network/ARCHITECTURES yet")
    architecture = sorted(nets.ARCHITECTURES)[0]
    torch.manual_seed(0)
    network = nets.build_network(architecture, {})
    path = save_checkpoint(tmp_path / "real.pt", state_dict=network.state_dict())
    entry = ModelEntry.from_dict(entry_dict("real", "real.pt", sha256_of(path)) | {"architecture": architecture},
                                 tmp_path)
    loaded = load_network(entry, device="cpu")
    assert type(loaded) is type(network) and not loaded.training
    for (name, ours), (_, theirs) in zip(network.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(ours, theirs), name
    alien = ModelEntry.from_dict(entry.to_dict() | {"architecture": "alien-net"}, tmp_path)
    with pytest.raises(InputError, match=r"model 'real': cannot build architecture 'alien-net' .*unknown architecture"):
        load_network(alien)
