"""No source file under CrossModalMAS/ or scripts/ unpickles with ``torch.load`` unless it passes
``weights_only=True`` (a checkpoint must never run code), with no file exempted. The search
reads the syntax tree, so a call spread over lines, ``torch.load`` under another name
(``from torch import load``, ``import torch as t``) or with ``weights_only`` left to its
default are all found; ``pickle.load`` of a file is refused alike."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED: set[str] = set()  # files allowed to load without weights_only=True: none


def _sources() -> list[Path]:
    return sorted(p for folder in ("CrossModalMAS", "scripts") for p in (ROOT / folder).rglob("*.py"))


def _load_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound to the torch module, and names bound to ``torch.load`` / ``pickle.load`` itself."""
    modules, functions = {"torch"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name for alias in node.names if alias.name == "torch"}
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization", "pickle"):
            functions |= {alias.asname or alias.name for alias in node.names if alias.name in ("load", "loads")}
    return modules, functions


def _unsafe_loads(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line`` of every torch.load without ``weights_only=True`` and every pickle.load(s)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules, functions = _load_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_torch_load = (isinstance(func, ast.Attribute) and func.attr == "load" and isinstance(func.value, ast.Name)
                         and func.value.id in modules) or (isinstance(func, ast.Name) and func.id in functions)
        is_pickle = isinstance(func, ast.Attribute) and func.attr in ("load", "loads") and \
            isinstance(func.value, ast.Name) and func.value.id == "pickle"
        safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                   for k in node.keywords)
        if is_pickle or (is_torch_load and not safe):
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_every_torch_load_passes_weights_only_true():
    sources = _sources()
    assert len(sources) > 50  # the search sees the package and the scripts
    unsafe = [hit for path in sources if str(path.relative_to(ROOT)) not in ALLOWED for hit in _unsafe_loads(path)]
    assert unsafe == [], f"torch.load without weights_only=True (or pickle.load) at: {unsafe}"


@pytest.mark.parametrize("source, hits", [
    ("import torch\ntorch.load(p, weights_only=True)\n", 0),
    ("import torch\ntorch.load(p)\n", 1),
    ("import torch\ntorch.load(\n    p,\n    map_location='cpu',\n)\n", 1),
    ("import torch\ntorch.load(p, weights_only=False)\n", 1),
    ("import torch as t\nt.load(p)\n", 1),
    ("from torch import load\nload(p)\n", 1),
    ("from torch import load as restore\nrestore(p, weights_only=True)\nrestore(q)\n", 1),
    ("import pickle\npickle.load(f)\n", 1),
    ("import numpy as np\nnp.load(p, allow_pickle=False)\n", 0),
])
def test_the_search_finds_each_form(tmp_path, source, hits):
    path = tmp_path / "example.py"
    path.write_text(source)
    assert len(_unsafe_loads(path, tmp_path)) == hits
