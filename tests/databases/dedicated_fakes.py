"""A ``DedicatedRunner`` in memory, for unit tests: it keeps what a real runner would have on
its engine (containers, volumes) and can be told to fail at one step of a run, after the steps
before it made their part. tests/databases/test_dedicated_runner_contract.py runs the same
contract against it and against ``LocalDedicatedRunner`` on the real engine."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from berth.databases.dedicated import DedicatedSpec, RunningServer, is_server_name
from berth.databases.errors import DatabaseExists, DatabaseServerError

STEPS = ("network", "volume", "init", "create", "files", "start")


@dataclass
class FakeServer:
    spec: DedicatedSpec
    address: str
    running: bool = True
    created_at: float = 0.0


@dataclass
class FakeDedicatedRunner:
    fail_at: str = ""  # one of STEPS: that step raises, the ones before it made their part
    exits_at_start: bool = False  # the server starts, then stops at once (a bad config)
    servers: dict[str, FakeServer] = field(default_factory=dict)
    volumes: dict[str, float] = field(default_factory=dict)  # name: created at
    runs: list[str] = field(default_factory=list)
    clock: float = 1_000.0
    _addresses: itertools.count[int] = field(default_factory=lambda: itertools.count(2))

    def _step(self, step: str) -> None:
        if self.fail_at == step:
            raise DatabaseServerError(f"the fake failed at {step}")

    def network_gateway(self, network: str, tenant_id: str) -> str:
        self._step("network")
        return "10.99.0.1"

    def run(self, spec: DedicatedSpec) -> RunningServer:
        if not is_server_name(spec.name):
            raise ValueError(f"{spec.name!r} is not a dedicated server's name")
        self.runs.append(spec.name)
        if spec.name in self.servers or (spec.volume and spec.volume in self.volumes):
            raise DatabaseExists(f"a container named {spec.name} exists already")
        try:
            self._step("network")
            if spec.volume:
                self.volumes[spec.volume] = self.clock
            self._step("volume")
            if spec.init is not None:
                self._step("init")
            self.servers[spec.name] = FakeServer(
                spec, f"10.99.0.{next(self._addresses)}", running=False, created_at=self.clock
            )
            self._step("create")
            if spec.files:
                self._step("files")
            self._step("start")
            self.servers[spec.name].running = not self.exits_at_start
        except BaseException:
            self.remove(spec.name)
            raise
        found = self.find(spec.name)
        if found is None and not self.exits_at_start:
            raise DatabaseServerError(f"{spec.name} stopped as soon as it started")
        return found or RunningServer(spec.name, self.servers[spec.name].address, 0)

    def find(self, name: str) -> RunningServer | None:
        server = self.servers.get(name)
        if server is None or not server.running:
            return None
        return RunningServer(name, server.address, server.spec.memory_bytes)

    def remove(self, name: str) -> None:
        if not is_server_name(name):
            raise ValueError(f"{name!r} is not a dedicated server's name")
        self.servers.pop(name, None)
        self.volumes.pop(f"{name}-data", None)

    def names(self) -> list[str]:
        from_volumes = {v.removesuffix("-data") for v in self.volumes}
        return sorted(set(self.servers) | from_volumes)

    def exited(self, name: str) -> bool:
        server = self.servers.get(name)
        return server is None or not server.running

    def tail(self, name: str) -> str:
        return "the fake's last words"

    def created_at(self, name: str) -> float | None:
        if not is_server_name(name):
            raise ValueError(f"{name!r} is not a dedicated server's name")
        if name in self.servers:
            return self.servers[name].created_at
        return self.volumes.get(f"{name}-data")

    def stop(self, name: str) -> None:
        """As ``docker stop``: the container and its volume stay."""
        self.servers[name].running = False
