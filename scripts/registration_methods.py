"""The registration benchmark's methods: each maps a :class:`Pair`'s atlas labels onto its target grid.

``identity`` (centre alignment), ``affine`` (:func:`crossmodalmas.affine.affine_align`), ``syn``
(antspyx SyN, Mattes MI), and ours through :func:`crossmodalmas.pipeline.segment` with one atlas and
majority vote (so the numbers are pairwise registration): ``instance-opt`` (no network), the
networks alone (``net-paper``, ``net-paper-noinv``: the ablation trained without the invertibility
loss, ``net-diffeo``), ``net-diffeo+refine`` (network, then instance optimisation) and
``net-diffeo@working-grid`` (the same weights run on the full working grid instead of the scale
they were trained at).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch

from crossmodalmas import metrics
from crossmodalmas.atlases import Atlas
from crossmodalmas.errors import InputError
from crossmodalmas.models import ModelEntry, find_model, write_entry
from crossmodalmas.options import SegmentOptions
from crossmodalmas.pipeline import segment
from crossmodalmas.affine import affine_align
from crossmodalmas.preprocess import resample
from crossmodalmas.volume import LPS_TO_RAS, to_sitk
from registration_cases import Pair

METHODS = ("identity", "affine", "syn", "instance-opt", "net-paper", "net-paper-noinv", "net-diffeo",
           "net-diffeo+refine", "net-diffeo@working-grid")
ROLES = ("diffeo", "paper", "noinv")  # the networks, as the --diffeo-model/--paper-model/--noinv-model flags name them
ROLE_OF = {"net-paper": "paper", "net-paper-noinv": "noinv", "net-diffeo": "diffeo", "net-diffeo+refine": "diffeo",
           "net-diffeo@working-grid": "diffeo"}
METHOD_OF_ROLE = {"diffeo": "net-diffeo", "paper": "net-paper", "noinv": "net-paper-noinv"}
FULL_GRID = {"spacing_mm": 1e-3, "max_voxels": 10 ** 12}  # working_grid of the @working-grid copy: never coarser


@dataclass
class Mapped:
    """A method's output: atlas labels on the target grid, field figures (None: n/a), extras.

    ``later`` computes field figures after the clock stops (``{"folding_percent": ..., ...}``).
    """

    labels: np.ndarray
    folding_percent: Optional[float] = None
    sd_log_jacobian: Optional[float] = None
    inverse_consistency_mm: Optional[float] = None
    later: Optional[Callable[[], dict]] = None
    extra: dict = field(default_factory=dict)

    def figures(self) -> dict:
        """The field figures, computing the deferred ones now."""
        found = {"folding_percent": self.folding_percent, "sd_log_jacobian": self.sd_log_jacobian,
                 "inverse_consistency_mm": self.inverse_consistency_mm}
        return {**found, **(self.later() if self.later else {})}


def _labels_through(pair: Pair, transform: sitk.Transform) -> np.ndarray:
    return resample(pair.atlas_labels.array, pair.atlas_labels.ijk_to_ras, pair.truth.grid, transform, labels=True)


def run_identity(pair: Pair) -> Mapped:
    """Translate the atlas so its image centre lies on the target's (no folding: rigid)."""
    centre = [g.corners_ras().mean(0) for g in (pair.target.grid, pair.atlas.grid)]
    offset_lps = (centre[1] - centre[0]) * LPS_TO_RAS.diagonal()[:3]  # fixed -> moving, LPS
    return Mapped(_labels_through(pair, sitk.TranslationTransform(3, offset_lps.tolist())), extra={"device": "cpu"})


def run_affine(pair: Pair) -> Mapped:
    """The package's affine pre-alignment alone."""
    return Mapped(_labels_through(pair, affine_align(pair.target, pair.atlas, labels=pair.atlas_labels)),
                  extra={"device": "cpu"})


def run_segment(pair: Pair, options: SegmentOptions) -> Mapped:
    """``segment()`` with the pair's atlas alone; field figures from ``result.qc[0]`` (working region)."""
    result = segment(pair.target, [Atlas("atlas", pair.atlas, pair.atlas_labels)], options)
    qc = result.qc[0]
    return Mapped(result.labels.array, qc.folding_percent, qc.sd_log_jacobian, qc.inverse_consistency_mm,
                  extra={"device": result.device, "registration": result.registration, "steps_s": result.timings,
                         "working_grid_kji": list(result.working_grid.shape)})


def _to_ants(ants, array: np.ndarray, ijk_to_ras: np.ndarray):
    image = to_sitk(array.astype(np.float32), ijk_to_ras)  # LPS geometry, as ANTs wants it
    return ants.from_numpy(sitk.GetArrayFromImage(image).T.copy(), origin=image.GetOrigin(),
                           spacing=image.GetSpacing(), direction=np.array(image.GetDirection()).reshape(3, 3))


def _syn_jacobian(ants, fixed, reg: dict) -> dict:
    """Folding and SDlogJ of the SyN warp over ``fixed``'s domain; removes ANTs' transform files."""
    determinant = ants.create_jacobian_determinant_image(fixed, reg["fwdtransforms"][0], do_log=False).numpy()
    for path in filter(os.path.isfile, {*reg["fwdtransforms"], *reg["invtransforms"]}):
        os.remove(path)
    return metrics.determinant_figures(torch.from_numpy(np.asarray(determinant, dtype=np.float64)))


def make_syn(ants) -> Callable[[Pair], Mapped]:
    """``run_syn(pair)``: ANTs affine + SyN (Mattes MI), labels warped with ``genericLabel``."""
    def run_syn(pair: Pair) -> Mapped:
        fixed = _to_ants(ants, pair.target.array, pair.target.ijk_to_ras)
        moving = _to_ants(ants, pair.atlas.array, pair.atlas.ijk_to_ras)
        labels = _to_ants(ants, pair.atlas_labels.array, pair.atlas_labels.ijk_to_ras)
        reg = ants.registration(fixed, moving, type_of_transform="SyN", aff_metric="mattes", syn_metric="mattes")
        warped = ants.apply_transforms(fixed, labels, reg["fwdtransforms"], interpolator="genericLabel")
        return Mapped(np.rint(warped.numpy().T).astype(np.int32), later=lambda: _syn_jacobian(ants, fixed, reg),
                      extra={"device": "cpu"})
    return run_syn


ANTS_SEED = 1  # SyN's Mattes metric samples at random: unseeded, two runs of one pair differ
_ITK_THREADS = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"  # antspyx's ITK reads its thread count here


def import_ants():
    """antspyx seeded with :data:`ANTS_SEED` (so its columns are one draw anyone can re-run), or None
    with a printed message (the SyN column is then skipped)."""
    try:
        import ants  # deferred: an optional benchmark dependency
    except ImportError:
        print("antspyx is not installed (pip install antspyx): the SyN column is skipped")
        return None
    # it also sets ITK to one thread; the benchmarks time SyN with the threads the run was given
    with _run_itk_threads_kept():
        ants.config.set_ants_deterministic(True, seed_value=ANTS_SEED)
    return ants


@contextmanager
def _run_itk_threads_kept():
    """Whatever the block does to ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, the run's setting
    (or its absence) comes back after, on an error too."""
    previous = os.environ.get(_ITK_THREADS)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_ITK_THREADS, None)
        else:
            os.environ[_ITK_THREADS] = previous


@contextmanager
def itk_threads(count: int):
    """``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` is ``count`` inside the block; the run's setting
    comes back after. antspyx's ITK takes its threads from it when the process makes its first
    ANTs image, so the block must hold every ants call, ``ants.from_numpy`` included: with only
    the registration inside, robustness pair7's seeded SyN gave 0.5238 in one process and 0.5012
    in the next; with everything inside, 0.4659 both times (two threads throughout: 0.4749, 0.4714)."""
    with _run_itk_threads_kept():
        os.environ[_ITK_THREADS] = str(count)
        yield


def resolve_models(names: dict[str, str]) -> dict[str, ModelEntry]:
    """``{role: entry}`` of the networks ``names`` gives (bundled names or entry paths); a model that
    cannot be found is left out with a printed message (its columns are skipped)."""
    found = {}
    for role, name in names.items():
        try:
            found[role] = find_model(name, "registration")
        except InputError as error:
            methods = [m for m, r in ROLE_OF.items() if r == role]
            print(f"model {name!r} ({role}) is not available ({error}): skipping {', '.join(methods)}")
    return found


def working_grid_copy(entry: ModelEntry, folder: Path) -> Path:
    """A copy of ``entry`` (weights and entry JSON) in ``folder`` whose ``working_grid`` never makes
    the network's grid coarser than the pipeline's working grid; returns the JSON's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / Path(entry.file).name
    shutil.copyfile(entry.path(), weights)
    copy = dataclasses.replace(entry, name=f"{entry.name}.working-grid", file=weights.name,
                               working_grid=dict(FULL_GRID), default=False, folder=folder)
    write_entry(copy, folder / "model.json")
    return folder / "model.json"


def _network_options(method: str, model: str, refine: int, device: str) -> SegmentOptions:
    iterations = refine if method == "net-diffeo+refine" else 0
    return SegmentOptions(model=model, fusion="mv", refine_iterations=iterations, device=device)


def build_methods(selected, ants, names: dict[str, str], entries: dict[str, ModelEntry], refine: int,
                  device: str, workdir: Path) -> dict[str, Callable[[Pair], Mapped]]:
    """The selected methods that can run, in :data:`METHODS` order.

    Args:
        selected: method names (a subset of :data:`METHODS`).
        ants: the antspyx module, or None (no ``syn``).
        names: ``{role: --model value}`` of the networks as the flags gave them.
        entries: ``{role: entry}`` of the networks found (:func:`resolve_models`).
        refine: instance-optimisation iterations of ``net-diffeo+refine``.
        device: ``SegmentOptions.device`` of ours.
        workdir: where the ``@working-grid`` copy of the diffeomorphic network goes.
    """
    methods = {}
    for method in (m for m in METHODS if m in selected):
        role = ROLE_OF.get(method)
        if method in ("identity", "affine"):
            methods[method] = run_identity if method == "identity" else run_affine
        elif method == "syn":
            if ants is not None:
                methods[method] = make_syn(ants)
        elif method == "instance-opt":
            options = SegmentOptions(model="instance-opt", fusion="mv", device=device)
            methods[method] = functools.partial(run_segment, options=options)
        elif role in entries:
            model = names[role]
            if method == "net-diffeo@working-grid":
                model = str(working_grid_copy(entries[role], Path(workdir) / "working-grid"))
            methods[method] = functools.partial(run_segment, options=_network_options(method, model, refine, device))
    return methods
