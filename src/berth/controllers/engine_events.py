"""One stream of the Docker Engine's events for the whole server, fanned out to subscribers.

The loops stay level-triggered (each pass still reads the engine); events only make them run
now instead of at their next interval: a container of this installation that starts, dies, is
killed for memory or is destroyed wakes the reconciler and the health monitor, and a network
that appears wakes the egress filter. ``decode`` (pure) says what an event means; the thread
only reads the stream, and opens it again with capped backoff when the engine goes away. Every
(re)connection is announced as ``Reconnected``: events may have been missed meanwhile, so a
subscriber resyncs instead of trusting the stream to be complete.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from berth.controllers.backoff import exponential_delay
from berth.runtime.protocol import LABEL_APP, is_owned

log = logging.getLogger(__name__)

ContainerAction = Literal["start", "die", "oom", "destroy"]
CONTAINER_ACTIONS: frozenset[str] = frozenset({"start", "die", "oom", "destroy"})

# The engine filters by type and action; labels are checked here, because filter keys are
# ANDed and network events carry no labels on Docker 20.10 (a label filter would drop them).
EVENT_FILTERS: dict[str, list[str]] = {
    "type": ["container", "network"],
    "event": [*sorted(CONTAINER_ACTIONS), "create"],
}

RECONNECT_BASE_SECONDS = 0.25
RECONNECT_CAP_SECONDS = 5.0


@dataclass(frozen=True)
class ContainerEvent:
    """A container of this installation started, died, was OOM-killed or was destroyed."""

    action: ContainerAction
    container_id: str
    app_id: str  # "" for a managed container that is not an app instance


@dataclass(frozen=True)
class NetworkCreated:
    """Any network was created (network events carry no labels to tell whose it is)."""

    network_id: str
    name: str


@dataclass(frozen=True)
class Reconnected:
    """The stream is (again) open: what happened while nobody listened was not seen."""


EngineEvent = ContainerEvent | NetworkCreated | Reconnected
Subscriber = Callable[[EngineEvent], object]


def decode(raw: Mapping[str, Any], installation: str) -> ContainerEvent | NetworkCreated | None:
    """What one raw engine event means to this installation; None when it means nothing."""
    kind = raw.get("Type")
    action = raw.get("Action")
    actor = raw.get("Actor")
    if not isinstance(kind, str) or not isinstance(action, str) or not isinstance(actor, dict):
        return None
    actor_id = actor.get("ID")
    attributes = actor.get("Attributes")
    if not isinstance(actor_id, str) or not actor_id:
        return None
    if not isinstance(attributes, dict):
        attributes = {}
    if kind == "network":
        if action != "create":
            return None
        name = attributes.get("name")
        return NetworkCreated(actor_id, name if isinstance(name, str) else "")
    if kind != "container":
        return None
    # "health_status: healthy" and the like also arrive as actions; only exact ones count.
    if action not in CONTAINER_ACTIONS:
        return None
    labels = {k: v for k, v in attributes.items() if isinstance(k, str) and isinstance(v, str)}
    if not is_owned(labels, installation):
        return None
    app_id = labels.get(LABEL_APP, "")
    return ContainerEvent(cast(ContainerAction, action), actor_id, app_id)


def reconnect_delay(failures: int) -> float:
    """The wait before opening the stream again after ``failures`` failed tries in a row."""
    return exponential_delay(failures, RECONNECT_BASE_SECONDS, RECONNECT_CAP_SECONDS)


class EngineEvents:
    """The listener thread. Subscribers run in it, one after the other: they must be quick
    (wake a loop, note an id), never block on the engine."""

    def __init__(self, api: Any, installation: str, name: str = "berth-engine-events") -> None:
        self._api = api  # a docker.APIClient of its own (the stream holds its connection)
        self.installation = installation
        self._name = name
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(subscriber)
        if self.connected.is_set():
            self._call(subscriber, Reconnected())  # it missed what came before

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(subscriber)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._close_stream()  # ends the blocked read in the thread
        if self._thread is not None:
            self._thread.join(timeout)
        self.connected.clear()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                stream = self._api.events(decode=True, filters=EVENT_FILTERS)
                with self._lock:
                    self._stream = stream
                if self._stop.is_set():
                    break
                failures = 0
                self.connected.set()
                self._dispatch(Reconnected())
                for raw in stream:
                    if self._stop.is_set():
                        break
                    event = decode(raw, self.installation) if isinstance(raw, dict) else None
                    if event is not None:
                        self._dispatch(event)
            except Exception as exc:  # engine down or restarting: listen again shortly
                if not self._stop.is_set():
                    log.debug("engine events interrupted: %s", exc)
            finally:
                self.connected.clear()
                self._close_stream()
            failures += 1
            self._stop.wait(reconnect_delay(failures))

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def _dispatch(self, event: EngineEvent) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            self._call(subscriber, event)

    def _call(self, subscriber: Subscriber, event: EngineEvent) -> None:
        try:
            subscriber(event)
        except Exception:  # one subscriber's bug must not silence the others
            log.exception("engine event subscriber failed on %s", event)


@dataclass(frozen=True)
class Wakes:
    """What one event should set in motion (decided purely; ``ControllerWaker`` does it)."""

    reconcile: bool = False
    probe: str | None = None  # a container that started: health-check it at once
    forget: str | None = None  # a container that stopped: not healthy any more


def wakes_for(event: EngineEvent) -> Wakes:
    """The reconciler's and health monitor's share of an event (networks are the egress
    filter's, see berth.netpolicy.events)."""
    if isinstance(event, Reconnected):
        return Wakes(reconcile=True)  # events may have been missed: one full pass
    if isinstance(event, NetworkCreated):
        return Wakes()
    if event.action == "start":
        return Wakes(reconcile=True, probe=event.container_id)
    return Wakes(reconcile=True, forget=event.container_id)  # die, oom, destroy


@dataclass
class ControllerWaker:
    """The subscriber that wakes the reconciler and tells the health monitor."""

    reconcile: Callable[[], object]
    probe: Callable[[str], object]
    forget: Callable[[str], object]

    def __call__(self, event: EngineEvent) -> None:
        wakes = wakes_for(event)
        # Health first: a pass woken by a death must not route the dead container again.
        if wakes.forget is not None:
            self.forget(wakes.forget)
        if wakes.probe is not None:
            self.probe(wakes.probe)
        if wakes.reconcile:
            self.reconcile()
