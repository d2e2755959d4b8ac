"""Training on two processes (``torchrun``, gloo on CPU): a SIGTERM to one rank stops both at
the same step, the run resumes from there, the replicas hold identical weights and rank 0 alone
writes the run folder; plus the environment parsing of crossmodalmas.train.distributed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import process_env
from crossmodalmas.errors import InputError
from crossmodalmas.train.distributed import Distributed, from_environment, weights_digest

TINY = dict(name="tiny", sources=["shapes"], shape=[16, 16, 16], steps=4, validate_every=2, validation_pairs=1,
            max_loss_labels=4, seed=1, threads=1,
            net={"channels": [4, 8], "output_level": 0, "input_downsample": 2, "mode": "paper"})
RUN_FILES = {"config.json", "checkpoint.pt", "log.csv", "log.png", "model.pt", "model.json"}


def torchrun(*argv) -> list[str]:
    """``python -m torch.distributed.run`` with two processes on this machine, running the CLI."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "crossmodalmas", *map(str, argv)]


def _config(tmp_path, **changes) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY, **changes}))
    return path


class _StateHolder(torch.nn.Module):
    """A module whose state_dict is the given one (what weights_digest reads)."""

    def __init__(self, state):
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):
        return self._state


def _worker_pid(parent: int, rank: int, timeout: float = 60.0) -> int:
    """The pid of the torchrun worker with ``RANK=rank`` among ``parent``'s descendants."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank} under process {parent}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_two_ranks_train_one_model_stop_together_and_rank_0_alone_writes(tmp_path):
    out = tmp_path / "run"
    config = _config(tmp_path, steps=100000, validate_every=1)
    launcher = subprocess.Popen(torchrun("train-registration", "--config", config, "--out", out, "--quiet"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process_env())
    try:
        rank_1 = _worker_pid(launcher.pid, 1)
        deadline = time.monotonic() + 120
        while not ((out / "log.csv").is_file() and len((out / "log.csv").read_text().splitlines()) > 2):
            assert time.monotonic() < deadline and launcher.poll() is None, launcher.stderr.read()[-3000:]
            time.sleep(0.2)
        os.kill(rank_1, signal.SIGTERM)
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert "training stopped; checkpoint at" in err  # rank 0 stopped too, though only rank 1 was signalled
    stopped = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= stopped < 100000

    resumed = subprocess.run(torchrun("train-registration", "--out", out, "--resume", "--steps", stopped + 2,
                                      "--quiet"), capture_output=True, text=True, timeout=300, env=process_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip() == str(out / "model.json")  # printed once, by rank 0
    assert {p.name for p in out.iterdir()} == RUN_FILES
    steps = [int(row.split(",")[0]) for row in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, stopped + 3))  # one writer: every step once, across the stop
    assert json.loads((out / "model.json").read_text())["training"]["steps"] == stopped + 2
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == stopped + 2 and len(checkpoint["rank_generators"]) == 2
    digests = checkpoint["replica_sha256"]
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert len(digests) == 2 and digests[0] == digests[1] == weights_digest(_StateHolder(state))
    # The ranks drew different pairs (each its own stream): averaged gradients kept them equal.
    assert not torch.equal(checkpoint["rank_generators"][0], checkpoint["rank_generators"][1])


def test_the_environment_gives_the_place(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert from_environment() == Distributed(0, 1, 0, 1) and not Distributed().enabled and Distributed().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    place = from_environment()
    assert place == Distributed(3, 4, 1, 2) and place.enabled and not place.is_main
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match=r"^environment variables RANK=4, WORLD_SIZE=4: the rank must lie in "
                                         r"0..WORLD_SIZE-1$"):
        from_environment()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(InputError, match=r"^environment variable RANK='one': must be an integer \(set by torchrun\)$"):
        from_environment()
    monkeypatch.delenv("RANK")
    with pytest.raises(InputError, match=r"^environment variable WORLD_SIZE is set but RANK is not"):
        from_environment()


def test_a_rank_gets_its_own_gpu_and_auto_trains_on_the_cpu_where_the_node_has_fewer_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    second = Distributed(1, 2, 1, 2)
    assert second.device("auto") == torch.device("cpu") and second.device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match=r"^device cuda: 2 training processes on this node but torch sees 1 CUDA "
                                         r"device\(s\); each needs its own: start at most 1 per node"):
        second.device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert second.device("auto") == second.device("cuda") == torch.device("cuda", 1)
    assert Distributed().device("auto") == torch.device("cuda")  # one process: the default GPU


def test_one_process_needs_no_process_group():
    place = Distributed()
    module = torch.nn.Linear(2, 2)
    assert place.wrap(module, torch.device("cpu")) is module
    assert place.any(True, False) == (True, False) and place.broadcast({"a": 1}) == {"a": 1}
    assert place.gather(5) == [5] and place.device("cpu") == torch.device("cpu")
    twin = torch.nn.Linear(2, 2)
    twin.load_state_dict(module.state_dict())
    assert weights_digest(twin) == weights_digest(module)
    with torch.no_grad():
        twin.bias += 1e-7
    assert weights_digest(twin) != weights_digest(module)
