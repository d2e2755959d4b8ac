"""Python packages the compute package needs inside Slicer, installed on first use.

torch comes through the PyTorch extension's ``PyTorchUtils`` (it picks the build that fits the
machine's GPU driver, or the CPU build) after the user confirms; the few pure-Python packages
Slicer does not bundle come from pip, also after a confirmation. Nothing is installed when the
module loads: only when the user first presses Apply (or Re-fuse), so the module opens fast and
without torch.
"""

from __future__ import annotations

import importlib.util

MINIMUM_TORCH = "2.1"
# Import name -> pip requirement; numpy, scipy and SimpleITK ship with Slicer.
PIP_PACKAGES = {"tqdm": "tqdm>=4.60", "monai": "monai>=1.3"}


def missing_packages() -> list[str]:
    """The pip requirements of :data:`PIP_PACKAGES` whose module cannot be imported."""
    return [requirement for module, requirement in PIP_PACKAGES.items() if importlib.util.find_spec(module) is None]


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def ensure_torch(ask: bool = True) -> None:
    """Make ``import torch`` work, installing it through PyTorchUtils if needed.

    Args:
        ask: ask the user before installing (PyTorchUtils shows what will be installed).

    Raises:
        RuntimeError: the PyTorch extension is missing, or the user declined the install.
    """
    if torch_installed():
        return
    try:
        import PyTorchUtils
    except ImportError as error:
        raise RuntimeError("CrossModalMAS needs the PyTorch extension: install 'PyTorch' from the Extensions "
                           "Manager and restart Slicer") from error
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                          torchVersionRequirement=f">={MINIMUM_TORCH}")
    if torch is None:
        raise RuntimeError("PyTorch was not installed; CrossModalMAS cannot segment without it")


def ensure_packages(ask: bool = True) -> None:
    """Install the missing :data:`PIP_PACKAGES` with Slicer's pip, after a confirmation.

    Raises:
        RuntimeError: the user declined.
    """
    missing = missing_packages()
    if not missing:
        return
    import slicer

    if ask and not slicer.util.confirmOkCancelDisplay(
            f"CrossModalMAS needs these Python packages: {', '.join(missing)}. Install them now? "
            "(This downloads them once and may take a minute.)"):
        raise RuntimeError(f"CrossModalMAS cannot segment without {', '.join(missing)}")
    slicer.util.pip_install(missing)


def ensure_dependencies(ask: bool = True) -> None:
    """torch first (so pip never pulls a torch build of its own for monai), then the rest."""
    ensure_torch(ask)
    ensure_packages(ask)
