"""devices: the free memory the process may take, from Linux's meminfo and a cgroup's limit; the
CPU fallback of a step on CUDA out-of-memory."""

import pytest
import torch

from crossmodalmas import devices


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fake /proc/meminfo and cgroup folder; returns a writer of either."""
    meminfo, cgroup = tmp_path / "meminfo", tmp_path / "cgroup"
    cgroup.mkdir()
    monkeypatch.setattr(devices, "_MEMINFO", meminfo)
    monkeypatch.setattr(devices, "_CGROUP", cgroup)

    def write(available_kb=None, limit=None, current=None):
        if available_kb is not None:
            meminfo.write_text(f"MemTotal:       32000000 kB\nMemAvailable:   {available_kb} kB\nSwapTotal: 0 kB\n")
        if limit is not None:
            (cgroup / "memory.max").write_text(f"{limit}\n")
        if current is not None:
            (cgroup / "memory.current").write_text(f"{current}\n")

    return write


def test_available_memory_is_meminfos_when_no_cgroup_limits_it(machine):
    machine(available_kb=2_000_000)
    assert devices.available_memory() == 2_000_000 * 1024
    machine(limit="max", current=5)
    assert devices.available_memory() == 2_000_000 * 1024


def test_available_memory_is_capped_by_the_room_left_under_the_cgroup_limit(machine):
    machine(available_kb=8_000_000, limit=3_000_000_000, current=1_000_000_000)
    assert devices.available_memory() == 2_000_000_000
    machine(current=4_000_000_000)  # over its limit: no room, not a negative number
    assert devices.available_memory() == 0


def test_available_memory_is_unknown_where_the_os_does_not_say(machine):
    assert devices.available_memory() is None
    machine(limit=3_000_000_000)  # a limit without its usage: not enough to tell
    assert devices.available_memory() is None


def _step(fails_on: set):
    """A step that records the devices it ran on and runs out of memory on those in ``fails_on``."""
    ran = []

    def compute(device):
        ran.append(device.type)
        if device.type in fails_on:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return f"done on {device.type}"

    return compute, ran


def test_cpu_fallback_reruns_a_step_on_the_cpu_after_cuda_out_of_memory_and_says_so():
    compute, ran = _step({"cuda"})
    said = []
    assert devices.cpu_fallback("label fusion", compute, torch.device("cuda"), said.append) == \
        ("done on cpu", torch.device("cpu"))
    assert ran == ["cuda", "cpu"] and said == ["label fusion: CUDA out of memory; running on the CPU"]


def test_cpu_fallback_runs_once_where_it_fits_and_never_swallows_an_error_on_the_cpu():
    compute, ran = _step(set())
    assert devices.cpu_fallback("fusion", compute, torch.device("cuda"), pytest.fail) == \
        ("done on cuda", torch.device("cuda")) and ran == ["cuda"]
    compute, ran = _step({"cpu"})
    with pytest.raises(torch.cuda.OutOfMemoryError):
        devices.cpu_fallback("fusion", compute, torch.device("cpu"), pytest.fail)
    with pytest.raises(ZeroDivisionError):
        devices.cpu_fallback("fusion", lambda device: 1 / 0, torch.device("cuda"), pytest.fail)
