"""Shared world of the reconciler unit tests: a real store, the fake runtime, a fake nginx and
fake health checks, and a clock the test moves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from berth.controllers.reconciler import Reconciler
from berth.runtime.fake import FakeRuntime
from berth.services import apps as svc
from berth.services.bootstrap import ensure_admin
from berth.settings import Settings
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.store.tables import Deployment
from tests.fakes import FakeHealth, FakeNginx, local_reconciler


class Clock:
    """Starts at the real time (deadlines are written by the API with the real clock)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    settings: Settings
    clock: Clock
    runtime: FakeRuntime
    nginx: FakeNginx
    health: FakeHealth
    reconciler: Reconciler
    tenant_id: str

    def session(self):  # type: ignore[no-untyped-def]
        return self.reconciler.sessions()

    def settle(self, passes: int = 4, step: float = 1.0) -> None:
        for _ in range(passes):
            self.reconciler.run_once()
            # Let background removals finish before the next pass, as time would.
            self.reconciler.workloads.wait_for_removals()  # type: ignore[attr-defined]
            self.clock.now += step

    def running(self, app: str) -> list[str]:
        return [c.id for c in self.runtime.list({"berth.app-name": app}) if c.state == "running"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = Clock()
    settings = Settings(home=tmp_path, database_url="", deploy_timeout_seconds=30)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        tenant = ensure_admin(s, tmp_path / "admin-token")
    runtime = FakeRuntime("test-install", clock=clock)
    runtime.add_image("berth/busybox:latest")
    runtime.add_image("broken:latest")
    nginx = FakeNginx()
    health = FakeHealth(runtime)
    reconciler = local_reconciler(settings, sessions, runtime, nginx, health, clock=clock)
    yield World(settings, clock, runtime, nginx, health, reconciler, tenant.id)
    reconciler.stop()
    engine.dispose()


def deploy(world: World, app: str, image: str = "berth/busybox:latest") -> str:
    with world.session() as s:
        _, dep = svc.deploy_image(
            s, world.settings, world.tenant_id, app, image, world.runtime.image_id
        )
        return dep.id


def status(world: World, deployment_id: str) -> str:
    with world.session() as s:
        dep = s.get(Deployment, deployment_id)
        assert dep is not None
        return dep.status
