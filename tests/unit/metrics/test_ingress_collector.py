"""The ingress collector over a log file and a real SQLite store: counts reach this server's
rows once, a failed flush keeps them for the next one, apps that are gone are dropped, and old
buckets are purged."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from berth.metrics import store as mstore
from berth.metrics.ingress_collector import IngressCollector
from berth.platform import open_store
from berth.settings import Settings
from berth.store.tables import App, AppMetricRow, Tenant

NOW = 1_764_612_000.0


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine, made, _ = open_store(Settings(home=tmp_path / "home", database_url=""))
    yield made
    engine.dispose()


def add_app(sessions: sessionmaker[Session]) -> str:
    tenant, app = secrets.token_hex(8), secrets.token_hex(8)
    with sessions.begin() as session:
        session.add(Tenant(id=tenant, name=f"t-{tenant}"))
        session.flush()
        session.add(App(id=app, tenant_id=tenant, name=f"a-{app}", memory_mb=64,
                        cpus_milli=100, port=80))  # fmt: skip
    return app


def write(path: Path, app: str, n: int, status: int = 200, at: float = NOW) -> None:
    with path.open("ab") as f:
        f.write(f"{app}\t{at:.3f}\t{status}\t10\t0.002\n".encode() * n)


def rows(sessions: sessionmaker[Session]) -> list[AppMetricRow]:
    with sessions() as session:
        return mstore.app_rows(session, mstore.Scope(), 0, 2**40)


class FailingOnce:
    """A sessionmaker whose first transaction fails (the store is away), then works."""

    def __init__(self, real: sessionmaker[Session]) -> None:
        self.real, self.failed = real, False

    def begin(self) -> Any:
        if not self.failed:
            self.failed = True
            raise ConnectionError("store unreachable")
        return self.real.begin()


def test_counts_reach_the_store_once_even_across_a_failed_flush(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    app, gone = add_app(sessions), secrets.token_hex(8)
    log = tmp_path / "metrics.log"
    flaky = FailingOnce(sessions)
    collector = IngressCollector(log, flaky, "server-a", bucket_seconds=60,  # type: ignore[arg-type]
                                 retention_seconds=86400, clock=lambda: NOW)  # fmt: skip
    write(log, app, 7)
    write(log, app, 3, status=503)
    write(log, gone, 5)  # an app deleted since: its counts go nowhere
    assert collector.read() == 15
    with pytest.raises(ConnectionError):
        collector.flush()
    write(log, app, 2, at=NOW + 60)  # the next bucket
    collector.read()
    assert collector.flush() == 2
    assert collector.flush() == 0  # nothing counted twice
    got = {r.bucket_start: r for r in rows(sessions)}
    first = got[int(NOW) // 60 * 60]
    assert (first.requests, first.status_2xx, first.status_5xx, first.body_bytes) == (10, 7, 3, 100)
    assert got[int(NOW) // 60 * 60 + 60].requests == 2
    assert {r.server_id for r in got.values()} == {"server-a"}


def test_old_buckets_are_purged(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    app = add_app(sessions)
    log = tmp_path / "metrics.log"
    clock = [NOW]
    collector = IngressCollector(log, sessions, "server-a", bucket_seconds=60,
                                 retention_seconds=3600, clock=lambda: clock[0])  # fmt: skip
    write(log, app, 1, at=NOW - 7200)
    write(log, app, 1, at=NOW)
    collector.read()
    collector.flush()
    assert len(rows(sessions)) == 2
    collector.purge()
    assert [r.bucket_start for r in rows(sessions)] == [int(NOW) // 60 * 60]
