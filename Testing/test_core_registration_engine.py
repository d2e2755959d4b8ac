"""crossmodalmas.registration_engine and segment() with a network: one pass, refinement,
the network's grid, and the out-of-memory fallback."""

import numpy as np
import pytest
import torch

from crossmodalmas.atlases import Atlas
from crossmodalmas.models import find_model
from crossmodalmas.options import SegmentOptions
from crossmodalmas.pipeline import segment
from crossmodalmas import registration_engine
from crossmodalmas.registration_engine import (deformable_registration, load_registration_model, network_fields,
                                               network_shape)
from crossmodalmas.train.config import TrainRegistrationConfig
from crossmodalmas.train.registration import train_registration
from conftest import phantom

TINY_MODEL = dict(name="tiny-engine", sources=["shapes"], shape=[16, 16, 16], steps=2, validate_every=2,
                  validation_pairs=1, max_loss_labels=4, seed=3, threads=1,
                  net={"channels": [4, 8], "output_level": 0, "input_downsample": 2})


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    """A registration network trained for two steps: real weights, real entry, tiny."""
    folder = tmp_path_factory.mktemp("tiny_model")
    return str(train_registration(TrainRegistrationConfig.from_dict(TINY_MODEL), folder, show_progress=False))


@pytest.fixture(scope="module")
def case():
    target, truth = phantom(0, "ct", shape=(32, 36, 36))
    return target, truth, [Atlas(f"mr{i}", *phantom(i, "mr", shape=(32, 36, 36))) for i in (1, 2)]


def test_instance_opt_needs_no_model():
    assert load_registration_model("instance-opt", torch.device("cpu")) is None


def test_network_shape_keeps_the_extent_within_the_model_scale(tiny_model_path):
    entry = find_model(tiny_model_path, "registration")  # max 16^3 voxels, finest 1 mm
    assert network_shape((32, 32, 32), 2.0, entry) == (16, 16, 16)
    assert network_shape((8, 8, 8), 2.0, entry) == (8, 8, 8)  # never finer than the working grid
    small = network_shape((40, 20, 20), 1.0, entry)
    assert abs(small[0] - 2 * small[1]) <= 1 and np.prod(small) <= 16 ** 3 * 1.2


def test_network_fields_come_back_on_the_working_grid(tiny_model_path):
    model = load_registration_model(tiny_model_path, torch.device("cpu"))
    target, atlases = torch.rand(1, 1, 20, 24, 28), torch.rand(3, 1, 20, 24, 28)
    fields = network_fields(model, target, atlases, 2.0, warn=pytest.fail)
    assert fields.forward.shape == fields.backward.shape == fields.velocity.shape == (3, 3, 20, 24, 28)


def test_cuda_out_of_memory_halves_the_batch_and_says_so(tiny_model_path, monkeypatch):
    model = load_registration_model(tiny_model_path, torch.device("cpu"))
    real = model.net.predict
    batches = []

    def predict(atlas, target):
        batches.append(atlas.shape[0])
        if atlas.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(atlas, target)

    monkeypatch.setattr(model.net, "predict", predict)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(registration_engine, "CPU_CHUNK", 4)  # as on CUDA: all atlases in one batch first
    warnings = []
    fields = network_fields(model, torch.rand(1, 1, 16, 16, 16), torch.rand(4, 1, 16, 16, 16), 2.0,
                            warn=warnings.append)
    assert fields.forward.shape[0] == 4 and batches[:3] == [4, 2, 1]
    assert warnings == ["registration network: CUDA out of memory; retrying 2 atlas(es) at a time",
                        "registration network: CUDA out of memory; retrying 1 atlas(es) at a time"]


def test_the_cpu_network_pass_takes_one_atlas_at_a_time(tiny_model_path, monkeypatch):
    model = load_registration_model(tiny_model_path, torch.device("cpu"))
    real, batches = model.net.predict, []
    monkeypatch.setattr(model.net, "predict", lambda atlas, target: batches.append(atlas.shape[0]) or real(atlas, target))
    target, atlases = torch.rand(1, 1, 16, 16, 16), torch.rand(3, 1, 16, 16, 16)
    fields = network_fields(model, target, atlases, 2.0, warn=pytest.fail)
    assert batches == [1, 1, 1]
    alone = network_fields(model, target, atlases[1:2], 2.0, warn=pytest.fail)
    assert torch.allclose(fields.forward[1:2], alone.forward, atol=1e-6)


def test_chunked_instance_optimisation_gives_the_fields_of_one_batch(monkeypatch):
    torch.manual_seed(0)
    target, atlases = torch.rand(1, 4, 12, 12, 12), torch.rand(3, 4, 12, 12, 12)
    support = torch.rand(3, 1, 12, 12, 12) > 0.3  # each chunk must get its own atlases' support

    def run(chunk):
        monkeypatch.setattr(registration_engine, "CPU_CHUNK", chunk)
        reported = []
        fields = deformable_registration(None, None, None, target, atlases, 2.0, 3, 0.01,
                                         progress=reported.append, cancel=lambda: False, warn=pytest.fail,
                                         support=support)
        return fields, reported

    (one, _), (chunked, reported) = run(3), run(2)
    assert torch.allclose(one.forward, chunked.forward, atol=1e-5)
    assert torch.allclose(one.backward, chunked.backward, atol=1e-5)
    assert reported == sorted(reported) and reported[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("refine", [0, 4])
def test_segment_with_a_network_model_and_refinement(case, tiny_model_path, refine):
    target, _, atlases = case
    result = segment(target, atlases, SegmentOptions(model=tiny_model_path, refine_iterations=refine,
                                                     max_working_voxels=24 ** 3))
    assert result.registration == "tiny-engine" and result.report()["registration"] == "tiny-engine"
    assert result.labels.array.shape == target.array.shape
    assert all(q.folding_percent < 0.5 for q in result.qc)
    assert "register" in result.timings


def test_refinement_improves_on_an_untrained_network(case, tiny_model_path):
    """Two training steps leave the network near the identity; refinement must do the rest."""
    from crossmodalmas.metrics import dice

    target, truth, atlases = case
    scores = []
    for refine in (0, 30):
        result = segment(target, atlases, SegmentOptions(model=tiny_model_path, refine_iterations=refine,
                                                         max_working_voxels=24 ** 3, fusion="mv"))
        scores.append(np.mean(list(dice(result.labels.array, truth.array).values())))
    assert scores[1] > scores[0]


def test_negative_refinement_is_refused():
    with pytest.raises(ValueError, match=r"SegmentOptions: 'refine_iterations' must be >= 0, got -1"):
        SegmentOptions(refine_iterations=-1)
