"""The training benchmark's real-pair datasets, written into a work folder (never into ../shared/data).

``prostate``: the 32 MSD Task05 prostate label maps of ``../shared/data/labelmaps/msd_prostate``
(peripheral zone 1, transition zone 2), each rendered twice with a fixed synthetic contrast per
modality ("t2", "adc": a mean per zone and background, jittered per subject, with noise, bias,
gamma and a little blur) on the label map's own grid, and a CSV manifest that names the label
files where they are. Held out (split "val"): the maps of the label sources' evaluation split
(:func:`crossmodalmas.label_sources.split_files`, every fifth file), which no bundled model
trained on, so fine-tuned and from-scratch runs are judged on subjects neither saw.

``phantom``: CT/MR heart phantoms (:func:`crossmodalmas.phantom_dataset.write_phantom_dataset`),
where ``../shared/data`` is absent.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from crossmodalmas.label_sources import Split, split_files
from crossmodalmas.phantom_dataset import write_phantom_dataset
from crossmodalmas.synth import SynthConfig, render
from crossmodalmas.volume import Volume, read_labels, write_volume
from registration_cases import DATA

PROSTATE = DATA / "labelmaps" / "msd_prostate"
# Per modality: mean of background, peripheral zone, transition zone (T2: PZ bright, TZ darker;
# ADC: the reverse order of brightness), in [0, 1] before normalisation.
CONTRASTS = {"t2": (0.30, 0.85, 0.55), "adc": (0.55, 0.40, 0.75)}
_JITTER, _SPREAD = 0.05, 0.04
_RENDER = SynthConfig(intensity_std=_SPREAD, bias_std=0.2, blur_sigma=0.5, resolution_loss=1.0, gamma_std=0.1,
                      noise_std=0.03)


def _contrast(labels: torch.Tensor, means, generator: torch.Generator) -> torch.Tensor:
    """A normalised image ``(D, H, W)`` of ``labels`` with the zone ``means`` jittered for this subject."""
    count = int(labels.max()) + 1
    base = torch.tensor([means[min(value, len(means) - 1)] for value in range(count)])
    jittered = base + (torch.rand(count, generator=generator) * 2 - 1) * _JITTER
    lookup = (jittered[None], torch.full((1, count), _SPREAD))
    return render(labels[None, None], lookup, _RENDER, generator)[0, 0]


def prostate_dataset(folder: Path, seed: int = 0) -> Path:
    """Write the two-contrast prostate images and ``cases.csv`` into ``folder``; returns the manifest.

    Raises:
        FileNotFoundError: ``../shared/data`` holds no prostate label maps here.
    """
    if not PROSTATE.is_dir():
        raise FileNotFoundError(f"{PROSTATE}: no MSD prostate label maps on this machine")
    held_out = {path.name for path in split_files(PROSTATE, Split.EVAL)}
    generator = torch.Generator().manual_seed(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = [["image", "labels", "modality", "subject", "split"]]
    for path in sorted(PROSTATE.glob("*.nii.gz")):
        labels = read_labels(path)
        subject = path.name[: -len(".nii.gz")]
        values = torch.from_numpy(labels.array.astype("int64"))
        for modality, means in CONTRASTS.items():
            image = folder / "images" / f"{subject}_{modality}.nii.gz"
            array = _contrast(values, means, generator).numpy()
            write_volume(Volume(array, labels.ijk_to_ras), image)
            rows.append([str(image), str(path), modality, subject, "val" if path.name in held_out else "train"])
    manifest = folder / "cases.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return manifest


def benchmark_dataset(folder: Path, quick: bool = False) -> tuple[str, Path, list[int]]:
    """``(kind, manifest, crop_labels)``: the prostate set where the shared data is here (and not
    ``quick``), else heart phantoms cropped around the LV myocardium (205), as seed 000 crops."""
    if not quick and PROSTATE.is_dir():
        return "prostate", prostate_dataset(folder), []
    if not quick:
        print(f"benchmark_training: {PROSTATE} is absent: heart phantoms instead of the prostate set")
    subjects, shape = (4, (24, 24, 24)) if quick else (12, (48, 48, 48))
    return "phantom", write_phantom_dataset(folder, subjects=subjects, val=subjects // 3 + 1, shape=shape,
                                            spacing_mm=(3.0, 3.0, 3.0)), [205]
