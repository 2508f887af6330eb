"""The cgroup reader over v1 and v2 trees (the kernel's layout, in a directory), and the
sampler's CPU deltas, restarts and engine lookups."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import pytest

from berth.metrics import cgroups
from berth.metrics.engine_collector import CgroupSampler, Target
from berth.metrics.fake_cgroups import FakeCgroups

MIB = 1 << 20


@pytest.mark.parametrize("version", [1, 2])
def test_reads_cpu_and_memory_without_inactive_cache(
    tmp_path: Path, version: Literal[1, 2]
) -> None:
    tree = FakeCgroups.create(tmp_path, version)
    tree.add(4242, "c" * 64)
    tree.set("c" * 64, cpu_usec=1_500_000, rss=40 * MIB, cache=8 * MIB, inactive=6 * MIB)
    files = cgroups.files_of_pid(4242, tree.root, tree.proc)
    assert files is not None and files.version == version
    assert cgroups.read(files) == cgroups.Reading(cpu_usec=1_500_000, memory_bytes=42 * MIB)


def test_a_gone_process_or_cgroup_reads_as_none(tmp_path: Path) -> None:
    tree = FakeCgroups.create(tmp_path, 2)
    assert cgroups.files_of_pid(999, tree.root, tree.proc) is None
    tree.add(7, "d" * 64)
    files = cgroups.files_of_pid(7, tree.root, tree.proc)
    assert files is not None
    for f in (files.cpu, files.memory, files.memory_stat):
        f.unlink()
    assert cgroups.read(files) is None


def test_a_path_that_climbs_out_is_refused(tmp_path: Path) -> None:
    tree = FakeCgroups.create(tmp_path, 2)
    with pytest.raises(ValueError):
        cgroups.files_from_proc_cgroup("0::/../../etc\n", tree.root)


def test_sampler_asks_the_engine_once_and_counts_cpu_deltas(tmp_path: Path) -> None:
    tree = FakeCgroups.create(tmp_path, 1)
    pids = {"a" * 64: 11, "b" * 64: 12}
    for cid, pid in pids.items():
        tree.add(pid, cid)
    now = [1000.0]
    sampler = CgroupSampler(
        pids.get, partial(cgroups.files_of_pid, root=tree.root, proc=tree.proc), lambda: now[0]
    )
    targets = [Target("i1", "app1", "t1", "a" * 64, 0), Target("i2", "app1", "t1", "b" * 64, 2)]
    tree.set("a" * 64, cpu_usec=100, rss=MIB, cache=0)
    first = sampler.sample(targets)
    assert [s.cpu_usec_delta for s in first] == [0, 0]  # nothing to compare with yet
    tree.set("a" * 64, cpu_usec=2_100, rss=3 * MIB, cache=0)
    now[0] += 10
    second = {s.instance_id: s for s in sampler.sample(targets)}
    assert second["i1"].cpu_usec_delta == 2_000 and second["i1"].memory_bytes == 3 * MIB
    assert second["i2"].restarts == 2
    tree.set("a" * 64, cpu_usec=50, rss=MIB, cache=0)  # recreated: the counter started over
    third = {s.instance_id: s for s in sampler.sample(targets)}
    assert third["i1"].cpu_usec_delta == 50
    assert sampler.lookups == 2  # one engine call per container, not one per pass


def test_another_nodes_container_is_not_asked_for_every_pass(tmp_path: Path) -> None:
    tree = FakeCgroups.create(tmp_path, 2)
    asked: list[str] = []

    def pid_of(cid: str) -> int | None:
        asked.append(cid)
        return None

    sampler = CgroupSampler(pid_of, partial(cgroups.files_of_pid, root=tree.root, proc=tree.proc))
    targets = [Target("i1", "app1", "t1", "e" * 64, 0)]
    for _ in range(5):
        assert sampler.sample(targets) == []
    assert asked == ["e" * 64]
