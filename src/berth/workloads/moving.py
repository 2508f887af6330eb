"""The backend of an installation that may move from one machine to a Swarm (``berth cluster
init``), without downtime.

Before the move it is the local backend. From the moment the store records ``swarm``, every
group goes to the Swarm, and each group also keeps its local containers until the Swarm has
``replicas`` instances of it that are routed (running, healthy, in the live ingress config):
start-first, like a rollout. Then the local containers go (routed away first). Both backends'
instances are reported, so routing and billing see everything that runs during the move.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace

from berth.workloads.protocol import (
    BackendKind,
    NodeSummary,
    ProcessGroup,
    WorkloadInstance,
    Workloads,
)

log = logging.getLogger(__name__)


@dataclass
class MovingWorkloads:
    local: Workloads
    make_swarm: Callable[[], Workloads]  # the Swarm backend, made when the move starts
    backend: Callable[[], BackendKind]  # the backend the store records now
    routed: Callable[[], set[str]] = set  # instance ids in the live ingress config
    _swarm: Workloads | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.installation = self.local.installation
        self._lock = threading.Lock()

    @property
    def kind(self) -> BackendKind:
        return "swarm" if self._swarm is not None else "local"

    @property
    def before_stop(self) -> Callable[[set[str]], None]:
        return getattr(self.local, "before_stop", lambda ids: None)

    @before_stop.setter
    def before_stop(self, hook: Callable[[set[str]], None]) -> None:
        if hasattr(self.local, "before_stop"):
            self.local.before_stop = hook  # type: ignore[attr-defined]

    def _current_swarm(self) -> Workloads | None:
        with self._lock:
            if self._swarm is None and self.backend() == "swarm":
                log.info("moving this installation's apps to the Swarm, start-first")
                self._swarm = self.make_swarm()
            return self._swarm

    def apply(self, groups: Sequence[ProcessGroup]) -> None:
        swarm = self._current_swarm()
        if swarm is None:
            self.local.apply(groups)
            return
        swarm.apply(groups)
        local = [i for i in self.local.instances() if i.state not in ("pending", "removed")]
        if not local:
            return  # moved (or never here): nothing runs on this machine any more
        routed = self.routed()
        on_swarm: dict[str, int] = {}
        for inst in swarm.instances():
            if inst.state == "running" and inst.id in routed:
                on_swarm[inst.group] = on_swarm.get(inst.group, 0) + 1
        here: dict[str, int] = {}
        for inst in local:
            if inst.alive:
                here[inst.group] = here.get(inst.group, 0) + 1
        # A group keeps what it runs on this machine (nothing new starts here) until the Swarm
        # serves all its replicas; then its containers go, routed away first.
        still_local = [
            replace(g, replicas=min(g.replicas, here[g.key]))
            for g in groups
            if g.key in here and on_swarm.get(g.key, 0) < g.replicas
        ]
        self.local.apply(still_local)

    def instances(self) -> list[WorkloadInstance]:
        swarm = self._current_swarm()
        local = self.local.instances()
        if swarm is None:
            return local
        # Pending locally means nothing once the Swarm has the group.
        return swarm.instances() + [i for i in local if i.state != "pending"]

    def nodes(self) -> list[NodeSummary]:
        swarm = self._current_swarm()
        return swarm.nodes() if swarm is not None else self.local.nodes()

    def _owner(self, instance_id: str) -> Workloads:
        swarm = self._current_swarm()
        if swarm is not None and any(i.id == instance_id for i in swarm.instances()):
            return swarm
        return self.local

    def logs(self, instance_id: str, tail: int = 100) -> str:
        return self._owner(instance_id).logs(instance_id, tail=tail)

    def follow_logs(
        self, instance_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Generator[str, None, None]:
        return self._owner(instance_id).follow_logs(instance_id, tail=tail, stop=stop)

    def close(self) -> None:
        self.local.close()
        if self._swarm is not None:
            self._swarm.close()
