"""What an engine event means (pure decode), what it wakes, and the listener's fan-out and
reconnection against a scripted engine client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from berth.controllers.engine_events import (
    EVENT_FILTERS,
    RECONNECT_CAP_SECONDS,
    ContainerEvent,
    ControllerWaker,
    EngineEvent,
    EngineEvents,
    NetworkCreated,
    Reconnected,
    Wakes,
    decode,
    reconnect_delay,
    wakes_for,
)
from berth.netpolicy.events import NetworkCreations
from tests.harness import wait_until

INST = "inst1"
OWNED = {"berth.managed": "true", "berth.installation": INST, "berth.app": "app1"}


def container_event(action: str, attributes: dict[str, str], cid: str = "c1") -> dict[str, Any]:
    return {
        "Type": "container",
        "Action": action,
        "status": action,
        "id": cid,
        "Actor": {"ID": cid, "Attributes": {"name": "berth-web", **attributes}},
        "time": 1,
    }


def test_an_owned_container_event_names_the_container_and_app() -> None:
    for action in ("start", "die", "oom", "destroy"):
        event = decode(container_event(action, {**OWNED, "exitCode": "137"}), INST)
        assert event == ContainerEvent(action, "c1", "app1")  # type: ignore[arg-type]


def test_foreign_unlabelled_and_build_containers_mean_nothing() -> None:
    other = {**OWNED, "berth.installation": "someone-else"}
    unmanaged = {k: v for k, v in OWNED.items() if k != "berth.managed"}
    build_step = {"berth.build.step": INST, "berth.tenant": "t1"}
    for attrs in (other, unmanaged, build_step, {}):
        assert decode(container_event("start", attrs), INST) is None


def test_other_actions_and_malformed_events_mean_nothing() -> None:
    for action in ("create", "kill", "exec_start: sh", "health_status: healthy", "pause"):
        assert decode(container_event(action, OWNED), INST) is None
    malformed: list[dict[str, Any]] = [
        {},
        {"Type": "container"},
        {"Type": "container", "Action": "start", "Actor": "c1"},
        {"Type": "container", "Action": "start", "Actor": {"ID": ""}},
        {"Type": "container", "Action": "start", "Actor": {"ID": 5, "Attributes": OWNED}},
        {"Type": "container", "Action": "start", "Actor": {"ID": "c1", "Attributes": None}},
        {"Type": "image", "Action": "pull", "Actor": {"ID": "busybox", "Attributes": OWNED}},
        {"Type": "volume", "Action": "create", "Actor": {"ID": "v1"}},
    ]
    for raw in malformed:
        assert decode(raw, INST) is None
    # Labels whose values are not strings are ignored, not trusted.
    weird = container_event("start", {**OWNED, "berth.installation": 1})  # type: ignore[dict-item]
    assert decode(weird, INST) is None


def test_a_network_creation_is_reported_whoever_made_it() -> None:
    raw = {"Type": "network", "Action": "create", "Actor": {"ID": "n1", "Attributes": {}}}
    assert decode(raw, INST) == NetworkCreated("n1", "")
    raw["Actor"]["Attributes"] = {"name": "berth-t-x", "type": "bridge"}
    assert decode(raw, INST) == NetworkCreated("n1", "berth-t-x")
    for action in ("connect", "disconnect", "destroy"):
        assert decode({**raw, "Action": action}, INST) is None


def test_the_engine_filters_what_decode_can_use() -> None:
    assert sorted(EVENT_FILTERS["type"]) == ["container", "network"]
    assert set(EVENT_FILTERS["event"]) == {"start", "die", "oom", "destroy", "create"}
    assert "label" not in EVENT_FILTERS  # it would drop network events (they carry no labels)


def test_what_each_event_wakes() -> None:
    assert wakes_for(ContainerEvent("start", "c1", "a")) == Wakes(reconcile=True, probe="c1")
    for action in ("die", "oom", "destroy"):
        event = ContainerEvent(action, "c1", "a")  # type: ignore[arg-type]
        assert wakes_for(event) == Wakes(reconcile=True, forget="c1")
    assert wakes_for(Reconnected()) == Wakes(reconcile=True)  # missed events: one full pass
    assert wakes_for(NetworkCreated("n1", "x")) == Wakes()  # the egress filter's


def test_the_waker_forgets_before_it_wakes_the_reconciler() -> None:
    calls: list[str] = []
    waker = ControllerWaker(
        lambda: calls.append("reconcile"),
        lambda cid: calls.append(f"probe {cid}"),
        lambda cid: calls.append(f"forget {cid}"),
    )
    waker(ContainerEvent("die", "c1", "a"))
    waker(ContainerEvent("start", "c2", "a"))
    waker(NetworkCreated("n1", ""))
    assert calls == ["forget c1", "reconcile", "probe c2", "reconcile"]


def test_reconnection_backs_off_capped() -> None:
    delays = [reconnect_delay(n) for n in range(1, 12)]
    assert delays[:3] == [0.25, 0.5, 1.0]
    assert delays == sorted(delays) and max(delays) == RECONNECT_CAP_SECONDS


class Stream:
    """A scripted event stream: yields its events, then blocks until closed (like the engine's
    chunked response), or ends at once (the engine went away)."""

    def __init__(self, events: list[dict[str, Any]], then_block: bool) -> None:
        self.events, self.then_block = events, then_block
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from self.events
        if self.then_block:
            self.closed.wait(30)

    def close(self) -> None:
        self.closed.set()


class ScriptedApi:
    """``events()`` answers from a script: a Stream, or an exception (engine down)."""

    def __init__(self, script: list[Stream | Exception]) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.last: Stream | None = None

    def events(self, **kwargs: Any) -> Stream:
        self.calls.append(kwargs)
        step = self.script.pop(0) if self.script else Stream([], then_block=True)
        if isinstance(step, Exception):
            raise step
        self.last = step
        return step


def test_the_listener_fans_out_and_listens_again_after_the_engine_goes_away() -> None:
    start = container_event("start", OWNED)
    foreign = container_event("die", {**OWNED, "berth.installation": "x"}, cid="c9")
    die = container_event("die", OWNED)
    api = ScriptedApi(
        [
            Stream([start, foreign, "not a dict"], then_block=False),  # type: ignore[list-item]
            ConnectionError("engine down"),
            Stream([die], then_block=True),
        ]
    )
    seen: list[EngineEvent] = []
    also: list[EngineEvent] = []
    events = EngineEvents(api, INST, name="test-engine-events")

    def broken(event: EngineEvent) -> None:
        raise RuntimeError("a subscriber's bug")

    events.subscribe(seen.append)
    events.subscribe(broken)  # must not silence the others
    events.subscribe(also.append)
    events.start()
    try:
        wait_until(lambda: len(seen) >= 4, 20, "the events after the reconnection")
    finally:
        events.stop()
    assert seen == [
        Reconnected(),
        ContainerEvent("start", "c1", "app1"),
        Reconnected(),  # after the stream ended and one failed attempt
        ContainerEvent("die", "c1", "app1"),
    ]
    assert also == seen
    assert all(call == {"decode": True, "filters": EVENT_FILTERS} for call in api.calls)
    assert len(api.calls) == 3
    assert api.last is not None and api.last.closed.is_set()  # stop() ended the blocked read
    assert not any(t.name == "test-engine-events" for t in threading.enumerate())


def test_a_late_subscriber_is_told_to_resync_and_can_leave() -> None:
    api = ScriptedApi([Stream([], then_block=True)])
    events = EngineEvents(api, INST, name="test-engine-events-late")
    events.start()
    try:
        wait_until(events.connected.is_set, 20, "the stream is open")
        seen: list[EngineEvent] = []
        events.subscribe(seen.append)
        assert seen == [Reconnected()]
        events.unsubscribe(seen.append)
        events.unsubscribe(seen.append)  # twice is harmless
    finally:
        events.stop()
    assert not events.connected.is_set()


def test_network_creations_ride_the_shared_stream() -> None:
    created = {"Type": "network", "Action": "create", "Actor": {"ID": "n1", "Attributes": {}}}
    api = ScriptedApi([Stream([container_event("start", OWNED), created], then_block=True)])
    events = EngineEvents(api, INST, name="test-engine-events-net")
    syncs: list[int] = []
    watcher = NetworkCreations(events, lambda: syncs.append(1))
    watcher.start()  # subscribes only: the shared stream is started by its owner
    assert api.calls == []
    events.start()
    try:
        wait_until(lambda: len(syncs) >= 2, 20, "a sync on connect and one on the creation")
        watcher.stop()  # leaves the stream open for the others
        assert events.connected.is_set()
    finally:
        events.stop()
    assert syncs == [1, 1]  # the container event is not the egress filter's
    assert len(api.calls) == 1  # one connection for both
