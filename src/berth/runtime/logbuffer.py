"""A bounded, thread-safe buffer of log lines between engine streams and one slow reader.

The engine streams are read by threads as fast as the apps print; the HTTP reader drains at its
own pace. Blocking the threads would only move the backlog into the engine's stream, so once
``max_bytes`` are waiting (counted in characters: log text is mostly ASCII), new lines are
dropped and counted, and the reader gets one marker line saying how many in their place. Memory
per reader is therefore bounded by about ``max_bytes``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

DEFAULT_MAX_BYTES = 1024 * 1024


def dropped_marker(count: int) -> str:
    return f"... {count} lines dropped (reader too slow) ...\n"


class LineBuffer:
    """Lines from many producer threads to one consumer. ``wake`` is called (from a producer's
    thread) when the buffer goes from empty to not empty, and when the last producer ends."""

    def __init__(
        self, producers: int, wake: Callable[[], None], max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self._lock = threading.Lock()
        self._lines: deque[str] = deque()
        self._bytes = 0
        self._dropped = 0
        self._open = producers
        self._wake = wake
        self._max_bytes = max_bytes
        self._woken = False

    def put(self, line: str) -> None:
        with self._lock:
            if self._bytes + len(line) > self._max_bytes:
                self._dropped += 1  # a drop is news too: the marker must reach the reader
            else:
                self._lines.append(line)
                self._bytes += len(line)
            notify = not self._woken
            self._woken = True
        if notify:
            self._wake()

    def producer_done(self) -> None:
        with self._lock:
            self._open -= 1
            notify = self._open <= 0 or not self._woken
            self._woken = True
        if notify:
            self._wake()

    def take(self) -> tuple[list[str], bool]:
        """Everything waiting (then a marker where later lines were dropped) and whether every
        producer has ended. After a take the next ``put`` wakes the consumer again."""
        with self._lock:
            lines = list(self._lines)
            self._lines.clear()
            self._bytes = 0
            if self._dropped:
                lines.append(dropped_marker(self._dropped))
                self._dropped = 0
            self._woken = False
            return lines, self._open <= 0
