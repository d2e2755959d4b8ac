"""crossmodalmas.train: a tiny registration training run, its folder, resume and refusals."""

import json

import pytest
import torch

from crossmodalmas.errors import InputError
from crossmodalmas.models import find_model, load_network, sha256_of
from crossmodalmas.nets import build_network
from crossmodalmas.train.config import TrainRegistrationConfig
from crossmodalmas.train.registration import train_registration

TINY = dict(name="tiny", sources=["shapes"], shape=[16, 16, 16], steps=4, validate_every=2,
            validation_pairs=2, max_loss_labels=4, seed=1, threads=1,
            net={"channels": [4, 8], "output_level": 0, "input_downsample": 2, "mode": "paper"})


def _config(**changes) -> TrainRegistrationConfig:
    return TrainRegistrationConfig.from_dict({**TINY, **changes})


def test_a_run_writes_weights_entry_log_and_figure(tmp_path):
    entry_path = train_registration(_config(), tmp_path, show_progress=False)
    assert entry_path == tmp_path / "model.json"
    for name in ("config.json", "checkpoint.pt", "log.csv", "log.png", "model.pt"):
        assert (tmp_path / name).is_file(), name
    entry = find_model(str(entry_path), "registration")
    assert entry.sha256 == sha256_of(tmp_path / "model.pt")
    assert entry.training["steps"] == 4 and entry.arguments["mode"] == "paper"
    assert 0.0 <= entry.accuracy["synthetic_validation"]["val_dice"] <= 1.0
    net = load_network(entry)
    forward, backward = net(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16))
    assert forward.shape == backward.shape == (1, 3, 16, 16, 16)
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,seconds,loss") and len(rows) >= 3


def test_training_changes_the_weights_deterministically(tmp_path):
    train_registration(_config(), tmp_path / "a", show_progress=False)
    train_registration(_config(), tmp_path / "b", show_progress=False)
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(1)
    initial = build_network("consistent-registration-net", _config().net.to_dict()).state_dict()
    assert any(not torch.equal(initial[k], a[k]) for k in a)


def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path):
    calls = {"n": 0}

    def stop_after_two():
        calls["n"] += 1
        return calls["n"] > 2

    partial = train_registration(_config(), tmp_path / "split", show_progress=False, should_stop=stop_after_two)
    assert partial.name == "checkpoint.pt" and not (tmp_path / "split" / "model.pt").exists()
    train_registration(None, tmp_path / "split", resume=True, show_progress=False)
    train_registration(_config(), tmp_path / "whole", show_progress=False)
    split = torch.load(tmp_path / "split" / "model.pt", weights_only=True)["state_dict"]
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(split[k], whole[k], atol=1e-6) for k in whole)


def test_resume_can_extend_a_finished_run(tmp_path):
    train_registration(_config(), tmp_path, show_progress=False)
    train_registration(None, tmp_path, resume=True, show_progress=False, steps=6)
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 6
    assert json.loads((tmp_path / "model.json").read_text())["training"]["steps"] == 6


def test_diffeomorphic_and_label_constrained_variants_train(tmp_path):
    config = _config(loss="label_constrained", steps=2,
                     net={**TINY["net"], "mode": "diffeomorphic"}, synth={"same_contrast": True})
    assert train_registration(config, tmp_path, show_progress=False).is_file()


def test_an_existing_run_is_never_overwritten(tmp_path):
    train_registration(_config(), tmp_path, show_progress=False)
    before = (tmp_path / "model.pt").read_bytes()
    with pytest.raises(InputError, match=r"already holds a training run; pass --resume"):
        train_registration(_config(), tmp_path, show_progress=False)
    assert (tmp_path / "model.pt").read_bytes() == before


@pytest.mark.parametrize("values, message", [
    ({"stepz": 3}, r"unknown key\(s\) stepz"),
    ({"loss": "mse"}, r"'mse' is not a valid LossKind"),
    ({"net": {"mode": "free"}}, r"'free' is not a valid FieldMode"),
])
def test_bad_configs_are_refused(values, message):
    with pytest.raises(InputError, match=message):
        TrainRegistrationConfig.from_dict({**TINY, **values})


def test_resume_without_a_run_and_a_different_config_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"--resume: .* holds no training run"):
        train_registration(None, tmp_path, resume=True, show_progress=False)
    train_registration(_config(), tmp_path, show_progress=False)
    with pytest.raises(InputError, match=r"--resume: --config differs from the run's"):
        train_registration(_config(learning_rate=0.5), tmp_path, resume=True, show_progress=False)
