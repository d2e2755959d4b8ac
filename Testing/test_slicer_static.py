"""Static checks of what needs the Slicer application to run (CMake, the .ui, the index entry).

- every file under ``CrossModalMAS/`` is listed in its CMakeLists.txt and every listed file exists;
- every ``self.ui.X`` the Widget uses is a widget of the .ui file;
- every ``slicer.util.X`` and MRML/VTK class name the module uses exists in slicer-core;
- the Extensions Index entry validates against the catalog schema and matches the CMake metadata;
- the compute package imports no slicer, vtk or qt; the module's library no Qt and no torch at load.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "CrossModalMAS"
MODULE_PY = MODULE / "CrossModalMAS.py"
LIB = MODULE / "CrossModalMASLib"
UI_FILE = MODULE / "Resources" / "UI" / "CrossModalMAS.ui"
SLICER_SIDE = [MODULE_PY, *sorted(LIB.glob("*.py"))]

# The Extensions Index catalog entry schema v1.0.2 (Slicer/ExtensionsIndex schemas/; the same as
# Slicer's Schemas/ folder), kept here because the tests cannot download it.
CATALOG_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"], "default": "git"},
        "build_dependencies": {"type": "array", "additionalItems": False, "items": {"type": "string"}},
        "dicom_support_rule": {"type": "string"},
        "build_subdirectory": {"type": "string", "default": "."},
        "enabled": {"type": "boolean", "default": True},
        "tier": {"type": "integer", "default": 1, "minimum": 1, "maximum": 5},
    },
}
CATALOG_SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#"


def repository_files(folder: Path) -> list[str]:
    """Files under ``folder`` that git tracks or would track (ignored build outputs left out)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "."], cwd=folder,
                                capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is needed to tell the repository's files from build outputs")
    return sorted({line for line in listed if line and (folder / line).is_file()})


def cmake_listed(cmake: Path) -> list[str]:
    """The paths listed in the ``set(...)``/``list(APPEND ...)`` blocks of the module's CMakeLists."""
    text = cmake.read_text(encoding="utf-8")
    name = re.search(r"set\(MODULE_NAME (\w+)\)", text).group(1)
    paths = []
    for block in re.findall(r"(?:set\(MODULE_PYTHON_\w+|list\(APPEND MODULE_PYTHON_\w+)\n(.*?)\n\s*\)", text, re.S):
        paths += [line.strip().replace("${MODULE_NAME}", name) for line in block.splitlines() if line.strip()]
    return paths


def test_every_module_file_is_listed_in_cmake_and_every_listed_file_exists():
    listed = cmake_listed(MODULE / "CMakeLists.txt")
    assert len(listed) == len(set(listed)), "a file is listed twice"
    missing = [p for p in listed if not (MODULE / p).is_file()]
    assert not missing, f"CrossModalMAS/CMakeLists.txt lists files that do not exist: {missing}"
    files = [f for f in repository_files(MODULE) if not f.endswith("CMakeLists.txt")]
    unlisted = sorted(set(files) - set(listed))
    assert not unlisted, f"add these files to CrossModalMAS/CMakeLists.txt (SCRIPTS or RESOURCES): {unlisted}"


def test_module_cmake_builds_the_scripted_module_with_generic_tests_and_the_self_test():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}.*WITH_GENERIC_TESTS", text, re.S)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert (MODULE / "Testing" / "CMakeLists.txt").read_text().strip() == "add_subdirectory(Python)"


def ui_widget_names() -> dict[str, str]:
    root = ElementTree.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_every_ui_widget_the_widget_uses_is_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_PY.read_text(encoding="utf-8")))
    names = ui_widget_names()
    assert used, "the Widget uses no self.ui widget?"
    assert not used - set(names), f"not in {UI_FILE.name}: {sorted(used - set(names))}"
    assert names["CrossModalMAS"] == "qMRMLWidget"
    assert names["targetSelector"] == "qMRMLNodeComboBox" and names["applyButton"] == "QPushButton"


def test_ui_file_node_types_exist_in_slicer_core():
    pytest.importorskip("slicer_core", reason="slicer-core is not installed (the test extras install it)")
    import slicer

    types = {t.text for t in ElementTree.parse(UI_FILE).getroot().iter("string") if (t.text or "").startswith("vtkMRML")}
    assert types and all(hasattr(slicer, t) for t in types), types


def names_used(pattern: str) -> set[str]:
    return {m for path in SLICER_SIDE for m in re.findall(pattern, path.read_text(encoding="utf-8"))}


def test_every_slicer_util_name_and_mrml_class_used_exists_in_slicer_core():
    pytest.importorskip("slicer_core", reason="slicer-core is not installed (the test extras install it)")
    import slicer
    import slicer.util

    util = names_used(r"slicer\.util\.(\w+)")
    assert {"loadUI", "arrayFromVolume", "updateVolumeFromArray", "setSliceViewerLayers"} <= util
    assert not {n for n in util if not hasattr(slicer.util, n)}, "missing in slicer.util"
    classes = names_used(r"slicer\.(vtk\w+)") | names_used(r"[\"'](vtkMRML\w+)[\"']")
    classes -= {n for n in classes if n.startswith("vtkMRMLColorTableNodeFile")}  # node IDs of the application's colour files
    classes -= {"vtkMRMLColorTableNodeRainbow", "vtkMRMLColorTableNodeIron"}  # node IDs, checked below
    assert {"vtkMRMLSegmentationNode", "vtkSlicerSegmentationsModuleLogic", "vtkMRMLSubjectHierarchyNode"} <= classes
    assert not {n for n in classes if not hasattr(slicer, n)}, "missing in slicer-core"


def test_fallback_colour_tables_exist_among_slicers_default_colour_nodes():
    pytest.importorskip("slicer_core", reason="slicer-core is not installed (the test extras install it)")
    from test_slicer_fixtures import new_scene
    from CrossModalMASLib.previews import UNCERTAINTY_COLORS, WEIGHT_COLORS

    scene = new_scene()
    assert scene.GetNodeByID(WEIGHT_COLORS[-1]) is not None and scene.GetNodeByID(UNCERTAINTY_COLORS[-1]) is not None


def cmake_set(text: str, variable: str) -> str:
    return re.search(rf'set\({variable}\s+"([^"]*)"\)', text).group(1)


def test_extensions_index_entry_is_valid_and_matches_the_cmake_metadata():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (the test extras install it)")
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    project = re.search(r"project\((\w+)\)", cmake).group(1)
    entry_path = ROOT / f"{project}.json"  # the index names the file after the CMake project
    raw = entry_path.read_bytes()
    assert b"\r" not in raw, "the index wants LF line endings"
    entry = json.loads(raw)
    jsonschema.validate(entry, CATALOG_SCHEMA)
    assert entry["$schema"] == CATALOG_SCHEMA_URL
    assert entry["category"] == cmake_set(cmake, "EXTENSION_CATEGORY") == "Segmentation"
    assert entry["build_dependencies"] == cmake_set(cmake, "EXTENSION_DEPENDS").split()
    repository = entry["scm_url"].rstrip("/").removesuffix(".git").rsplit("/", 1)[1]
    assert repository.startswith("Slicer") and not project.startswith("Slicer")
    assert entry["scm_url"].removesuffix(".git") == cmake_set(cmake, "EXTENSION_HOMEPAGE")
    icon = cmake_set(cmake, "EXTENSION_ICONURL").split("/main/", 1)[1]
    assert (ROOT / icon).is_file(), f"EXTENSION_ICONURL points to {icon}, which is not in the repository"
    assert (ROOT / "LICENSE").is_file()


def imported_top_modules(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_compute_package_never_imports_slicer_vtk_or_qt():
    forbidden = {"slicer", "vtk", "vtkmodules", "qt", "ctk", "CrossModalMASLib", "CrossModalMAS"}
    offenders = {str(p.relative_to(MODULE)): sorted(imported_top_modules(p) & forbidden)
                 for p in (MODULE / "crossmodalmas").rglob("*.py") if imported_top_modules(p) & forbidden}
    assert not offenders, offenders
    code = ("import sys, crossmodalmas.cli, crossmodalmas.pipeline, crossmodalmas.segment_command; "
            "print(sorted(m for m in ('slicer', 'vtk', 'qt', 'ctk') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_module_library_imports_no_qt_and_no_torch_at_load():
    for path in sorted(LIB.glob("*.py")):
        assert not imported_top_modules(path) & {"qt", "ctk"}, path.name
        assert "torch" not in imported_top_modules(path, top_level_only=True), path.name


def test_module_file_holds_only_module_widget_logic_test_and_stays_short():
    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes == ["CrossModalMAS", "CrossModalMASWidget", "CrossModalMASLogic", "CrossModalMASTest"]
    assert not [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert len(MODULE_PY.read_text(encoding="utf-8").splitlines()) < 600
