"""The pure parts of the databases benchmark: /proc text parsed, process trees walked,
samples summarised, dedicated servers scaled up, the table laid out."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence

GIB = 1024**3
MIB = 1024**2


def kb_field(text: str, name: str) -> int:
    """Bytes of one ``Name:   123 kB`` line of /proc/PID/status or smaps_rollup (0 if absent:
    a kernel thread has no VmRSS)."""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == name:
            parts = rest.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * 1024
    return 0


def stat_ppid(stat: str) -> int:
    """The parent pid from /proc/PID/stat; the command name may hold spaces and parentheses,
    so the fields are counted after its last ``)``."""
    after = stat.rsplit(")", 1)[1].split()
    return int(after[1])


def descendants(parents: Mapping[int, int], root: int) -> set[int]:
    """``root`` and every process below it, from a pid -> parent pid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def is_redo(relative: str) -> bool:
    """Whether a data directory's file (path relative to it) is the engine's redo log."""
    parts = relative.split("/")
    return parts[0] == "pg_wal" or parts[-1].startswith("ib_logfile")


def summary(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        raise ValueError("no samples")
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def per_item(before: int, after: int, count: int) -> float:
    """The growth per item of a total measured before and after ``count`` items."""
    if count <= 0:
        raise ValueError("count must be positive")
    return (after - before) / count


def scaled(per_server: float, measured: int, target: int) -> dict[str, object]:
    """Dedicated servers at ``target``, scaled linearly from ``measured`` of them: said to be an
    extrapolation wherever it is shown."""
    total = per_server * target
    return {
        "measured_servers": measured,
        "target": target,
        "per_server_bytes": per_server,
        "total_bytes": total,
        "note": f"measured {measured}, scaled linearly to {target:,}: {human(total)}"
        " (an extrapolation, not a measurement)",
    }


def human(n: float) -> str:
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    if abs(n) >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def ms_range(s: Mapping[str, float]) -> str:
    return f"{s['median'] * 1000:.0f} ms ({s['min'] * 1000:.0f}-{s['max'] * 1000:.0f})"


def table(rows: Iterable[Sequence[str]], header: Sequence[str]) -> str:
    lines = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    out = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)
