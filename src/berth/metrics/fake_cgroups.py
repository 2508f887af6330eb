"""A cgroup tree in a plain directory, laid out as the kernel lays out v1 or v2 (the same
files, the same formats), with a ``/proc/PID/cgroup`` per fake process: the real reader runs
over it unchanged. For unit tests and the 1,000-container benchmark, where this machine cannot
run that many containers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_V1_MEMORY_STAT = (
    "cache {cache}\nrss {rss}\nrss_huge 0\nshmem 0\nmapped_file 0\ndirty 0\nwriteback 0\n"
    "pgpgin 1000\npgpgout 900\npgfault 5000\npgmajfault 0\ninactive_anon 0\nactive_anon {rss}\n"
    "inactive_file {inactive}\nactive_file 0\nunevictable 0\nhierarchical_memory_limit 1\n"
    "total_cache {cache}\ntotal_rss {rss}\ntotal_rss_huge 0\ntotal_shmem 0\n"
    "total_mapped_file 0\ntotal_dirty 0\ntotal_writeback 0\ntotal_pgpgin 1000\n"
    "total_pgpgout 900\ntotal_pgfault 5000\ntotal_pgmajfault 0\ntotal_inactive_anon 0\n"
    "total_active_anon {rss}\ntotal_inactive_file {inactive}\ntotal_active_file 0\n"
    "total_unevictable 0\n"
)
_V2_MEMORY_STAT = (
    "anon {rss}\nfile {cache}\nkernel_stack 16384\nsock 0\nshmem 0\nfile_mapped 0\n"
    "file_dirty 0\nfile_writeback 0\ninactive_anon 0\nactive_anon {rss}\n"
    "inactive_file {inactive}\nactive_file 0\nunevictable 0\nslab 1000\npgfault 5000\n"
)


@dataclass
class FakeCgroups:
    root: Path  # plays /sys/fs/cgroup
    proc: Path  # plays /proc
    version: Literal[1, 2]

    @classmethod
    def create(cls, base: Path, version: Literal[1, 2]) -> FakeCgroups:
        root, proc = base / "cgroup", base / "proc"
        root.mkdir(parents=True)
        proc.mkdir()
        if version == 2:
            (root / "cgroup.controllers").write_text("cpu memory pids\n")
        else:
            (root / "memory").mkdir()
            # As Debian mounts it: one "cpu,cpuacct" directory and a "cpuacct" symlink.
            (root / "cpu,cpuacct").mkdir()
            (root / "cpuacct").symlink_to("cpu,cpuacct")
        return cls(root, proc, version)

    def add(self, pid: int, container_id: str, parent: str = "docker") -> None:
        path = f"/{parent}/{container_id}"
        if self.version == 2:
            (self.root / parent / container_id).mkdir(parents=True)
            text = f"0::{path}\n"
        else:
            for mount in ("memory", "cpu,cpuacct"):
                (self.root / mount / parent / container_id).mkdir(parents=True)
            text = f"4:memory:{path}\n2:cpu,cpuacct:{path}\n1:name=systemd:{path}\n0::{path}\n"
        (self.proc / str(pid)).mkdir()
        (self.proc / str(pid) / "cgroup").write_text(text)
        self.set(container_id, cpu_usec=0, rss=0, cache=0, parent=parent)

    def set(
        self,
        container_id: str,
        *,
        cpu_usec: int,
        rss: int,
        cache: int,
        inactive: int = 0,
        parent: str = "docker",
    ) -> None:
        if self.version == 2:
            d = self.root / parent / container_id
            (d / "cpu.stat").write_text(
                f"usage_usec {cpu_usec}\nuser_usec {cpu_usec // 2}\nsystem_usec {cpu_usec // 2}\n"
            )
            (d / "memory.current").write_text(f"{rss + cache}\n")
            stat = _V2_MEMORY_STAT
        else:
            (self.root / "cpu,cpuacct" / parent / container_id / "cpuacct.usage").write_text(
                f"{cpu_usec * 1000}\n"
            )
            d = self.root / "memory" / parent / container_id
            (d / "memory.usage_in_bytes").write_text(f"{rss + cache}\n")
            stat = _V1_MEMORY_STAT
        (d / "memory.stat").write_text(stat.format(rss=rss, cache=cache, inactive=inactive))
