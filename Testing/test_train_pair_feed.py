"""crossmodalmas.train.pair_feed: the main-process stream keeps the trainers' original draws,
the DataLoader workers' stream depends on the step alone (not on the number of workers), a
run with workers resumes exactly, and steps mix real and synthetic pairs by ``real_fraction``."""

import pytest
import torch

from crossmodalmas.phantom_dataset import write_phantom_dataset
from crossmodalmas.label_sources import LabelMapBank, LabelSource, Split
from crossmodalmas.synth import SynthConfig, synth_pair
from crossmodalmas.train.config import TrainRegistrationConfig
from crossmodalmas.train.pair_feed import PairFeed, PairSource, PairStream, resolve_workers, step_seed
from crossmodalmas.train.real_pairs import open_real_pairs
from crossmodalmas.train.registration import train_registration

SHAPE = (16, 16, 16)
TINY = dict(name="tiny", sources=["shapes"], shape=list(SHAPE), steps=4, validate_every=4, validation_pairs=1,
            max_loss_labels=4, seed=1, threads=1,
            net={"channels": [4, 8], "output_level": 0, "input_downsample": 2, "mode": "paper"})


@pytest.fixture(scope="module")
def bank():
    return LabelMapBank([LabelSource.SHAPES], Split.TRAIN, SHAPE)


def _source(bank, **changes):
    return PairSource(TrainRegistrationConfig.from_dict({**TINY, **changes}), bank, None)


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, name), getattr(b, name)) for name in ("image_a", "labels_a", "image_b",
                                                                             "labels_b", "forward", "backward"))


def test_step_seeds_differ_by_every_part_and_repeat():
    seeds = {step_seed(*parts) for parts in [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]}
    assert len(seeds) == 5 and step_seed(3, 1, 7, 0) == step_seed(3, 1, 7, 0)
    assert all(0 <= seed < 2 ** 63 for seed in seeds)


def test_the_main_process_draws_as_the_trainers_always_did(bank):
    """workers = 0: the bank's maps then synth_pair, all from the run's generator, no extra draw."""
    source = _source(bank, batch_size=2)
    generator = torch.Generator().manual_seed(5)
    item = PairFeed(source, torch.device("cpu"), 1, 0, workers=0).next(0, generator)
    again = torch.Generator().manual_seed(5)
    labels = torch.stack([bank.draw(again), bank.draw(again)])
    expected = synth_pair(labels, int(labels.max()) + 1, SynthConfig(), again)
    assert not item.real and _same(item.pair, expected)
    assert torch.equal(generator.get_state(), again.get_state())


def test_workers_give_the_steps_in_order_whatever_their_number(bank):
    source = _source(bank)
    alone = [PairStream(source, 1, 0, 3, render=True).make(step) for step in (3, 4, 5)]
    for workers in (1, 2):
        feed = PairFeed(source, torch.device("cpu"), 1, 0, workers=workers)
        items = [feed.next(step, torch.Generator()) for step in (3, 4, 5)]
        feed.close()
        assert [item.step for item in items] == [3, 4, 5]
        assert all(_same(a.pair, b.pair) for a, b in zip(items, alone)), workers
    other_rank = PairStream(source, 1, 1, 3, render=True).make(3)
    assert not torch.equal(other_rank.pair.image_a, alone[0].pair.image_a)


def test_a_feed_asked_out_of_step_says_so(bank):
    feed = PairFeed(_source(bank), torch.device("cpu"), 1, 0, workers=1)
    feed.next(0, torch.Generator())
    with pytest.raises(RuntimeError, match=r"PairFeed.next\(\): the stream is at step 1, step 5 was asked for"):
        feed.next(5, torch.Generator())
    feed.close()


def test_real_fraction_mixes_whole_steps(bank, tmp_path):
    dataset = write_phantom_dataset(tmp_path, subjects=4, shape=(16, 16, 16), spacing_mm=(6.0, 6.0, 6.0))
    config = TrainRegistrationConfig.from_dict({**TINY, "dataset": str(dataset), "real_fraction": 0.5,
                                                "batch_size": 2, "crop_margin_mm": 4.0})
    source = PairSource(config, bank, open_real_pairs(config))
    generator = torch.Generator().manual_seed(0)
    items = [source.draw(step, generator) for step in range(40)]
    real = [item.real for item in items]
    assert 10 < sum(real) < 30
    for item in items[:6]:
        pair = source.render(item, generator)
        assert pair.image_a.shape == (2, 1, *SHAPE) and (pair.forward is None) == item.real
    first_real = next(item for item in items if item.real)
    plain = PairSource(TrainRegistrationConfig.from_dict({**config.to_dict(), "augment": False}), bank, source.real)
    rendered = plain.render(first_real, generator)
    assert torch.equal(rendered.image_a, first_real.drawn.image_a)  # no augmentation: the crops as drawn
    assert not torch.equal(source.render(first_real, generator).image_a, first_real.drawn.image_a)


def test_workers_resolve_to_the_main_process_on_cpu():
    assert resolve_workers(None, torch.device("cpu")) == 0
    assert resolve_workers(3, torch.device("cpu")) == 3
    assert 1 <= resolve_workers(None, torch.device("cuda"), local_processes=64) <= 4


def weights(folder):
    return torch.load(folder / "model.pt", weights_only=True)["state_dict"]


def _stop_after(steps: int):
    """A ``should_stop`` that says stop after ``steps`` polls."""
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > steps

    return stop


@pytest.mark.slow
def test_a_run_with_workers_resumes_exactly_and_ignores_their_number(tmp_path):
    stop_after_two = _stop_after(2)
    config = TrainRegistrationConfig.from_dict({**TINY, "workers": 2})
    train_registration(config, tmp_path / "split", show_progress=False, should_stop=stop_after_two)
    train_registration(None, tmp_path / "split", resume=True, show_progress=False)
    train_registration(TrainRegistrationConfig.from_dict({**TINY, "workers": 1}), tmp_path / "one", show_progress=False)
    split, one = weights(tmp_path / "split"), weights(tmp_path / "one")
    assert all(torch.allclose(split[k], one[k], atol=1e-6) for k in one)
    train_registration(TrainRegistrationConfig.from_dict({**TINY, "workers": 0}), tmp_path / "main",
                       show_progress=False)
    main = weights(tmp_path / "main")
    assert any(not torch.equal(main[k], one[k]) for k in one)  # workers 0 is the run's own stream


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_workers_draw_and_the_gpu_renders_reproducibly(bank, tmp_path):
    dataset = write_phantom_dataset(tmp_path, subjects=4, shape=(16, 16, 16), spacing_mm=(6.0, 6.0, 6.0))
    config = TrainRegistrationConfig.from_dict({**TINY, "dataset": str(dataset), "real_fraction": 0.5,
                                                "crop_margin_mm": 4.0})
    source = PairSource(config, bank, open_real_pairs(config))
    device = torch.device("cuda")
    runs = []
    for workers in (1, 2):
        feed = PairFeed(source, device, 1, 0, workers=workers)
        runs.append([feed.next(step, torch.Generator(device=device)) for step in range(6)])
        feed.close()
    for a, b in zip(*runs):
        assert a.pair.image_a.device.type == "cuda" and a.real == b.real
        assert torch.equal(a.pair.image_a, b.pair.image_a) and torch.equal(a.pair.labels_b, b.pair.labels_b)
    assert resolve_workers(None, device) >= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_with_workers_resumes_exactly(tmp_path):
    stop_after_two = _stop_after(2)
    config = TrainRegistrationConfig.from_dict({**TINY, "device": "cuda", "workers": 2})
    train_registration(config, tmp_path / "split", show_progress=False, should_stop=stop_after_two)
    train_registration(None, tmp_path / "split", resume=True, show_progress=False)
    train_registration(config, tmp_path / "whole", show_progress=False)
    split, whole = weights(tmp_path / "split"), weights(tmp_path / "whole")
    # CUDA's grid_sample backward adds with atomics: equal up to float rounding, not bit for bit
    assert all(torch.allclose(split[k], whole[k], atol=1e-5) for k in whole)
