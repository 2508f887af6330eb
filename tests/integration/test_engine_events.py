"""The real Docker Engine's events reach the subscribers of one stream: a container of this
installation that starts, dies and is destroyed; a network that is created; nothing of a
container that belongs to another installation."""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest

from berth.controllers.engine_events import (
    ContainerEvent,
    EngineEvent,
    EngineEvents,
    NetworkCreated,
    Reconnected,
)
from berth.netpolicy.events import NetworkCreations
from tests.harness import docker_client, wait_until

pytestmark = pytest.mark.docker

IMAGE = "berth/busybox:latest"


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    c = docker_client()
    yield c
    c.close()


@pytest.fixture
def made(client: docker.DockerClient) -> Iterator[list[Any]]:
    """Containers and networks the test creates, removed even when it fails."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        with contextlib.suppress(docker.errors.NotFound):
            if hasattr(thing, "kill"):
                thing.remove(force=True)
            else:
                thing.remove()


@pytest.fixture
def listener(client: docker.DockerClient) -> Iterator[tuple[EngineEvents, list[EngineEvent]]]:
    installation = secrets.token_hex(6)
    events = EngineEvents(client.api, installation, name=f"test-events-{installation}")
    seen: list[EngineEvent] = []
    lock = threading.Lock()

    def record(event: EngineEvent) -> None:
        with lock:
            seen.append(event)

    events.subscribe(record)
    events.start()
    try:
        wait_until(events.connected.is_set, 20, "the event stream is open")
        yield events, seen
    finally:
        events.stop()
    assert not any(t.name == f"test-events-{installation}" for t in threading.enumerate())


def labels(installation: str, app: str) -> dict[str, str]:
    return {"berth.managed": "true", "berth.installation": installation, "berth.app": app}


def test_a_containers_start_and_death_reach_the_subscriber(
    client: docker.DockerClient,
    made: list[Any],
    listener: tuple[EngineEvents, list[EngineEvent]],
) -> None:
    events, seen = listener
    installation = events.installation
    tag = secrets.token_hex(4)
    foreign = client.containers.run(
        IMAGE,
        ["sleep", "30"],
        detach=True,
        name=f"berth-test-foreign-{tag}",
        labels=labels("another-installation", "theirs"),
    )
    made.append(foreign)
    mine = client.containers.run(
        IMAGE,
        ["sleep", "30"],
        detach=True,
        name=f"berth-test-events-{tag}",
        labels=labels(installation, "app1"),
    )
    made.append(mine)

    def got(action: str) -> bool:
        return ContainerEvent(action, mine.id, "app1") in list(seen)  # type: ignore[arg-type]

    wait_until(lambda: got("start"), 20, "the start event arrives")
    mine.kill()
    wait_until(lambda: got("die"), 20, "the die event arrives")
    mine.remove(force=True)
    wait_until(lambda: got("destroy"), 20, "the destroy event arrives")
    foreign.remove(force=True)
    # Ordered by the engine, nothing of the foreign container, and the connect came first.
    container_events = [e for e in seen if isinstance(e, ContainerEvent)]
    assert [e.action for e in container_events if e.container_id == mine.id] == [
        "start",
        "die",
        "destroy",
    ]
    assert all(e.container_id == mine.id for e in container_events)
    assert seen[0] == Reconnected()


def test_a_network_creation_reaches_the_egress_subscriber_on_the_same_stream(
    client: docker.DockerClient,
    made: list[Any],
    listener: tuple[EngineEvents, list[EngineEvent]],
) -> None:
    events, seen = listener
    syncs: list[int] = []
    watcher = NetworkCreations(events, lambda: syncs.append(1))
    watcher.start()
    try:
        assert syncs == [1]  # subscribed to an open stream: resync at once
        network = client.networks.create(f"berth-test-ev-{secrets.token_hex(4)}", driver="bridge")
        made.append(network)
        wait_until(lambda: NetworkCreated(network.id, network.name) in list(seen), 20, "event")
        wait_until(lambda: len(syncs) >= 2, 20, "the egress filter's sync")
    finally:
        watcher.stop()
