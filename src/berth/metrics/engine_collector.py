"""Sample CPU, memory and restarts of every instance this server's engine runs, in one pass
over their cgroup files, and fold the samples into this server's per-instance buckets.

Which instances: the store's rows with a container (the reconciler's observation, which also
counts restarts). Where each container's cgroup is: its main process, asked of the engine once
per container (``pid_of``); a container the engine does not know (another node's) is not
asked again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from berth.metrics import cgroups, store
from berth.metrics.model import InstanceSample
from berth.periodic import PeriodicLoop
from berth.store.tables import Instance

log = logging.getLogger(__name__)
LIVE_STATES = ("starting", "running", "stopping")
MISSING_RETRY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Target:
    instance_id: str
    app_id: str
    tenant_id: str
    container_id: str
    restarts: int


def store_targets(session: Session) -> list[Target]:
    rows = session.execute(
        select(
            Instance.id,
            Instance.app_id,
            Instance.tenant_id,
            Instance.container_id,
            Instance.restarts,
        ).where(Instance.container_id.is_not(None), Instance.state.in_(LIVE_STATES))
    )
    return [Target(i, a, t, c, r) for i, a, t, c, r in rows if c]


class CgroupSampler:
    """The pure-ish core: targets in, samples out. Keeps each container's cgroup files and last
    CPU reading between passes."""

    def __init__(
        self,
        pid_of: Callable[[str], int | None],
        files_of_pid: Callable[[int], cgroups.CgroupFiles | None] = cgroups.files_of_pid,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pid_of = pid_of
        self.files_of_pid = files_of_pid
        self.clock = clock
        self._files: dict[str, cgroups.CgroupFiles] = {}
        self._missing: dict[str, float] = {}  # container -> when to ask the engine again
        self._last_cpu: dict[str, int] = {}
        self.lookups = 0  # engine calls made, for the benchmark

    def sample(self, targets: list[Target]) -> list[InstanceSample]:
        now = self.clock()
        live = {t.container_id for t in targets}
        for gone in [c for c in (*self._files, *self._missing) if c not in live]:
            self._files.pop(gone, None)
            self._missing.pop(gone, None)
            self._last_cpu.pop(gone, None)
        out = []
        for target in targets:
            files = self._files_for(target.container_id, now)
            if files is None:
                continue
            reading = cgroups.read(files)
            if reading is None:
                # The container stopped or was recreated: look its cgroup up again next pass.
                self._files.pop(target.container_id, None)
                continue
            out.append(self._sample(target, reading, now))
        return out

    def _files_for(self, container_id: str, now: float) -> cgroups.CgroupFiles | None:
        files = self._files.get(container_id)
        if files is not None:
            return files
        if self._missing.get(container_id, 0.0) > now:
            return None
        self.lookups += 1
        pid = self.pid_of(container_id)
        files = self.files_of_pid(pid) if pid else None
        if files is None:
            # Another node's container, or one not started yet: ask again in a while, not
            # on every pass.
            self._missing[container_id] = now + MISSING_RETRY_SECONDS
            return None
        self._files[container_id] = files
        return files

    def _sample(self, target: Target, reading: cgroups.Reading, now: float) -> InstanceSample:
        previous = self._last_cpu.get(target.container_id)
        self._last_cpu[target.container_id] = reading.cpu_usec
        if previous is None:
            delta = 0
        elif reading.cpu_usec >= previous:
            delta = reading.cpu_usec - previous
        else:
            delta = reading.cpu_usec  # the counter restarted with the container's cgroup
        return InstanceSample(
            instance_id=target.instance_id,
            app_id=target.app_id,
            tenant_id=target.tenant_id,
            container_id=target.container_id,
            at=now,
            cpu_usec=reading.cpu_usec,
            cpu_usec_delta=delta,
            memory_bytes=reading.memory_bytes,
            restarts=target.restarts,
        )


class EngineCollector:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        server_id: str,
        sampler: CgroupSampler,
        *,
        bucket_seconds: int,
        interval: float = 10.0,
    ) -> None:
        self.sessions = sessions
        self.server_id = server_id
        self.sampler = sampler
        self.bucket_seconds = bucket_seconds
        self._loop = PeriodicLoop("metrics-engine", self.run_once, interval)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def run_once(self) -> int:
        with self.sessions() as session:
            targets = store_targets(session)
        samples = self.sampler.sample(targets)
        if not samples:
            return 0
        with self.sessions.begin() as session:
            return store.add_instance_samples(session, self.server_id, samples, self.bucket_seconds)


def docker_pid_of(api: object) -> Callable[[str], int | None]:
    """``pid_of`` over a docker-py APIClient: the container's main process, None when this
    engine has no such container or it is not running."""
    import docker.errors

    def pid_of(container_id: str) -> int | None:
        try:
            attrs = api.inspect_container(container_id)  # type: ignore[attr-defined]
        except docker.errors.NotFound:
            return None
        pid = int((attrs.get("State") or {}).get("Pid") or 0)
        return pid or None

    return pid_of
