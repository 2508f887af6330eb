"""A periodic background loop: the one mechanism behind every controller and agent loop.

The body runs in a daemon thread every ``interval`` seconds, and at once when ``wake()`` is
called (wakes that arrive during a pass coalesce into one more pass). An exception ends the
pass, not the loop: it is logged and kept in ``last_error`` until a pass succeeds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicLoop:
    def __init__(
        self,
        name: str,
        body: Callable[[], object],
        interval: float,
        before_first: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.interval = interval
        self.last_error = ""
        self._body = body
        self._before_first = before_first
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; a loop that runs already is left alone, and one that was stopped
        starts again (a server that leads, follows and leads again)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        if self._before_first is not None:
            self._before_first()
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._body()
                self.last_error = ""
            except Exception as exc:  # the loop must survive anything; the next pass retries
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: pass failed", self.name)
            self._wake.wait(self.interval)


class LoopOwner:
    """``start``, ``stop``, ``wake`` and ``last_error`` of a controller whose one loop is
    ``self._loop``."""

    _loop: PeriodicLoop

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def wake(self) -> None:
        self._loop.wake()

    @property
    def last_error(self) -> str:
        return self._loop.last_error
