"""A RUN step's output: read from the engine in a thread, split into lines, and the signs of
a full pids cgroup (what the log names when a step hits the process limit)."""

from __future__ import annotations

import codecs
import logging
import queue
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# What shells and libc print when fork() fails with EAGAIN (the pids cgroup is full).
FORK_FAILURES = ("can't fork", "cannot fork", "fork: retry", "resource temporarily unavailable")
# Where a container's pids cgroup lives (cgroup v1 or v2, cgroupfs or systemd driver).
PIDS_ROOTS = (
    "/sys/fs/cgroup/pids/docker/{id}",
    "/sys/fs/cgroup/pids/system.slice/docker-{id}.scope",
    "/sys/fs/cgroup/docker/{id}",
    "/sys/fs/cgroup/system.slice/docker-{id}.scope",
)


def pump(stream: Any, chunks: queue.Queue[bytes | None]) -> None:
    try:
        for chunk in stream:
            chunks.put(bytes(chunk))
    except Exception as exc:  # the container was removed under us: the stream just ends
        log.debug("build output stream ended: %s", exc)
    finally:
        chunks.put(None)


def drain(chunks: queue.Queue[bytes | None], killed: bool) -> Iterator[bytes]:
    """What is left of the output after the loop (a few seconds at most after a kill)."""
    deadline = time.monotonic() + (5.0 if killed else 30.0)
    while time.monotonic() < deadline:
        try:
            chunk = chunks.get(timeout=0.25)
        except queue.Empty:
            continue
        if chunk is None:
            return
        yield chunk


class LineSplitter:
    """Byte chunks, cut anywhere (even inside a character), into text lines."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, chunk: bytes) -> list[str]:
        self._pending += self._decoder.decode(chunk)
        *lines, self._pending = self._pending.replace("\r", "\n").split("\n")
        return [line.rstrip() for line in lines if line.strip()]

    def rest(self, chunks: Iterator[bytes]) -> Iterator[str]:
        for chunk in chunks:
            yield from self.feed(chunk)
        last = (self._pending + self._decoder.decode(b"", final=True)).rstrip()
        self._pending = ""
        if last.strip():
            yield last


def pids_max_events(container_id: str) -> int | None:
    """How often the container's pids limit refused a fork so far (None: cgroup not found)."""
    for template in PIDS_ROOTS:
        events = Path(template.format(id=container_id)) / "pids.events"
        try:
            text = events.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "max" and value.strip().isdigit():
                return int(value)
        return 0
    return None


def mentions_fork(tail: Iterable[str]) -> bool:
    text = "\n".join(tail).lower()
    return any(sign in text for sign in FORK_FAILURES)
