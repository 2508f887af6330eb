"""What a server costs the machine, read from /proc and the file system: the resident and
proportional memory of a process tree (PostgreSQL forks a backend per connection; MariaDB is
one process of threads) and the bytes its data directory holds on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.db.figures import descendants, is_redo, kb_field, stat_ppid


@dataclass(frozen=True)
class Memory:
    processes: int
    rss: int  # counts pages shared by several processes once per process
    pss: int  # shares each shared page among its processes: the honest sum
    uss: int  # pages of these processes alone (what stopping them would free, at least)


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = stat_ppid(Path(f"/proc/{entry}/stat").read_text())
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
    return parents


def tree_memory(root: int) -> Memory:
    rss = pss = uss = count = 0
    for pid in descendants(_parents(), root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        rss += kb_field(status, "VmRSS")
        pss += kb_field(rollup, "Pss")
        uss += kb_field(rollup, "Private_Clean") + kb_field(rollup, "Private_Dirty")
        count += 1
    return Memory(count, rss, pss, uss)


def dir_bytes(root: Path) -> tuple[int, int]:
    """Bytes allocated on disk under ``root`` (blocks, not apparent sizes: preallocated files
    count whole), and how many of them are the write-ahead/redo log (``pg_wal/``, InnoDB's
    ``ib_logfile*``), which a server recycles at a fixed size rather than grows per database."""
    total = redo = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                size = os.lstat(path).st_blocks * 512
            except OSError:
                continue
            total += size
            if is_redo(os.path.relpath(path, root)):
                redo += size
    return total, redo
