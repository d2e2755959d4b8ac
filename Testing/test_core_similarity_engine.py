"""crossmodalmas.similarity_engine: PLF logits only inside the box where atlases disagree, as
the whole image's; the network's own scale; one atlas per pass on the CPU; loading a
similarity model by name or path."""

import json

import pytest
import torch

from crossmodalmas.errors import InputError
from crossmodalmas.models import ModelEntry, sha256_of, write_entry
from crossmodalmas.nets.similarity import SimilarityNet
from crossmodalmas.registration_engine import network_shape
from crossmodalmas.similarity_engine import SimilarityModel, load_similarity_model, similarity_logits

SHAPE = (40, 41, 42)
TRAINING = {key: None for key in ("recipe", "data", "steps", "seconds", "machine")}


def _entry(net, max_voxels=10 ** 7, name="tiny-sim", file="model.pt", sha256="0" * 64, folder=None):
    return ModelEntry(name=name, file=file, sha256=sha256, task="similarity", architecture="similarity-net",
                      arguments=net.config.to_dict(), working_grid={"spacing_mm": 1.0, "max_voxels": max_voxels},
                      normalisation="percentile-0.5-99.5-to-0-1", training=dict(TRAINING), folder=folder)


def _model(max_voxels=10 ** 7, features="image"):
    """An untrained network. ``image`` input: MIND-SSC floors its local variance at a share of
    the *whole* input's mean variance, so with it a crop could embed differently from the full
    image for a reason that has nothing to do with the crop's context."""
    torch.manual_seed(0)
    net = SimilarityNet(channels=(4, 8, 8, 8), embedding=4, input_features=features,
                        descriptor_skip=features == "mind_ssc").eval()
    return SimilarityModel(_entry(net, max_voxels), net)


def _images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 1, *SHAPE), generator=g), torch.rand((n, 1, *SHAPE), generator=g)


def _where(*voxels):
    where = torch.zeros(SHAPE, dtype=torch.bool)
    for voxel in voxels:
        where[voxel] = True
    return where


def _inside(box):
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[box] = True
    return mask


def test_the_network_runs_at_the_working_grid_when_it_fits():
    assert network_shape(SHAPE, 1.0, _model().entry) == SHAPE


# Boxes whose crop (box +- HALO, clipped to the grid) starts on even voxels along every axis,
# so the crop's stride-2 grid is the full image's (see the xfail test below for odd starts):
# an interior box, one clipped at the grid's start, one reaching the grid's end.
@pytest.mark.parametrize("voxels", [
    [(12, 14, 16), (15, 19, 18)],
    [(2, 3, 0), (5, 4, 6)],
    [(24, 30, 36), (39, 40, 41)],
])
def test_inside_the_box_the_logits_are_the_whole_images(voxels):
    model = _model()
    target, atlases = _images()
    where = _where(*voxels)
    logits = similarity_logits(model, target, atlases, where, 1.0)
    assert logits.shape == (3, *SHAPE) and logits.dtype == torch.float32
    box = tuple(slice(min(v[a] for v in voxels), max(v[a] for v in voxels) + 1) for a in range(3))
    inside = _inside(box)
    with torch.no_grad():
        whole = model.net.logits(target, atlases)
    torch.testing.assert_close(logits[:, inside], whole[:, inside], atol=1e-4, rtol=0)
    assert (logits[:, inside] < 0).all()  # the whole box, not only the voxels of `where`
    assert (logits[:, ~inside] == 0).all()


def test_inside_an_odd_box_the_logits_are_the_whole_images():
    model = _model()
    target, atlases = _images()
    where = _where((13, 14, 16), (15, 19, 18))  # crop starts at voxel 3 along k
    logits = similarity_logits(model, target, atlases, where, 1.0)
    inside = _inside((slice(13, 16), slice(14, 20), slice(16, 19)))
    with torch.no_grad():
        whole = model.net.logits(target, atlases)
    torch.testing.assert_close(logits[:, inside], whole[:, inside], atol=1e-4, rtol=0)


def test_mind_ssc_logits_inside_the_box_are_the_whole_images():
    # Uniform noise: MIND-SSC's global variance floor does not bind, so only the context counts.
    model = _model(features="mind_ssc")
    target, atlases = _images()
    where = _where((12, 12, 12), (15, 15, 15))  # crop 2..25 along every axis
    logits = similarity_logits(model, target, atlases, where, 1.0)
    inside = _inside((slice(12, 16),) * 3)
    with torch.no_grad():
        whole = model.net.logits(target, atlases)
    torch.testing.assert_close(logits[:, inside], whole[:, inside], atol=1e-4, rtol=0)


def test_nothing_to_decide_gives_zeros_without_a_network_pass():
    model = _model()
    target, atlases = _images()

    def refuse(*_):
        raise AssertionError("the network ran")

    model.net.embed_target = model.net.embed_atlas = refuse
    logits = similarity_logits(model, target, atlases, torch.zeros(SHAPE, dtype=torch.bool), 1.0)
    assert logits.shape == (3, *SHAPE) and logits.dtype == torch.float32
    assert not logits.any()


def test_a_larger_working_grid_runs_the_network_on_its_own_smaller_grid():
    """max_voxels 20³ for a 40 x 41 x 42 region: the network sees the crop at about half size,
    and the logits come back interpolated on the working grid."""
    model = _model(max_voxels=20 ** 3)
    seen = []
    embed_target = model.net.embed_target
    model.net.embed_target = lambda image: seen.append(tuple(image.shape[2:])) or embed_target(image)
    target, atlases = _images(n=2)
    where = _where((18, 18, 18), (23, 24, 25))
    logits = similarity_logits(model, target, atlases, where, 1.0)
    assert logits.shape == (2, *SHAPE)
    inside = _inside((slice(18, 24), slice(18, 25), slice(18, 26)))
    assert (logits[:, inside] < 0).all() and (logits[:, ~inside] == 0).all()
    # HALO voxels of the network's grid are about 20 working voxels: the crop is the whole grid,
    # which the network sees at its own scale.
    assert seen == [network_shape(SHAPE, 1.0, model.entry)] == [(20, 20, 20)]


def test_an_atlas_logit_depends_on_that_atlas_only():
    model = _model()
    target, atlases = _images()
    where = _where((12, 14, 16), (15, 19, 18))
    first = similarity_logits(model, target, atlases, where, 1.0)
    changed = atlases.clone()
    changed[1] = 1.0 - changed[1]
    second = similarity_logits(model, target, changed, where, 1.0)
    assert torch.equal(first[[0, 2]], second[[0, 2]]) and not torch.equal(first[1], second[1])


def test_on_the_cpu_the_atlases_are_embedded_one_at_a_time_with_the_logits_of_one_batch(monkeypatch):
    from crossmodalmas import registration_engine

    model = _model()
    target, atlases = _images()
    where = _where((12, 14, 16), (15, 19, 18))
    real, batches = model.net.embed_atlas, []
    monkeypatch.setattr(model.net, "embed_atlas", lambda images: batches.append(images.shape[0]) or real(images))
    one_by_one = similarity_logits(model, target, atlases, where, 1.0)
    assert batches == [1, 1, 1]
    monkeypatch.setattr(registration_engine, "CPU_CHUNK", 3)  # as on CUDA: one batch
    batches.clear()
    together = similarity_logits(model, target, atlases, where, 1.0)
    assert batches == [3]
    assert torch.allclose(one_by_one, together, atol=1e-6) and one_by_one.abs().max() > 0


def test_loading_a_model_entry_written_beside_its_weights(tmp_path):
    model = _model()
    torch.save({"config": model.net.config.to_dict(), "state_dict": model.net.state_dict(), "version": "test"},
               tmp_path / "model.pt")
    write_entry(_entry(model.net, sha256=sha256_of(tmp_path / "model.pt")), tmp_path / "model.json")
    loaded = load_similarity_model(str(tmp_path / "model.json"), torch.device("cpu"))
    assert loaded.name == "tiny-sim" and isinstance(loaded.net, SimilarityNet) and not loaded.net.training
    state = model.net.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.net.state_dict().items())
    assert json.loads((tmp_path / "model.json").read_text())["task"] == "similarity"


def test_unknown_and_wrong_task_models_are_refused():
    with pytest.raises(InputError) as error:
        load_similarity_model("no-such-net", torch.device("cpu"))
    assert str(error.value).startswith("--similarity-model no-such-net: no such similarity model")
    with pytest.raises(InputError, match=r"^--similarity-model xmod-general-diffeo: is a registration model, "
                                         r"a similarity model is needed here"):
        load_similarity_model("xmod-general-diffeo", torch.device("cpu"))
    with pytest.raises(InputError, match=r"^--similarity-model /no/such/model.json: does not exist"):
        load_similarity_model("/no/such/model.json", torch.device("cpu"))
