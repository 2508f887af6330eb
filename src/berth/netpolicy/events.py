"""Sync the egress rules as soon as the engine creates a network of this installation.

Defence in depth: code that creates a network must still call ``ensure_filtered()`` before it
runs anything there (that is what makes it airtight); this only shrinks the window for code that
does not, from the slow period to the time one sync takes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0  # after the engine went away (dockerd restart): listen again


class NetworkCreations:
    def __init__(self, api: Any, on_create: Callable[[], object]) -> None:
        self._api = api
        # Network events carry no labels on Docker 20.10, so any creation wakes a sync (which
        # reads only this installation's networks; one more costs a few milliseconds).
        self._filters = {"type": ["network"], "event": ["create"]}
        self._on_create = on_create
        self._stop = threading.Event()
        self._stream: Any = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="berth-egress-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._lock:
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    self._stream.close()  # ends the blocked read in the thread
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stream = self._api.events(decode=True, filters=self._filters)
                with self._lock:
                    self._stream = stream
                if self._stop.is_set():
                    break
                self._call()  # whatever was created while nobody listened
                for _event in stream:
                    if self._stop.is_set():
                        break
                    self._call()
            except Exception as exc:  # engine down or restarting: listen again shortly
                if not self._stop.is_set():
                    log.debug("egress filter: network events interrupted: %s", exc)
            finally:
                with self._lock:
                    if self._stream is not None:
                        with contextlib.suppress(Exception):
                            self._stream.close()
                        self._stream = None
            self._stop.wait(RETRY_SECONDS)

    def _call(self) -> None:
        try:
            self._on_create()
        except Exception as exc:  # the periodic sync retries
            log.warning("egress filter: sync after a network was created failed: %s", exc)
