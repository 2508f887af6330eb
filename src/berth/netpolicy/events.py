"""Sync the egress rules as soon as the engine creates a network of this installation.

Defence in depth: code that creates a network must still call ``ensure_filtered()`` before it
runs anything there (that is what makes it airtight); this only shrinks the window for code that
does not, from the slow period to the time one sync takes.

The server has one engine event stream (berth.controllers.engine_events) and this subscribes to
it. Given a Docker API client instead, it runs a stream of its own (a controller used alone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from berth.controllers.engine_events import EngineEvent, EngineEvents, NetworkCreated, Reconnected

log = logging.getLogger(__name__)

# Only for a stream of its own: network events carry no labels, so the installation does not
# matter (any creation wakes a sync, which reads only this installation's networks).
_ANY_INSTALLATION = ""


class NetworkCreations:
    def __init__(self, source: EngineEvents | Any, on_create: Callable[[], object]) -> None:
        self._owned = not isinstance(source, EngineEvents)
        self._events: EngineEvents = (
            EngineEvents(source, _ANY_INSTALLATION, name="berth-egress-events")
            if self._owned
            else source
        )
        self._on_create = on_create

    def start(self) -> None:
        self._events.subscribe(self._handle)
        if self._owned:
            self._events.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._events.unsubscribe(self._handle)
        if self._owned:
            self._events.stop(timeout)

    def _handle(self, event: EngineEvent) -> None:
        # Reconnected: whatever was created while nobody listened.
        if isinstance(event, NetworkCreated | Reconnected):
            self._call()

    def _call(self) -> None:
        try:
            self._on_create()
        except Exception as exc:  # the periodic sync retries
            log.warning("egress filter: sync after a network was created failed: %s", exc)
