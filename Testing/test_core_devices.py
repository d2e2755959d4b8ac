"""devices: the free memory the process may take, from Linux's meminfo and a cgroup's limit."""

import pytest

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
