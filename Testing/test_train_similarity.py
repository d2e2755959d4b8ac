"""crossmodalmas.train.similarity: a tiny similarity training run, its folder, resume, refusals,
the validation figures and the ``train-similarity`` command."""

import json
import math

import numpy as np
import pytest
import torch

from crossmodalmas.errors import InputError
from crossmodalmas.models import find_model, load_network, sha256_of
from crossmodalmas.nets import build_network
from crossmodalmas.nets.similarity import SimilarityNet
from crossmodalmas.registration_engine import load_registration_model
from crossmodalmas.train.model_entry import write_model
from crossmodalmas.train.patches import patch_dice, random_offsets, sample_queries, triplets
from crossmodalmas.train.similarity import train_similarity, triplet_loss
from crossmodalmas.train.similarity_config import TrainSimilarityConfig
from crossmodalmas.train.similarity_validation import rank_figures
from crossmodalmas.train.warped_pairs import WarpedPair

# thr1/thr2 lowered from seed 000's 0.9/0.5: on 24³ "shapes" maps nearly every voxel is on a
# boundary and two nearest-neighbour resamplings keep every patch Dice below 0.9, so with the
# paper's thresholds no query has a positive, no step has a triplet and the weights never move
# (measured: 0 triplets in 6 pairs), which would make the resume test below vacuous.
TINY = dict(name="tiny-sim", sources=["shapes"], shape=[24, 24, 24], max_offset=1, candidates=4, queries=64,
            steps=4, validate_every=2, validation_pairs=2, threads=1, seed=1, positive_dice=0.6,
            negative_dice=0.4, net={"channels": [4, 8, 8, 8], "embedding": 4})
DEFAULT_REGISTRATION = "xmod-general-diffeo"


def _config(**changes) -> TrainSimilarityConfig:
    return TrainSimilarityConfig.from_dict({**TINY, **changes})


def _weights(folder):
    return torch.load(folder / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted tiny run: its folder and the path train_similarity returned."""
    folder = tmp_path_factory.mktemp("similarity_run")
    return folder, train_similarity(_config(), folder, show_progress=False)


def test_a_run_writes_weights_entry_log_and_figure(finished):
    folder, entry_path = finished
    assert entry_path == folder / "model.json"
    for name in ("config.json", "checkpoint.pt", "log.csv", "log.png", "model.pt", "model.json"):
        assert (folder / name).is_file(), name
    entry = find_model(str(entry_path), "similarity")
    assert entry.name == "tiny-sim" and entry.architecture == "similarity-net" and entry.task.value == "similarity"
    assert entry.sha256 == sha256_of(folder / "model.pt")
    assert entry.working_grid == {"spacing_mm": 1.0, "max_voxels": 24 ** 3}
    assert entry.arguments == {**_config().net.to_dict(), "channels": [4, 8, 8, 8], "embedding": 4}
    assert entry.arguments["input_features"] == "mind_ssc"
    assert entry.training["steps"] == 4 and entry.training["recipe"]["registration_model"] is None
    assert DEFAULT_REGISTRATION in entry.description  # the bundled default registration network warped the atlases
    assert set(entry.accuracy["synthetic_validation"]) == {"val_spearman", "val_spearman_within",
                                                           "val_triplet_accuracy"}
    net = load_network(entry)
    assert isinstance(net, SimilarityNet) and not net.training
    with torch.no_grad():
        assert net.logits(torch.zeros(1, 1, 13, 14, 15), torch.zeros(2, 1, 13, 14, 15)).shape == (2, 13, 14, 15)
    with pytest.raises(InputError, match=r"model 'tiny-sim' is a similarity model, a registration model is needed"):
        find_model(str(entry_path), "registration")
    rows = (folder / "log.csv").read_text().splitlines()
    assert rows[0] == "step,seconds,loss,triplets,triplet_accuracy,val_spearman,val_spearman_within,val_triplet_accuracy"
    assert [row.split(",")[0] for row in rows[1:]] == ["2", "4"]  # validate_every 2; loss rows every 10 steps
    assert json.loads((folder / "config.json").read_text()) == _config().to_dict()


def test_training_changes_the_weights(finished):
    folder, _ = finished
    torch.manual_seed(1)
    initial = build_network("similarity-net", _config().net.to_dict()).state_dict()
    trained = _weights(folder)
    assert set(trained) == set(initial)
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)


def test_stop_then_resume_equals_an_uninterrupted_run(finished, tmp_path):
    whole, _ = finished
    calls = {"n": 0}

    def stop_after_two():
        calls["n"] += 1
        return calls["n"] > 2

    partial = train_similarity(_config(), tmp_path, show_progress=False, should_stop=stop_after_two)
    assert partial == tmp_path / "checkpoint.pt" and not (tmp_path / "model.pt").exists()
    assert torch.load(partial, weights_only=True)["step"] == 2
    assert train_similarity(None, tmp_path, resume=True, show_progress=False) == tmp_path / "model.json"
    split, uninterrupted = _weights(tmp_path), _weights(whole)
    assert all(torch.allclose(split[k], uninterrupted[k], atol=1e-6) for k in uninterrupted)

    def without_seconds(folder):
        return [row.split(",")[:1] + row.split(",")[2:] for row in (folder / "log.csv").read_text().splitlines()]

    assert without_seconds(tmp_path) == without_seconds(whole)


def test_an_existing_run_is_never_overwritten(finished):
    folder, _ = finished
    before = {name: (folder / name).read_bytes() for name in ("model.pt", "model.json", "config.json")}
    with pytest.raises(InputError, match=r"--out .* already holds a training run; pass --resume to go on "
                                         r"with it, or choose another folder \(nothing was overwritten\)"):
        train_similarity(_config(), folder, show_progress=False)
    assert all((folder / name).read_bytes() == data for name, data in before.items())


def test_resume_refusals(finished, tmp_path):
    with pytest.raises(InputError, match=r"--resume: .* holds no training run \(no config.json\)"):
        train_similarity(None, tmp_path, resume=True, show_progress=False)
    with pytest.raises(InputError, match=r"train-similarity: --config is needed for a new run"):
        train_similarity(None, tmp_path, show_progress=False)
    folder, _ = finished
    with pytest.raises(InputError, match=r"--resume: --config differs from the run's"):
        train_similarity(_config(learning_rate=0.5), folder, resume=True, show_progress=False)


@pytest.mark.parametrize("values, message", [
    ({"positive_dice": 0.5, "negative_dice": 0.5},
     r"config: 'negative_dice' and 'positive_dice' must satisfy 0 <= negative < positive <= 1, got 0.5 and 0.5"),
    ({"positive_dice": 1.2}, r"must satisfy 0 <= negative < positive <= 1, got 0.4 and 1.2"),
    ({"negative_dice": -0.1}, r"must satisfy 0 <= negative < positive <= 1, got -0.1 and 0.6"),
    ({"candidates": 1}, r"'candidates' must be >= 2, 'queries' >= 1 and 'max_offset' >= 1, got 1, 64, 1"),
    ({"queries": 0}, r"'candidates' must be >= 2, 'queries' >= 1 and 'max_offset' >= 1, got 4, 0, 1"),
    ({"max_offset": 0}, r"'candidates' must be >= 2, 'queries' >= 1 and 'max_offset' >= 1, got 4, 64, 0"),
    ({"true_field_fraction": 1.5}, r"'true_field_fraction' must be in \[0, 1\], got 1.5"),
    ({"shape": [24, 16, 24]}, r"'shape' \[24, 16, 24\] is too small for 15³ patches shifted by up to 1 voxels: "
                              r"every side needs at least 17"),
    ({"max_offset": 5}, r"'shape' \[24, 24, 24\] is too small .* up to 5 voxels: every side needs at least 25"),
    ({"net": {"channels": [4, 8]}}, r"'channels' must be four positive ints"),
    ({"device": "tpu"}, r"'tpu' is not a valid DeviceChoice"),
    ({"querys": 3}, r"config: unknown key\(s\) querys"),
])
def test_bad_configs_are_refused(values, message):
    with pytest.raises(InputError, match=message):
        TrainSimilarityConfig.from_dict({**TINY, **values})


def test_the_smallest_shape_and_the_margin():
    assert _config(shape=[17, 17, 17]).margin == 8  # 15³ patch radius 7 + max_offset 1
    assert _config(max_offset=3, shape=[21, 30, 21]).margin == 10


def test_config_round_trips_through_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_config().to_dict()))
    assert TrainSimilarityConfig.from_json(path) == _config()


def test_instance_optimisation_is_refused_as_bad_input(tmp_path):
    with pytest.raises(InputError, match=r"^train-similarity: 'registration_model' must name a registration "
                                         r"network, not 'instance-opt'$"):
        train_similarity(_config(registration_model="instance-opt"), tmp_path, show_progress=False)


def test_a_refused_registration_model_leaves_the_folder_free(tmp_path):
    with pytest.raises(InputError, match=r"no-such-registration: no such registration model"):
        train_similarity(_config(registration_model="no-such-registration"), tmp_path, show_progress=False)
    assert not (tmp_path / "config.json").exists()


def test_model_entry_is_strict_json(finished, tmp_path):
    folder, _ = finished

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    json.loads((folder / "model.json").read_text(), parse_constant=refuse)
    # a figure that could not be measured (NaN: no ranked pair) is written as null
    net = load_network(find_model(str(folder / "model.json"), "similarity"))
    entry = write_model(net, _config(), "similarity-net", {"val_triplet_accuracy": math.nan}, 1.0, tmp_path,
                        task="similarity", working_grid={"spacing_mm": 1.0, "max_voxels": 8}, description="")
    accuracy = json.loads(entry.read_text(), parse_constant=refuse)["accuracy"]["synthetic_validation"]
    assert accuracy == {"val_triplet_accuracy": None}


def test_rank_figures_of_a_perfect_and_a_reversed_ranking():
    dice = np.array([[0.95, 0.3, 0.92, 0.4], [0.1, 0.97, 0.6, 0.45], [0.2, 0.8, 0.91, 0.0]])
    perfect = rank_figures(dice * 3 - 7, dice)  # any increasing map of the Dice
    assert perfect == {"val_spearman": pytest.approx(1.0), "val_spearman_within": pytest.approx(1.0),
                       "val_triplet_accuracy": 1.0}
    reversed_ = rank_figures(-dice, dice)
    assert reversed_ == {"val_spearman": pytest.approx(-1.0), "val_spearman_within": pytest.approx(-1.0),
                         "val_triplet_accuracy": 0.0}


def test_rank_figures_by_hand():
    # Query 0: positives (Dice > 0.9) 0 and 2, negatives (< 0.5) 1 and 3; of the four pairs
    # only (0, 1) is ranked right. Query 1 has no positive: it counts in the Spearman figures only.
    dice = np.array([[0.95, 0.3, 0.92, 0.4], [0.6, 0.7, 0.8, 0.55]])
    logits = np.array([[1.0, 0.0, -1.0, 2.0], [0.6, 0.7, 0.8, 0.55]])
    figures = rank_figures(logits, dice)
    assert figures["val_triplet_accuracy"] == 0.25
    # within: query 0's ranks (4, 1, 3, 2) against (3, 2, 1, 4): rho = 1 - 6 * 10 / 60 = 0; query 1: 1
    assert figures["val_spearman_within"] == pytest.approx(0.5)
    # Exactly 0.9 and 0.5 are neither: no pair to rank; constant Dice: no pooled rho either.
    empty = rank_figures(np.array([[1.0, 0.0]]), np.array([[0.9, 0.5]]))
    assert math.isnan(empty["val_triplet_accuracy"])
    flat = rank_figures(np.array([[1.0, 0.0, 2.0]]), np.full((1, 3), 0.7))
    assert all(math.isnan(v) for v in flat.values())


def _warped_cube_pair():
    """A target and an identical 'warped atlas' (images = labels): a 6³ cube (voxels 8..13) of
    label 1 in a 24³ grid; with max_offset 3 the queries lie in 10..13, on its far faces."""
    labels = torch.zeros((1, 24, 24, 24), dtype=torch.int64)
    labels[:, 8:14, 8:14, 8:14] = 1
    image = labels[:, None].float()
    return WarpedPair(target=image, target_labels=labels, atlas=image.clone(), atlas_labels=labels.clone())


def test_triplet_loss_is_the_cross_entropy_of_the_pairs():
    torch.manual_seed(0)
    net = SimilarityNet(channels=(4, 8, 8, 8), embedding=4, input_features="image", descriptor_skip=False)
    config = _config(max_offset=3, candidates=12)
    pair = _warped_cube_pair()
    terms = triplet_loss(net, pair, config, torch.Generator().manual_seed(0))
    assert terms["triplets"] == 37.0  # every query on the cube's far faces inside the margin
    # The same draws again, the distances read voxel by voxel from the dense embeddings.
    generator = torch.Generator().manual_seed(0)
    queries = sample_queries(pair.target_labels[0], config.queries, config.margin, generator)
    offsets = random_offsets(queries.shape[0], config.candidates, config.max_offset, generator)
    dice = patch_dice(pair.target_labels[0], pair.atlas_labels[0], queries, offsets)
    rows, positives, negatives = triplets(dice, config.positive_dice, config.negative_dice, generator)
    with torch.no_grad():
        query, support = net.embed_target(pair.target)[0], net.embed_atlas(pair.atlas)[0]
    logits = []
    for row, positive, negative in zip(rows.tolist(), positives.tolist(), negatives.tolist()):
        k, j, i = queries[row].tolist()
        distances = []
        for candidate in (positive, negative):
            dk, dj, di = offsets[row, candidate].tolist()
            difference = query[:, k, j, i] - support[:, k + dk, j + dj, i + di]
            distances.append(float(difference.square().sum() + 1e-8) ** 0.5)
        logits.append([-d for d in distances])
    logits = torch.tensor(logits)
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["triplet_accuracy"] == pytest.approx(float((logits[:, 0] > logits[:, 1]).float().mean()))
    terms["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_a_step_without_triplets_is_a_zero_loss_that_keeps_the_graph():
    net = SimilarityNet(channels=(4, 8, 8, 8), embedding=4, input_features="image", descriptor_skip=False)
    config = _config(positive_dice=0.999999, negative_dice=0.0)  # nothing is below 0
    terms = triplet_loss(net, _warped_cube_pair(), config, torch.Generator().manual_seed(0))
    assert terms["triplets"] == 0.0 and math.isnan(terms["triplet_accuracy"])
    assert terms["total"].item() == 0.0 and terms["total"].requires_grad


def test_the_command_trains_and_prints_the_entry(cli, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "steps": 2}))
    out = tmp_path / "run"
    run = cli("train-similarity", "--config", config, "--out", out, "--quiet")
    assert run.code == 0, run.err
    assert run.out.strip() == str(out / "model.json")
    assert find_model(str(out / "model.json"), "similarity").training["steps"] == 2
    again = cli("train-similarity", "--config", config, "--out", out, "--quiet")
    assert again.code == 2 and "already holds a training run" in again.error_line()


def test_the_default_registration_network_is_bundled():
    model = load_registration_model(None, torch.device("cpu"))
    assert model is not None and model.name == DEFAULT_REGISTRATION


class _FakeRun:
    """A Trainable whose steps, validations and checkpoints are only recorded."""

    def __init__(self, steps, validate_every, checkpoint_minutes, tmp_path):
        from crossmodalmas.train.log import TrainingLog

        self.config = TrainSimilarityConfig(steps=steps, validate_every=validate_every,
                                            checkpoint_minutes=checkpoint_minutes, shape=(17, 17, 17), max_offset=1)
        self.log = TrainingLog(tmp_path, ["step", "seconds", "loss", "extra", "val"])
        self.step, self.seconds, self.events = 0, 0.0, []

    def train_step(self):
        self.events.append("step")
        return {"total": float(self.step), "extra": 1.5}

    def validate(self):
        self.events.append("validate")
        return {"val": 0.5}

    def checkpoint(self):
        self.events.append("checkpoint")


def test_the_loop_logs_validates_and_checkpoints_on_schedule(tmp_path):
    from crossmodalmas.train.loop import LOG_EVERY, train_loop

    run = _FakeRun(steps=25, validate_every=8, checkpoint_minutes=1e9, tmp_path=tmp_path)
    train_loop(run, "test", False, lambda: False)
    assert run.step == 25 and run.events.count("step") == 25 and "checkpoint" not in run.events
    assert run.events.count("validate") == 4  # steps 8, 16, 24 and the last
    rows = run.log.rows()
    assert [int(r["step"]) for r in rows] == [8, 10, 16, 20, 24, 25]
    assert LOG_EVERY == 10 and rows[1]["loss"] == "9" and rows[1]["extra"] == "1.5" and rows[1]["val"] == ""
    assert rows[0]["loss"] == "" and rows[0]["val"] == "0.5" and rows[-1]["val"] == "0.5"

    (tmp_path / "b").mkdir()
    every = _FakeRun(steps=3, validate_every=100, checkpoint_minutes=0.0, tmp_path=tmp_path / "b")
    calls = iter([False, False, True])
    train_loop(every, "test", False, lambda: next(calls))
    assert every.step == 2 and every.events == ["step", "checkpoint", "step", "checkpoint"]
