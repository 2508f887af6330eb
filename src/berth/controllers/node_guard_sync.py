"""Keep the node guard service (berth.swarm.guard_service) equal to the swarm's facts.

The leader runs it on the swarm backend, every ``interval`` seconds and when woken: it reads
the nodes (addresses, ``ingress`` labels), makes the guard's image ready once per process
(built on the engine Berth talks to, pushed to the platform registry, pinned by digest), and
creates the service, updates it when a node joined or left or a label changed, or leaves it.

Where Berth's own servers are (their nginx reaches the published ports): the setting
``server_addresses``; empty, this server's own source address toward the swarm's manager (the
address the nodes see it connect from), which is right for one server. Several servers on one
store: list them all.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from berth.controllers.platform_image import PlatformImage
from berth.errors import BerthError
from berth.netpolicy.plan import NetPolicyError
from berth.periodic import LoopOwner, PeriodicLoop
from berth.swarm.api import SwarmAPI
from berth.swarm.guard_service import (
    LABEL_GUARD,
    LABEL_GUARD_FACTS,
    SERVICE_NAME,
    GuardAction,
    GuardFacts,
    check_facts,
    guard_facts,
    guard_spec,
    local_container_options,
    local_guard_wanted,
    node_address,
    plan_service,
)

log = logging.getLogger(__name__)
IMAGE_WHAT = "the node guard's image"


@dataclass(frozen=True)
class GuardSettings:
    server_addresses: tuple[str, ...]  # empty: found from the route to the manager
    protected: tuple[str, ...]
    join_from: tuple[str, ...]


@dataclass(frozen=True)
class SyncOutcome:
    action: GuardAction
    facts: GuardFacts
    image: str
    local: str = ""  # the plain-container guard: "created", "kept", "removed" or ""


class LocalGuard:
    """The guard as a plain container of the engine Berth talks to (docker-py
    DockerClient), for when that engine's node is a drained manager: Swarm gives it no task.
    Replaced when the facts change: the old one's rules stay until the new one swaps them."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _current(self) -> Any:
        import docker.errors

        try:
            return self.client.containers.get(SERVICE_NAME)
        except docker.errors.NotFound:
            return None

    def ensure(self, spec: dict[str, Any]) -> str:
        options = local_container_options(spec)
        current = self._current()
        if current is not None:
            if current.labels.get(LABEL_GUARD_FACTS) == options["labels"][LABEL_GUARD_FACTS]:
                return "kept"
            current.remove(force=True)
        self.client.containers.run(**options)
        return "created"

    def remove(self) -> str:
        current = self._current()
        if current is None:
            return ""
        current.remove(force=True)
        return "removed"


def source_address_toward(address: str) -> str:
    """This machine's source address for packets to ``address`` (a UDP socket's connect
    picks the route; nothing is sent). Empty when there is no route."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return ""


class NodeGuardSync(LoopOwner):
    """``image()`` returns the guard image's pinned reference (building and pushing it the
    first time; raising BerthError when it cannot)."""

    def __init__(
        self,
        api: SwarmAPI,
        installation: str,
        settings: GuardSettings,
        image: Callable[[], str],
        *,
        interval: float = 3.0,
        is_leader: Callable[[], bool] = lambda: True,
        wanted: Callable[[], bool] = lambda: True,
        route_source: Callable[[str], str] = source_address_toward,
        clock: Callable[[], float] = time.monotonic,
        local: LocalGuard | None = None,
    ) -> None:
        self.api = api
        self.installation = installation
        self.settings = settings
        self._is_leader = is_leader
        self._wanted = wanted
        self._route_source = route_source
        self._image = PlatformImage(image, IMAGE_WHAT, clock=clock)
        self._local = local
        self._lock = threading.Lock()
        self.last: SyncOutcome | None = None
        self._loop = PeriodicLoop("berth-node-guard", self.pass_once, interval)

    def pass_once(self) -> SyncOutcome | None:
        """One pass (the loop's body): nothing off the swarm backend or off the lease."""
        if not self._wanted() or not self._is_leader():
            return None
        with self._lock:
            return self.sync()

    def sync(self) -> SyncOutcome:
        nodes = self.api.nodes()
        facts = guard_facts(
            nodes, self.server_addresses(nodes), self.settings.protected, self.settings.join_from
        )
        try:
            check_facts(facts)
        except NetPolicyError as bad:
            raise BerthError(f"the node guard's facts are refused: {bad.message}") from None
        reference = self._image.get()
        spec = guard_spec(reference, facts, self.installation)
        action = plan_service(self.api.services(labels={LABEL_GUARD: "true"}), spec)
        if action.kind == "create":
            self.api.create_service(spec)
            log.info("node guard: service created for %d nodes", len(facts.nodes))
        elif action.kind == "update":
            self.api.update_service(action.service_id, action.version, spec)
            log.info(
                "node guard: updated (nodes %s, ingress %s)",
                ", ".join(facts.nodes),
                ", ".join(facts.ingress),
            )
        local = ""
        if self._local is not None:
            self_id = str(self.api.info().get("NodeID") or "")
            if local_guard_wanted(nodes, self_id):
                local = self._local.ensure(spec)
            else:
                local = self._local.remove()
        self.last = SyncOutcome(action, facts, reference, local)
        return self.last

    def server_addresses(self, nodes: Sequence[dict[str, Any]]) -> list[str]:
        if self.settings.server_addresses:
            return list(self.settings.server_addresses)
        managers = [n for n in nodes if (n.get("Spec") or {}).get("Role") == "manager"]
        for node in managers or nodes:
            found = self._route_source(node_address(node)) if node_address(node) else ""
            if found and not found.startswith("127."):
                return [found]
        return []
