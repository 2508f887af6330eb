"""Processes as /proc shows them (standard library only: the ingress node's image copies this
module beside its agent)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str]:
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def children(pid: int) -> set[int]:
    """The pids whose parent is ``pid``."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:  # a kernel without the children file: every process's parent
        found = set()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if int(_stat_fields(proc.name)[1]) == pid:
                        found.add(int(proc.name))
        return found
    return {int(p) for p in text.split()}


def alive(pid: int) -> bool:
    """Running (a zombie has exited: only its parent's reaping is left)."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False
