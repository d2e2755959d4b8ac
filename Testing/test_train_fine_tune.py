"""Fine-tuning (``--init``, config ``init``): starting from a model's weights, the architecture
check, the model's own recipe as the config, ``--set`` overrides, and the refusals."""

import json

import pytest
import torch

from crossmodalmas.errors import InputError
from crossmodalmas.models import find_model
from crossmodalmas.train.command import apply_overrides
from crossmodalmas.train.config import TrainRegistrationConfig
from crossmodalmas.train.fine_tune import FINE_TUNED_SUFFIX, init_entry, init_recipe
from crossmodalmas.train.registration import ARCHITECTURE, train_registration

NET = {"channels": [4, 8], "output_level": 0, "input_downsample": 2, "mode": "paper"}
TINY = dict(name="tiny", sources=["shapes"], shape=[16, 16, 16], steps=2, validate_every=2, validation_pairs=1,
            max_loss_labels=4, seed=1, threads=1, net=NET)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model to start from: its model.json path."""
    return train_registration(TrainRegistrationConfig.from_dict(TINY), tmp_path_factory.mktemp("base"),
                              show_progress=False)


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_a_fine_tuned_run_starts_from_the_model_and_records_it(trained, tmp_path):
    # A learning rate of 0: the run's weights stay exactly those it started from.
    config = TrainRegistrationConfig.from_dict({**TINY, "init": str(trained), "learning_rate": 0.0, "seed": 7})
    entry = json.loads(train_registration(config, tmp_path, show_progress=False).read_text())
    start, end = _weights(trained.parent / "model.pt"), _weights(tmp_path / "model.pt")
    assert all(torch.equal(start[k], end[k]) for k in start)
    assert entry["training"]["recipe"]["init"] == str(trained)
    assert "fine-tuned from" in entry["description"]
    scratch = TrainRegistrationConfig.from_dict({**TINY, "learning_rate": 0.0, "seed": 7})
    train_registration(scratch, tmp_path / "scratch", show_progress=False)
    fresh = _weights(tmp_path / "scratch" / "model.pt")
    assert any(not torch.equal(start[k], fresh[k]) for k in start)  # a run without init starts elsewhere


def test_another_network_is_refused_naming_both(trained, tmp_path):
    config = TrainRegistrationConfig.from_dict({**TINY, "init": str(trained), "net": {**NET, "channels": [4, 4]}})
    with pytest.raises(InputError, match=r"^--init .*model.json: model architecture consistent-registration-net "
                                         r"\{.*\"channels\": \[4, 8\].*\} differs from the run's config net "
                                         r"consistent-registration-net \{.*\"channels\": \[4, 4\].*\}; fine-tuning "
                                         r"needs the same network$"):
        train_registration(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()  # refused before the folder was claimed
    bundled = TrainRegistrationConfig.from_dict({**TINY, "init": "xmod-general-diffeo"})
    with pytest.raises(InputError, match=r"^--init xmod-general-diffeo: model architecture"):
        init_entry(bundled, "registration", ARCHITECTURE)
    with pytest.raises(InputError, match=r"^--init xmod-similarity: is a similarity model, a registration model"):
        init_entry(TrainRegistrationConfig.from_dict({**TINY, "init": "xmod-similarity"}), "registration",
                   ARCHITECTURE)


def test_the_bundled_models_recipe_is_a_fine_tuning_config():
    values = init_recipe("xmod-general-diffeo", "registration")
    assert values["name"] == "xmod-general-diffeo" + FINE_TUNED_SUFFIX and values["init"] == "xmod-general-diffeo"
    config = TrainRegistrationConfig.from_dict(values)
    assert init_entry(config, "registration", ARCHITECTURE) == find_model("xmod-general-diffeo", "registration")


def test_overrides_set_plain_and_nested_fields():
    values = {"steps": 10, "synth": {"noise_std": 0.05}, "dataset": None}
    out = apply_overrides(values, ["steps=3", "synth.noise_std=0.1", "dataset=/data/my cases", "crop_labels=[205]"])
    assert out == {"steps": 3, "synth": {"noise_std": 0.1}, "dataset": "/data/my cases", "crop_labels": [205]}
    assert values["steps"] == 10  # the input is not modified
    with pytest.raises(InputError, match=r"^--set steps: expected KEY=VALUE, e.g. --set steps=500$"):
        apply_overrides(values, ["steps"])
    with pytest.raises(InputError, match=r"^--set steps.x=1: 'steps' is not an object of the config$"):
        apply_overrides(values, ["steps.x=1"])


def test_the_command_fine_tunes_from_a_model_without_a_config(cli, trained, tmp_path):
    out = tmp_path / "run"
    run = cli("train-registration", "--init", trained, "--set", "learning_rate=0", "--steps", "1", "--out", out,
              "--quiet")
    assert run.code == 0, run.err
    entry = json.loads((out / "model.json").read_text())
    assert entry["name"] == "tiny" + FINE_TUNED_SUFFIX and entry["training"]["recipe"]["init"] == str(trained)
    assert entry["training"]["recipe"]["learning_rate"] == 0 and entry["training"]["steps"] == 1
    start, end = _weights(trained.parent / "model.pt"), _weights(out / "model.pt")
    assert all(torch.equal(start[k], end[k]) for k in start)


def test_the_command_refuses_bad_overrides(cli, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(TINY))
    bad = cli("train-registration", "--config", config, "--set", "stepz=3", "--out", tmp_path / "a", "--quiet")
    assert bad.code == 2 and bad.error_line().startswith(f"crossmodalmas: error: --config {config} with --set: "
                                                         "unknown key(s) stepz")
    alone = cli("train-registration", "--set", "steps=3", "--out", tmp_path / "b", "--quiet")
    assert alone.code == 2 and "--set: needs --config or --init" in alone.error_line()
    net = cli("train-registration", "--config", config, "--init", "xmod-general-diffeo", "--out", tmp_path / "c")
    assert net.code == 2 and "--init xmod-general-diffeo: model architecture" in net.error_line()
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
