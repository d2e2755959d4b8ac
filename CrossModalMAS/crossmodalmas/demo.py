"""``crossmodalmas demo``: a labelled phantom cross-modality case, segmented end to end.

MR-like heart-phantom atlases segment a CT-like phantom target of another anatomy, pose and
grid. The case is written to files and read back, so the demo takes the same path as
``crossmodalmas segment``: files -> :func:`crossmodalmas.pipeline.segment` -> files.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

from crossmodalmas import atlases as atlas_io
from crossmodalmas.label_names import label_name
from crossmodalmas.metrics import dice
from crossmodalmas.options import SegmentOptions
from crossmodalmas.overview import write_overview
from crossmodalmas.phantoms import demo_case
from crossmodalmas.pipeline import segment
from crossmodalmas.progress import progress_bar
from crossmodalmas.volume import read_labels, read_volume, write_labels, write_volume


def write_case(folder: Path, seed: int, n_atlases: int) -> tuple[Path, Path, list[atlas_io.AtlasFiles]]:
    """Write a phantom case: ``target_ct.nii.gz``, ``target_truth.nii.gz`` and ``atlases/``."""
    case = demo_case(seed=seed, n_atlases=n_atlases)
    (folder / "atlases").mkdir(parents=True, exist_ok=True)
    target, truth = folder / "target_ct.nii.gz", folder / "target_truth.nii.gz"
    write_volume(case.target, target)
    write_labels(case.target_truth, truth)
    files = []
    for name, image, labels in case.atlases:
        pair = atlas_io.AtlasFiles(folder / "atlases" / f"{name}.nii.gz", folder / "atlases" / f"{name}_seg.nii.gz")
        write_volume(image, pair.image)
        write_labels(labels, pair.labels)
        files.append(pair)
    return target, truth, files


def _print_dice(scores: dict[int, float], seconds: float) -> None:
    print(f"{'label':>6}  {'structure':<20} {'Dice':>6}")
    for value, score in sorted(scores.items()):
        print(f"{value:>6}  {label_name(value):<20} {score:6.3f}")
    print(f"{'':>6}  {'mean':<20} {sum(scores.values()) / len(scores):6.3f}")
    print(f"segmented in {seconds:.1f} s")


def run_demo(out: Optional[Path], seed: int = 0, n_atlases: int = 4) -> int:
    """Make the case in ``out`` (a new temporary folder if None), segment it, report; returns 0."""
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="crossmodalmas-demo-"))
    print(f"writing a phantom case (CT-like target, {n_atlases} MR-like atlases) to {folder}")
    target_path, truth_path, files = write_case(folder, seed, n_atlases)
    target, truth = read_volume(target_path), read_labels(truth_path)
    atlases = [atlas_io.load(f) for f in files]
    started = time.perf_counter()
    with progress_bar() as report:
        result = segment(target, atlases, SegmentOptions(seed=seed), progress=report)
    seconds = time.perf_counter() - started
    write_labels(result.labels, folder / "segmentation.nii.gz")
    write_overview(folder / "overview.png", target, truth, result.labels, result.warped_atlas(0),
                   title=f"CT-like phantom target, {len(atlases)} MR-like atlases ({result.fusion.value})")
    _print_dice(dice(result.labels.array, truth.array), seconds)
    print(f"wrote {folder / 'segmentation.nii.gz'} and {folder / 'overview.png'}")
    return 0
