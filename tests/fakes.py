"""Fakes shared by the reconciler tests (unit, and the API tests that drive the real loop)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from berth.controllers.reconciler import Reconciler, instance_seed
from berth.proxy.model import ProxyConfig, Route
from berth.runtime.fake import FakeRuntime
from berth.settings import Settings
from berth.workloads.local import LocalWorkloads


@dataclass
class FakeNginx:
    """Records the routes it was asked to serve; always valid, always live."""

    applied: list[ProxyConfig] = field(default_factory=list)

    def config(self, routes: tuple[Route, ...], generation: int) -> ProxyConfig:
        return ProxyConfig("127.0.0.1", 8080, routes, generation)

    def apply(self, cfg: ProxyConfig) -> bool:
        self.applied.append(cfg)
        return True

    def wait_for_generation(self, generation: int, timeout: float = 10.0) -> bool:
        return True

    def is_running(self) -> bool:
        return True

    def tls_version(self) -> int:
        return 0  # no certificates: plain HTTP only

    def upstream_ports(self, app_name: str) -> set[int]:
        route = next(r for r in self.applied[-1].routes if r.app_name == app_name)
        return {u.port for u in route.upstreams}

    def routed_apps(self) -> set[str]:
        return {r.app_name for r in self.applied[-1].routes} if self.applied else set()


@dataclass
class FakeHealth:
    """Every running instance passes, except those listed as failing."""

    runtime: FakeRuntime
    failing: set[str] = field(default_factory=set)
    first_round: threading.Event = field(default_factory=threading.Event)

    def is_healthy(self, container_id: str) -> bool:
        info = self.runtime.inspect(container_id)
        return bool(info and info.state == "running" and container_id not in self.failing)

    def state_of(self, container_id: str) -> None:
        return None


def local_reconciler(
    settings: Settings,
    sessions: sessionmaker[Session],
    runtime: FakeRuntime,
    nginx: FakeNginx,
    health: FakeHealth,
    clock: Callable[[], float] = time.time,
) -> Reconciler:
    """The real reconciler over the local backend on a fake engine, wired like a server."""
    workloads = LocalWorkloads(
        runtime,
        clock=clock,
        healthy=health.is_healthy,
        seed=instance_seed(sessions),
    )
    reconciler = Reconciler(settings, sessions, workloads, nginx, health, clock=clock)  # type: ignore[arg-type]
    workloads.on_change = reconciler.trigger
    return reconciler
