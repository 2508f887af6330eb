from __future__ import annotations

import datetime as dt
import threading


class FakeClock:
    """A clock the test moves by hand (thread-safe: the manager reads it from its workers)."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime.now(dt.UTC)
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self._now

    def set(self, when: dt.datetime) -> None:
        with self._lock:
            self._now = when

    def advance(self, delta: dt.timedelta) -> None:
        with self._lock:
            self._now += delta
