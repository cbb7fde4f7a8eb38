"""Where a CPU forecast's memory limit comes from (``toto.inference.memory.available_bytes``):
free memory, the address-space limit and the cgroups', the smallest winning. Every
source is a temporary file (``LimitFiles``) or a patched ``getrlimit``."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from toto.inference import memory
from toto.inference.memory import LimitFiles, available_bytes

MiB, GiB = 2**20, 2**30
V1_UNLIMITED = 9223372036854771712  # what cgroup v1 reports for "no limit"
CGROUP_FILES = {
    name.replace(".", "_"): name
    for name in (
        "memory.max", "memory.current", "memory.swap.max", "memory.swap.current",  # v2
        "memory.limit_in_bytes", "memory.usage_in_bytes",  # v1
    )
}


class Machine:
    """A fake /proc and /sys/fs/cgroup under ``root``; nothing exists until written."""

    def __init__(self, root: Path):
        self.files = LimitFiles(root / "meminfo", root / "status", root / "cgroup", root / "fs")
        self.files.cgroup_mount.mkdir()

    def meminfo(self, available: int, swap_free: int = 0) -> None:
        self.files.meminfo.write_text(
            f"MemTotal:       {64 * GiB // 1024} kB\nMemAvailable:   {available // 1024} kB\n"
            f"SwapTotal:      {swap_free // 1024} kB\nSwapFree:       {swap_free // 1024} kB\n"
        )

    def cgroup(self, folder: str, **files: int | str) -> None:
        """Write cgroup files (``memory_max=...`` for ``memory.max``) in ``folder`` under the mount."""
        path = self.files.cgroup_mount / folder
        path.mkdir(parents=True, exist_ok=True)
        for name, value in files.items():
            (path / CGROUP_FILES[name]).write_text(f"{value}\n")

    def available(self) -> int:
        return available_bytes("cpu", self.files)


@pytest.fixture
def machine(tmp_path, monkeypatch) -> Machine:
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    machine = Machine(tmp_path)
    machine.meminfo(available=16 * GiB)
    return machine


def test_free_memory_alone(machine):
    assert machine.available() == 16 * GiB
    machine.meminfo(available=16 * GiB, swap_free=2 * GiB)
    assert machine.available() == 18 * GiB  # swap lets an allocation succeed too


def test_cgroup_v2_limit_less_usage(machine):
    machine.cgroup(".", memory_max=2 * GiB, memory_current=512 * MiB)
    assert machine.available() == 2 * GiB - 512 * MiB


def test_cgroup_v2_gives_back_reclaimable_page_cache(machine):
    machine.cgroup(".", memory_max=2 * GiB, memory_current=1536 * MiB)
    (machine.files.cgroup_mount / "memory.stat").write_text(
        f"anon {512 * MiB}\nfile {1024 * MiB}\nactive_file {256 * MiB}\ninactive_file {512 * MiB}\nshmem {256 * MiB}\n"
    )
    assert machine.available() == 2 * GiB - 1536 * MiB + 768 * MiB


def test_cgroup_v2_swap_counts_up_to_its_own_limit(machine):
    machine.meminfo(available=16 * GiB, swap_free=4 * GiB)
    machine.cgroup(".", memory_max=2 * GiB, memory_current=0)
    assert machine.available() == 6 * GiB  # no swap limit: the system's free swap
    machine.cgroup(".", memory_swap_max=GiB, memory_swap_current=256 * MiB)
    assert machine.available() == 2 * GiB + 768 * MiB
    machine.cgroup(".", memory_swap_max="max")
    assert machine.available() == 6 * GiB


def test_cgroup_v2_max_is_no_limit(machine):
    machine.cgroup(".", memory_max="max", memory_current=GiB)
    assert machine.available() == 16 * GiB


def test_cgroup_v1_limit_less_usage_and_page_cache(machine):
    machine.cgroup("memory", memory_limit_in_bytes=3 * GiB, memory_usage_in_bytes=GiB)
    assert machine.available() == 2 * GiB
    (machine.files.cgroup_mount / "memory" / "memory.stat").write_text(
        f"cache {300 * MiB}\ninactive_file 4096\ntotal_active_file {64 * MiB}\ntotal_inactive_file {192 * MiB}\n"
    )
    assert machine.available() == 2 * GiB + 256 * MiB  # the hierarchy's totals, not the level's own


def test_cgroup_v1_unlimited(machine):
    machine.cgroup("memory", memory_limit_in_bytes=V1_UNLIMITED, memory_usage_in_bytes=GiB)
    assert machine.available() == 16 * GiB


def test_every_cgroup_above_the_process_counts(machine):
    machine.files.cgroups.write_text("4:memory:/jobs/mine\n0::/jobs/mine\n")
    machine.cgroup("jobs/mine", memory_max=8 * GiB, memory_current=GiB)
    assert machine.available() == 7 * GiB
    machine.cgroup("jobs", memory_max=4 * GiB, memory_current=3 * GiB)  # the parent's limit binds the child
    assert machine.available() == GiB
    machine.cgroup("memory/jobs", memory_limit_in_bytes=GiB, memory_usage_in_bytes=768 * MiB)
    assert machine.available() == 256 * MiB


def test_a_host_path_missing_from_the_container_falls_back_to_the_root(machine):
    # Without a cgroup namespace the process sees the host's path; its own cgroup is the mount's root.
    machine.files.cgroups.write_text("0::/docker/0123abcd\n")
    machine.cgroup(".", memory_max=3 * GiB, memory_current=GiB)
    assert machine.available() == 2 * GiB


def test_address_space_limit_less_what_the_process_maps(machine, monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (6 * GiB, resource.RLIM_INFINITY))
    machine.files.status.write_text(f"Name:\tpython\nVmPeak:\t{5 * GiB // 1024} kB\nVmSize:\t{2 * GiB // 1024} kB\n")
    assert machine.available() == 4 * GiB
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, 6 * GiB))  # the soft one binds
    assert machine.available() == 16 * GiB


@pytest.mark.parametrize("smallest", ["meminfo", "cgroup v2", "cgroup v1", "rlimit"])
def test_the_smallest_limit_wins(machine, monkeypatch, smallest):
    sizes = dict.fromkeys(["meminfo", "cgroup v2", "cgroup v1", "rlimit"], 8 * GiB)
    sizes[smallest] = 3 * GiB
    machine.meminfo(available=sizes["meminfo"])
    machine.cgroup(".", memory_max=sizes["cgroup v2"] + GiB, memory_current=GiB)
    machine.cgroup("memory", memory_limit_in_bytes=sizes["cgroup v1"] + 2 * GiB, memory_usage_in_bytes=2 * GiB)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (sizes["rlimit"] + GiB, resource.RLIM_INFINITY))
    machine.files.status.write_text(f"VmSize:\t{GiB // 1024} kB\n")
    assert machine.available() == 3 * GiB


def test_usage_over_the_limit_leaves_nothing(machine):
    machine.cgroup(".", memory_max=GiB, memory_current=GiB + MiB)
    assert machine.available() == 0


def test_unreadable_cgroup_files_are_ignored(machine):
    machine.cgroup(".", memory_max="garbage", memory_current=GiB)
    machine.cgroup("memory", memory_limit_in_bytes=GiB)  # no usage file
    assert machine.available() == 16 * GiB


def test_the_default_files_are_the_module_setting(machine, monkeypatch):
    machine.cgroup(".", memory_max=GiB, memory_current=0)
    monkeypatch.setattr(memory, "LIMIT_FILES", machine.files)
    assert available_bytes("cpu") == GiB
