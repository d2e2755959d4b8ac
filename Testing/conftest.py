"""Shared fixtures and helpers of the pytest suite: tiny phantom cases on disk, CLI runners.

Every case here is small (40^3 voxels or less), seeded and rendered from
:mod:`crossmodalmas.phantoms`: a CT-like target and MR-like atlases, each from its own
anatomy, so an end-to-end ``crossmodalmas segment --refine 5`` takes about a second on CPU.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from crossmodalmas.phantoms import heart_tissue_map, make_grid, random_heart_anatomy, render, tissue_to_labels
from crossmodalmas.volume import LabelMap, Volume, write_labels, write_volume

TINY_SHAPE = (40, 40, 40)
TINY_SPACING = (2.5, 2.5, 2.5)
QUICK = ["--refine", "5", "--device", "cpu"]  # a few instance-optimisation steps: seconds, not minutes
MMWHS_CODES = {205, 420, 500, 550, 600, 820, 850}
ERROR_LINE = re.compile(r"^crossmodalmas: error: .+$", re.MULTILINE)


def phantom(seed: int, modality: str, shape=TINY_SHAPE, spacing=TINY_SPACING, rotation=(0.0, 0.0, 0.0),
            offset_mm=(0.0, 0.0, 0.0), axes: str = "LPS") -> tuple[Volume, LabelMap]:
    """A rendered heart phantom and its MM-WHS labels on a small grid centred near its heart.

    Args:
        seed: seeds the anatomy, contrast jitter and noise.
        modality: ``'ct'`` or ``'mr'``.
        shape: (K, J, I) of the grid.
        spacing: voxel size along (i, j, k) in mm.
        rotation: grid rotation about R, A, S in degrees.
        offset_mm: RAS shift of the grid's centre from the heart's centre.
        axes: ``'LPS'`` or ``'RAS'`` grid axes before the rotation.
    """
    rng = np.random.default_rng(seed)
    anatomy = random_heart_anatomy(rng)
    grid = make_grid(shape, spacing, rotation, anatomy.heart_centre_ras + np.asarray(offset_mm, float), axes=axes)
    tissue = heart_tissue_map(anatomy, grid)
    return render(tissue, grid, "ct" if modality == "ct" else "mr", rng), tissue_to_labels(tissue, grid)


def write_atlas(folder: Path, name: str, image: Volume, labels: LabelMap) -> tuple[Path, Path]:
    """Write ``name.nii.gz`` and ``name_seg.nii.gz`` in ``folder``; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    image_path, labels_path = folder / f"{name}.nii.gz", folder / f"{name}_seg.nii.gz"
    write_volume(image, image_path)
    write_labels(labels, labels_path)
    return image_path, labels_path


def sha256(path: Path) -> str:
    """The sha256 of a file, or of every file of a folder (sorted by name)."""
    digest = hashlib.sha256()
    paths = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for p in paths:
        digest.update(p.name.encode())
        digest.update(p.read_bytes())
    return digest.hexdigest()


def atlas_args(atlases) -> list[str]:
    """``--atlas IMG LABELS`` for each (image, labels) pair."""
    args = []
    for image, labels in atlases:
        args += ["--atlas", str(image), str(labels)]
    return args


@dataclass
class CliRun:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one ``crossmodalmas: error: ...`` line of stderr (asserts there is exactly one)."""
        lines = ERROR_LINE.findall(self.err)
        assert len(lines) == 1, f"expected one error line on stderr, got {lines!r}\nstderr:\n{self.err}"
        return lines[0]


@pytest.fixture
def cli(capsys):
    """Run ``crossmodalmas.cli.main(argv)`` in-process; returns a :class:`CliRun`."""
    from crossmodalmas.cli import main

    def run(*argv) -> CliRun:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


def pytest_configure(config):
    """One torch thread: the tiny volumes gain nothing from more, and on a busy 2-core machine
    (other test or benchmark processes) torch's spinning OpenMP threads turn a 0.5 s run into 10 s."""
    torch.set_num_threads(1)


def process_env() -> dict:
    """Environment of a ``python -m crossmodalmas`` child: one OpenMP thread (see above)."""
    return dict(os.environ, PYTHONWARNINGS="default", OMP_NUM_THREADS="1")


def run_process(*argv, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m crossmodalmas ARGV`` as a real process (text output captured, as UTF-8
    whatever the locale: the progress bar's blocks are not ASCII)."""
    return subprocess.run([sys.executable, "-m", "crossmodalmas", *map(str, argv)], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=timeout, env=process_env(), **kwargs)


@dataclass
class TinyCase:
    """A tiny cross-modality case on disk (read-only for the tests: write outputs elsewhere).

    Attributes:
        folder: where the files are.
        target: CT-like target image.
        truth: the target's MM-WHS labels.
        atlases: (image, labels) paths of two MR-like atlases, each its own anatomy, in
            ``folder / 'atlases'`` (the ``--atlas-dir`` layout).
    """

    folder: Path
    target: Path
    truth: Path
    atlases: list[tuple[Path, Path]]

    @property
    def names(self) -> list[str]:
        """The atlases' names (their image file stems)."""
        return [image.name[: -len(".nii.gz")] for image, _ in self.atlases]

    def inputs(self) -> list[Path]:
        return [self.target] + [p for pair in self.atlases for p in pair]


@pytest.fixture(scope="session")
def tiny_case(tmp_path_factory) -> TinyCase:
    folder = tmp_path_factory.mktemp("tiny_case")
    target, truth = phantom(1, "ct")
    write_volume(target, folder / "target.nii.gz")
    write_labels(truth, folder / "truth.nii.gz")
    # Atlas seeds whose affine pre-alignment to this target is good for any sampling seed.
    atlases = [write_atlas(folder / "atlases", f"mr{seed}", *phantom(seed, "mr")) for seed in (6, 9)]
    return TinyCase(folder, folder / "target.nii.gz", folder / "truth.nii.gz", atlases)


def mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the foreground labels of ``truth`` (a label missing from ``pred`` scores 0)."""
    scores = []
    for value in np.unique(truth[truth != 0]):
        p, t = pred == value, truth == value
        scores.append(2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum()))
    return float(np.mean(scores))


def no_partial_files(folder: Path) -> bool:
    """True when no ``.partial-*`` temporary file is left anywhere under ``folder``."""
    return not any(p.name.startswith(".partial-") for p in Path(folder).rglob("*"))




@pytest.fixture(scope="module")
def quick_result():
    """One quick run (instance optimisation, 2 iterations, majority vote) of three MR atlases."""
    from crossmodalmas.atlases import Atlas
    from crossmodalmas.options import SegmentOptions
    from crossmodalmas.pipeline import segment

    target, _ = phantom(1, "ct")
    atlases = [Atlas(f"mr{seed}", *phantom(seed, "mr")) for seed in (6, 9, 4)]
    return segment(target, atlases, SegmentOptions(model="instance-opt", refine_iterations=2, fusion="mv",
                                                   device="cpu"))


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def import_scripts(names):
    """The ``scripts/`` modules ``names``, imported with scripts/ on sys.path (as when a script
    runs), as one namespace; a generator for a fixture (removes the path afterwards)."""
    import importlib

    sys.path.insert(0, str(SCRIPTS))
    try:
        yield type("Bench", (), {name: importlib.import_module(name) for name in names})
    finally:
        sys.path.remove(str(SCRIPTS))
        for name in names:  # the next test file imports them afresh
            sys.modules.pop(name, None)
