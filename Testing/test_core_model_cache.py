"""crossmodalmas.model_cache: networks load once per process and device; a damaged or
replaced weights file is still caught on a cache hit."""

import shutil

import pytest
import torch

from crossmodalmas import model_cache
from crossmodalmas.atlases import Atlas
from crossmodalmas.errors import InputError
from crossmodalmas.models import bundled_models_dir
from crossmodalmas.options import SegmentOptions
from crossmodalmas.pipeline import segment
from crossmodalmas.registration_engine import load_registration_model
from crossmodalmas.similarity_engine import load_similarity_model
from conftest import phantom


@pytest.fixture
def torch_loads(monkeypatch):
    """An empty cache, and a list that records the path of every ``torch.load`` call."""
    model_cache.clear_cache()
    calls = []
    real = torch.load

    def counting_load(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    yield calls
    model_cache.clear_cache()


def test_second_segment_call_loads_no_network(torch_loads):
    target, _ = phantom(1, "ct", shape=(24, 24, 24), spacing=(4.0, 4.0, 4.0))
    atlases = [Atlas("mr6", *phantom(6, "mr", shape=(24, 24, 24), spacing=(4.0, 4.0, 4.0)))]
    options = SegmentOptions(refine_iterations=0, fusion="plf", device="cpu")  # both bundled networks
    first = segment(target, atlases, options)
    assert sorted(p.rsplit("/", 1)[-1] for p in torch_loads) == ["xmod-general-diffeo.pt", "xmod-similarity.pt"]
    second = segment(target, atlases, options)
    assert len(torch_loads) == 2
    assert (second.labels.array == first.labels.array).all()


def test_cache_is_keyed_by_model_and_cleared_on_request(torch_loads):
    cpu = torch.device("cpu")
    diffeo = load_registration_model(None, cpu)
    assert load_registration_model("xmod-general-diffeo", cpu).net is diffeo.net
    paper = load_registration_model("xmod-general-paper", cpu)
    assert paper.net is not diffeo.net and len(torch_loads) == 2
    model_cache.clear_cache()
    assert load_registration_model(None, cpu).net is not diffeo.net and len(torch_loads) == 3


def test_damaged_weights_fail_on_a_cache_hit(torch_loads, tmp_path):
    for name in ("models.json", "xmod-similarity.pt"):
        shutil.copy(bundled_models_dir() / name, tmp_path / name)
    cpu = torch.device("cpu")
    load_similarity_model(str(tmp_path), cpu)
    load_similarity_model(str(tmp_path), cpu)
    assert len(torch_loads) == 1
    with open(tmp_path / "xmod-similarity.pt", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(InputError, match=r"model 'xmod-similarity': sha256 mismatch for .*xmod-similarity\.pt: "
                                         r"expected [0-9a-f]{64}, got [0-9a-f]{64}; the file is damaged or was replaced"):
        load_similarity_model(str(tmp_path), cpu)


def test_cache_keeps_at_most_max_networks(torch_loads, monkeypatch):
    monkeypatch.setattr(model_cache, "MAX_NETWORKS", 2)
    cpu = torch.device("cpu")
    for name in ("xmod-general-diffeo", "xmod-general-paper", "xmod-general-paper-noinv", "xmod-general-diffeo"):
        load_registration_model(name, cpu)
    assert len(torch_loads) == 4  # the first was dropped when the third came in
    load_registration_model("xmod-general-paper-noinv", cpu)
    assert len(torch_loads) == 4
