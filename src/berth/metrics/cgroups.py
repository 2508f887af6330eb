"""Read a container's CPU and memory straight from its cgroup files (v1 or v2).

Where a container's cgroup is comes from its main process's ``/proc/PID/cgroup`` once, when
it is first seen (whatever the engine's cgroup driver and parent); each pass then reads two
or three small files per container, which is all ``docker stats`` reads too, without the
engine's per-container stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class CgroupFiles:
    """The files one pass reads for one container."""

    version: Literal[1, 2]
    cpu: Path  # v1 cpuacct.usage (ns), v2 cpu.stat (usage_usec line)
    memory: Path  # v1 memory.usage_in_bytes, v2 memory.current
    memory_stat: Path  # to leave out inactive page cache, as `docker stats` does


@dataclass(frozen=True, slots=True)
class Reading:
    cpu_usec: int
    memory_bytes: int


def cgroup_version(root: Path = CGROUP_ROOT) -> Literal[1, 2]:
    return 2 if (root / "cgroup.controllers").exists() else 1


def files_of_pid(pid: int, root: Path = CGROUP_ROOT, proc: Path = PROC) -> CgroupFiles | None:
    """The cgroup files of process ``pid``, or None when it is gone or its cgroup is not
    under ``root`` (another cgroup namespace)."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return files_from_proc_cgroup(text, root)


def files_from_proc_cgroup(text: str, root: Path = CGROUP_ROOT) -> CgroupFiles | None:
    """Parse ``/proc/PID/cgroup``: ``ID:CONTROLLERS:PATH`` lines (v2: ``0::PATH``)."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(","):
            paths[controller] = path
    if cgroup_version(root) == 2:
        unified = paths.get("")
        if unified is None:
            return None
        base = _under(root, unified)
        files = CgroupFiles(2, base / "cpu.stat", base / "memory.current", base / "memory.stat")
    else:
        cpu, memory = paths.get("cpuacct"), paths.get("memory")
        if cpu is None or memory is None:
            return None
        cpu_dir = _v1_dir(root, "cpuacct", cpu)
        mem_dir = _v1_dir(root, "memory", memory)
        files = CgroupFiles(
            1, cpu_dir / "cpuacct.usage", mem_dir / "memory.usage_in_bytes", mem_dir / "memory.stat"
        )
    return files if files.cpu.exists() and files.memory.exists() else None


def _under(root: Path, path: str) -> Path:
    # A path from the kernel never climbs, but a ".." would leave the cgroup tree: refuse it.
    relative = path.lstrip("/")
    if ".." in Path(relative).parts:
        raise ValueError(f"cgroup path {path!r} leaves the hierarchy")
    return root / relative


def _v1_dir(root: Path, controller: str, path: str) -> Path:
    # Co-mounted controllers appear as one directory, "cpu,cpuacct" (with a symlink "cpuacct").
    mount = root / controller
    if not mount.exists():
        for candidate in sorted(root.glob(f"*{controller}*")):
            if controller in candidate.name.split(","):
                mount = candidate
                break
    return _under(mount, path)


def read(files: CgroupFiles) -> Reading | None:
    """One reading, or None when the cgroup is gone (the container stopped)."""
    try:
        if files.version == 1:
            cpu_usec = int(files.cpu.read_bytes()) // 1000
        else:
            cpu_usec = _stat_value(files.cpu.read_bytes(), b"usage_usec")
        usage = int(files.memory.read_bytes())
        inactive = _stat_value(
            files.memory_stat.read_bytes(),
            b"total_inactive_file" if files.version == 1 else b"inactive_file",
        )
    except (FileNotFoundError, ProcessLookupError, OSError, ValueError):
        return None
    return Reading(cpu_usec=cpu_usec, memory_bytes=max(0, usage - inactive))


def _stat_value(data: bytes, key: bytes) -> int:
    start = data.find(key + b" ")
    while start > 0 and data[start - 1 : start] != b"\n":
        start = data.find(key + b" ", start + 1)
    if start < 0:
        return 0
    end = data.find(b"\n", start)
    return int(data[start + len(key) + 1 : end if end >= 0 else None])
