"""Shared helpers of the ``test_slicer_*`` files (no tests here).

The Slicer-side code is tested against slicer-core (``pip install slicer-core``: Slicer's MRML
libraries without the application). :func:`require_slicer_core` skips a test module with a
message where it is absent; CI installs it with the test extras, so there the tests run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "CrossModalMAS"
if str(MODULE_DIR) not in sys.path:  # CrossModalMASLib and CrossModalMAS.py live beside the compute package
    sys.path.insert(0, str(MODULE_DIR))

SKIP_MESSAGE = ("slicer-core is not installed (pip install slicer-core, or `make test`, which installs the "
                "test extras); the Slicer-side tests need its MRML libraries")


def require_slicer_core():
    """The ``slicer`` module of slicer-core; skips the calling test module where it is absent."""
    try:
        import slicer_core  # noqa: F401  (the wheel's own package: proves it is slicer-core's slicer)
        import slicer
    except ImportError:
        pytest.skip(SKIP_MESSAGE, allow_module_level=True)
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the 'slicer' module found is not slicer-core's (the unrelated PyPI package 'slicer' "
                    "shadows it; uninstall that one)", allow_module_level=True)
    return slicer


def new_scene():
    """An empty MRML scene with Slicer's default colour tables (as the application has)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    colors.SetMRMLScene(None)  # the nodes stay; the logic stops observing the scene
    return scene


def child_env() -> dict:
    """Environment of a background ``python -m crossmodalmas``: one OpenMP thread (see conftest)."""
    from CrossModalMASLib.segmentation_run import child_environment

    return child_environment(dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default"))


