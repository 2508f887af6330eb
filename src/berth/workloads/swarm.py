"""The swarm backend: one Swarm service per process group; Swarm places, restarts and heals.

Berth writes services and reads tasks back. A service carries its group's key in
``berth.group`` and the hash of its spec in ``berth.spec``: ``apply`` creates the services that
are missing, scales those whose replicas changed (a changed spec is a new revision, so a new
group and a new service; a drifted one is updated in place), and removes this installation's
services no group wants. It writes nothing when nothing changed.

Placement is Swarm's: a task reserves its memory, spreads over ``node.labels.zone``, and obeys
the group's constraints (``zone==b`` is ``node.labels.zone==b``). There is no
``node.role==worker`` constraint: on one machine (``berth cluster init`` with no workers yet) the
manager itself must run the tasks; with workers, the managers are drained and get none.

Every node's dockerd must run with ``--no-new-privileges`` and the node without swap: the
service API of Engine 20.10 can set neither (see berth.swarm.specs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from berth.controllers.backoff import Backoff
from berth.errors import BerthError, RuntimeFailure
from berth.runtime.protocol import LABEL_INSTALLATION, LABEL_MANAGED, owner_labels
from berth.swarm.api import SwarmAPI
from berth.swarm.specs import (
    LABEL_SPEC,
    network_labels,
    replicas_of,
    service_spec,
)
from berth.swarm.tasks import NodeView, TaskMemory, instances_of_service, parse_time
from berth.workloads.protocol import (
    LABEL_GROUP,
    LABEL_TENANT,
    BackendKind,
    NodeSummary,
    ProcessGroup,
    WorkloadInstance,
)

log = logging.getLogger(__name__)


@dataclass
class SwarmWorkloads:
    """Process groups of one installation as services of the swarm behind ``api``.

    ``removed_report_seconds``: how long an instance of a removed service keeps being reported
    as ``removed`` (0: exactly once, to the next caller of ``instances()``).
    """

    api: SwarmAPI
    installation: str
    clock: Callable[[], float] = time.time
    removed_report_seconds: float = 0.0
    kind: BackendKind = field(default="swarm", init=False)

    def __post_init__(self) -> None:
        if not self.installation:
            raise ValueError("installation id must not be empty")
        self._lock = threading.Lock()
        self._memory = TaskMemory()
        self._last: dict[str, WorkloadInstance] = {}  # task id -> as last reported
        self._removed_at: dict[str, float] = {}  # group key -> when apply removed its service
        self._removed: dict[str, tuple[WorkloadInstance, float]] = {}  # reported until
        self._refused: dict[str, str] = {}  # group key -> why its service could not be written
        # A refused write is tried again with per-group exponential backoff (the controllers'
        # one retry policy), unless the group changed since: a new release or scale goes at once.
        self._backoff = Backoff()
        self._refused_as: dict[str, ProcessGroup] = {}  # group key -> the group that was refused
        self._groups: dict[str, ProcessGroup] = {}
        self._names: dict[str, str] = {}  # service id -> name, for tasks that outlive it
        self._specs: dict[str, tuple[ProcessGroup, dict[str, Any]]] = {}
        self._nodes: dict[str, NodeView] = {}  # by name, as last seen
        # For ``nodes()``' last_seen: node id -> when last seen ready; -> (state, since when)
        # while it is not ready.
        self._seen_ready: dict[str, float] = {}
        self._seen_in_state: dict[str, tuple[str, float]] = {}
        # Services created, updated or removed so far: a caller that sees it unchanged after
        # ``apply`` knows that nothing was started or stopped.
        self.writes = 0

    # -- the seam -----------------------------------------------------------------------------

    def apply(self, groups: Sequence[ProcessGroup]) -> None:
        with self._lock:
            wanted = {group.key: group for group in groups}
            self._groups = dict(wanted)
            for key in [k for k in self._specs if k not in wanted]:
                del self._specs[key]
            services = self._services()
            by_group = {s["Spec"]["Labels"].get(LABEL_GROUP, ""): s for s in services}
            refused: dict[str, str] = {}
            listed = self._ensure_networks(list(wanted.values()), refused)
            now = self.clock()
            for key, group in wanted.items():
                if key in refused:
                    continue
                if self._refused_as.get(key) == group and not self._backoff.ready(key, now):
                    why = self._backoff.waiting(now).get(key, "")
                    refused[key] = _with_retry(why, self._backoff.next_due(key), now)
                    continue
                try:
                    spec = self._spec_of(group)
                    self._converge(spec, by_group.get(key))
                except BerthError as failure:
                    if _unavailable(failure):
                        raise
                    due = self._backoff.failed(key, now, failure.message)
                    refused[key] = _with_retry(failure.message, due, now)
                    self._refused_as[key] = group
                    log.warning("swarm: group %s not applied: %s", key, refused[key])
                else:
                    self._backoff.forget(key)
                    self._refused_as.pop(key, None)
            for key in [k for k in self._refused_as if k not in wanted]:
                del self._refused_as[key]
                self._backoff.forget(key)
            doomed = [s for key, s in by_group.items() if key not in wanted]
            if doomed:
                self._remember_before_removal(doomed)
            for service in doomed:
                try:
                    self.api.remove_service(service["ID"])
                except BerthError as failure:
                    if _unavailable(failure):
                        raise
                    log.warning("swarm: service %s not removed yet: %s", service["ID"], failure)
                    continue
                self.writes += 1
                self._removed_at[service["Spec"]["Labels"].get(LABEL_GROUP, "")] = self.clock()
            self._refused = refused
            self._remove_unused_networks(wanted.values(), listed)

    def instances(self) -> list[WorkloadInstance]:
        with self._lock:
            now = self.clock()
            services = self._services()
            nodes = self._node_views()
            tasks_by_service: dict[str, list[Any]] = {s["ID"]: [] for s in services}
            orphans: dict[str, list[Any]] = {}
            for task in self.api.tasks(labels=owner_labels(self.installation)):
                service_id = str(task.get("ServiceID", ""))
                bucket = tasks_by_service.get(service_id)
                if bucket is None:
                    # Its service is removed and the task not gone yet (still stopping, or just
                    # stopped): its container's labels say what it was.
                    if _container_labels(task).get(LABEL_INSTALLATION) != self.installation:
                        continue
                    bucket = orphans.setdefault(service_id, [])
                bucket.append(task)
            names = {s["ID"]: s["Spec"].get("Name", s["ID"]) for s in services}
            out: list[WorkloadInstance] = []
            for service in services:
                out.extend(
                    instances_of_service(
                        service, tasks_by_service[service["ID"]], nodes, self._memory, now
                    )
                )
            for service_id, tasks in orphans.items():
                name = self._names.get(service_id, service_id)
                names[service_id] = name
                gone = {
                    "ID": service_id,
                    "Spec": {"Name": name, "Labels": _container_labels(tasks[0])},
                }
                out.extend(instances_of_service(gone, tasks, nodes, self._memory, now))
            self._names = names
            seen = {i.id for i in out}
            self._memory.forget(seen, [s["ID"] for s in services])
            out.extend(self._refused_instances(services))
            out.extend(self._newly_removed(seen, now))
            self._last = {i.id: i for i in out if i.state != "removed" and i.id in seen}
            return out

    def nodes(self) -> list[NodeSummary]:
        now = self.clock()
        out = []
        for node in self.api.nodes():
            spec = node.get("Spec") or {}
            description = node.get("Description") or {}
            resources = description.get("Resources") or {}
            status = node.get("Status") or {}
            state = str(status.get("State") or "unknown")
            out.append(
                NodeSummary(
                    id=str(node["ID"]),
                    name=str(description.get("Hostname") or node["ID"]),
                    address=str(status.get("Addr") or ""),
                    role=str(spec.get("Role") or "worker"),
                    availability=str(spec.get("Availability") or "active"),
                    state=state,
                    labels=dict(spec.get("Labels") or {}),
                    memory_bytes=int(resources.get("MemoryBytes") or 0),
                    nano_cpus=int(resources.get("NanoCPUs") or 0),
                    last_seen=self._last_seen(node, state, now),
                )
            )
        return out

    def _last_seen(self, node: Mapping[str, Any], state: str, now: float) -> float:
        """When the node was last known good. Ready: now. Otherwise when its status changed:
        Swarm keeps no such time, only the node's ``UpdatedAt``, which any later edit (a label)
        moves on, so the last time this server saw it ready bounds it too; failing both, when
        this server first saw it in this state."""
        node_id = str(node["ID"])
        if state == "ready":
            self._seen_ready[node_id] = now
            self._seen_in_state.pop(node_id, None)
            return now
        first_state, first_seen = self._seen_in_state.get(node_id, (state, now))
        if first_state != state:
            first_seen = now
        self._seen_in_state[node_id] = (state, first_seen)
        updated, ready = parse_time(node.get("UpdatedAt")), self._seen_ready.get(node_id)
        known = [t for t in (updated, ready) if t is not None]
        return min(known) if known else first_seen

    def logs(self, instance_id: str, tail: int = 100) -> str:
        self._check_owned(instance_id)
        return self.api.task_logs(instance_id, tail)

    def follow_logs(
        self, instance_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Generator[str, None, None]:
        self._check_owned(instance_id)
        return _generator(self.api.follow_task_logs(instance_id, tail, stop))

    def close(self) -> None:
        close = getattr(self.api, "close", None)
        if close is not None:
            close()

    # -- helpers ------------------------------------------------------------------------------

    def _services(self) -> list[dict[str, Any]]:
        return [
            s
            for s in self.api.services(labels=owner_labels(self.installation))
            if (s.get("Spec") or {}).get("Labels", {}).get(LABEL_INSTALLATION) == self.installation
        ]

    def _spec_of(self, group: ProcessGroup) -> dict[str, Any]:
        """The group's service spec, built once per group (a pass holds thousands of them)."""
        cached = self._specs.get(group.key)
        # The same group object is the cheapest comparison (the reconciler hands unchanged
        # groups over as the same objects, 10,000 a pass).
        if cached is not None and (cached[0] is group or cached[0] == group):
            return cached[1]
        # Overlays are named apart from this engine's bridges: on a one-machine swarm (right
        # after `berth cluster init`) the tenant's bridge still exists while its apps move.
        overlaid = replace(group, network=overlay_name(group.network))
        spec = service_spec(overlaid, self.installation)
        self._specs[group.key] = (group, spec)
        return spec

    def _converge(self, spec: dict[str, Any], service: dict[str, Any] | None) -> None:
        if service is None:
            self.writes += 1
            self.api.create_service(spec)
            return
        current = service["Spec"]
        same_spec = (current.get("Labels") or {}).get(LABEL_SPEC) == spec["Labels"][LABEL_SPEC]
        if same_spec and replicas_of(current) == replicas_of(spec):
            return
        if same_spec:
            # Only the count changed: keep the stored spec (networks by id, defaults filled in)
            # so Swarm sees no change to the task template and replaces no task.
            update = dict(current, Mode={"Replicated": {"Replicas": replicas_of(spec)}})
        else:
            update = spec  # drifted (edited by hand): back to what the group says
        self.writes += 1
        self.api.update_service(service["ID"], int(service["Version"]["Index"]), update)

    def _ensure_networks(
        self, groups: Sequence[ProcessGroup], refused: dict[str, str]
    ) -> list[dict[str, Any]]:
        """Returns this installation's networks as listed before (what it created since is in
        use)."""
        # One listing, not one look-up per tenant (a pass holds a thousand tenants' overlays):
        # only a network not listed as this installation's, for this tenant, is ensured.
        listing = self.api.networks(labels=owner_labels(self.installation))
        ours = {str(n.get("Name")): n for n in listing}
        ids: dict[str, str] = {}
        for group in groups:
            network = overlay_name(group.network)
            if network in ids:
                continue
            listed = ours.get(network)
            labels = (listed or {}).get("Labels") or {}
            if listed is not None and labels.get(LABEL_TENANT) == group.tenant_id:
                ids[network] = str(listed["Id"])
                continue
            try:
                ids[network] = self.api.ensure_overlay(
                    network, network_labels(self.installation, group.tenant_id)
                )
            except RuntimeFailure as failure:
                if _unavailable(failure):
                    raise
                for other in groups:
                    if other.network == group.network:
                        refused[other.key] = failure.message
        return listing

    def _remove_unused_networks(
        self, groups: Iterable[ProcessGroup], listed: Sequence[Mapping[str, Any]]
    ) -> None:
        # The apply's own listing: a network created since is used by a wanted group, and one
        # made by anyone else since is removed by the next apply.
        used = {overlay_name(group.network) for group in groups}
        for network in listed:
            labels = network.get("Labels") or {}
            if labels.get(LABEL_MANAGED) != "true" or network.get("Name") in used:
                continue
            try:
                self.api.remove_network(str(network["Id"]))
            except RuntimeFailure as failure:
                if _unavailable(failure):
                    raise
                # Still in use by a service being removed: the next apply removes it.
                log.info("swarm: network %s not removed yet: %s", network.get("Name"), failure)

    def _node_views(self) -> dict[str, NodeView]:
        views = {}
        for node in self.api.nodes():
            status = node.get("Status") or {}
            view = NodeView(
                name=str((node.get("Description") or {}).get("Hostname") or node["ID"]),
                address=str(status.get("Addr") or ""),
                state=str(status.get("State") or "unknown"),
            )
            # The same object while the node is unchanged: the tasks' memo keys hold it, and
            # comparing the same object is the cheapest comparison (30,000 a pass).
            last = self._nodes.get(view.name)
            views[str(node["ID"])] = last if last == view and last is not None else view
        self._nodes = {v.name: v for v in views.values()}
        return views

    def _remember_before_removal(self, services: Sequence[dict[str, Any]]) -> None:
        """Instances of services about to be removed, so that each is reported ``removed``
        once with its end, even if no caller listed them since this server started."""
        nodes = self._node_views()
        for service in services:
            tasks = self.api.tasks(service_id=str(service["ID"]))
            for instance in instances_of_service(service, tasks, nodes, self._memory, self.clock()):
                self._last.setdefault(instance.id, instance)

    def _refused_instances(self, services: Sequence[Mapping[str, Any]]) -> list[WorkloadInstance]:
        """A group whose service could not be written: its replicas, pending, with why."""
        present = {s["Spec"]["Labels"].get(LABEL_GROUP) for s in services}
        out = []
        for key, why in self._refused.items():
            group = self._groups.get(key)
            if group is None or key in present:
                continue
            for index in range(group.replicas):
                out.append(
                    WorkloadInstance(
                        id=f"refused:{key}:{index + 1}",
                        group=key,
                        tenant_id=group.tenant_id,
                        app_id=group.app_id,
                        revision=group.revision,
                        state="pending",
                        process=group.process,
                        health_path=group.health_path,
                        reason=why,
                        memory_mb=group.memory_mb,
                        cpus_milli=group.cpus_milli,
                        slot=f"{key}.{index + 1}",
                    )
                )
        return out

    def _newly_removed(self, seen: set[str], now: float) -> list[WorkloadInstance]:
        """Tasks that are gone since the last call, reported as removed with their end."""
        # Walked in the order last seen, and only when one is gone (a set difference first:
        # most passes lose none of 30,000).
        gone_ids = self._last.keys() - seen
        for task_id, last in self._last.items() if gone_ids else ():
            if task_id not in gone_ids or task_id in self._removed:
                continue
            if last.id.startswith("refused:"):
                continue
            finished = last.finished_at
            if finished is None and last.started_at is not None:
                # It ran until its service was removed (or until we last saw it running).
                finished = self._removed_at.get(last.group, now)
            gone = replace(last, state="removed", finished_at=finished, port=None, address=None)
            self._removed[task_id] = (gone, now + self.removed_report_seconds)
        out = []
        for task_id, (gone, until) in list(self._removed.items()):
            out.append(gone)
            if now >= until:
                del self._removed[task_id]
        if self._removed_at:  # most passes removed no service
            live_groups = {i.group for i in self._last.values()} | set(self._groups)
            for key in [k for k in self._removed_at if k not in live_groups]:
                del self._removed_at[key]
        return out

    def _check_owned(self, task_id: str) -> None:
        with self._lock:
            if task_id in self._last:
                return
        if not any(t.get("ID") == task_id for t in self._owned_tasks(task_id)):
            raise RuntimeFailure(
                f"task {task_id} is not an instance of this Berth installation; "
                "refusing to read its logs"
            )

    def _owned_tasks(self, task_id: str) -> list[dict[str, Any]]:
        labels = {**owner_labels(self.installation)}
        return [t for t in self.api.tasks(labels=labels) if t.get("ID") == task_id]


def _container_labels(task: Mapping[str, Any]) -> dict[str, str]:
    return dict(((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {})


def overlay_name(network: str) -> str:
    """The overlay for a tenant network: ``berth-t-<tenant>`` becomes ``berth-o-<tenant>``."""
    return (
        "berth-o-" + network.removeprefix("berth-t-") if network.startswith("berth-t-") else network
    )


def _with_retry(why: str, due: float | None, now: float) -> str:
    if due is None:
        return why
    return f"{why} (next try in {max(1, round(due - now))} s)"


def _unavailable(failure: BaseException) -> bool:
    return getattr(failure, "status", 0) == 503


def _generator(lines: Iterator[str]) -> Generator[str, None, None]:
    try:
        yield from lines
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()
