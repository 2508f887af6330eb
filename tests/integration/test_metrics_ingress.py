"""Per-app metrics from the real nginx: a known load through Berth's own config, counted by
the collector from nginx's metrics log, added to a real store, read back as the API and
Prometheus see it. Also across a rotation of the log while the load runs."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from berth.api.routes_metrics import exposition_for
from berth.metrics import histogram, series
from berth.metrics import store as mstore
from berth.metrics.ingress_collector import IngressCollector
from berth.metrics.model import AppBucket
from berth.metrics.wiring import nginx_reopen
from berth.platform import open_store
from berth.proxy.model import Route, Upstream
from berth.proxy.nginx import NginxManager
from berth.settings import Settings
from berth.store.tables import App, Tenant
from tests.harness import wait_until
from tests.integration.test_nginx_real import NGINX, free_port
from tests.promtext import parse

pytestmark = [pytest.mark.nginx]
BODY = b"x" * 1000  # the app's page: a known size
MISSING = b"no such page\n"
SLOW_SECONDS = 0.08


class App404Backend:
    """An app on loopback: 200 with BODY, 404 with MISSING on /missing, and a slow page."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, Nagle's algorithm and the
            # peer's delayed ACK hold each response 40 ms.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                if self.path == "/slow":
                    time.sleep(SLOW_SECONDS)
                body, status = (MISSING, 404) if self.path == "/missing" else (BODY, 200)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class World:
    manager: NginxManager
    port: int
    sessions: sessionmaker[Session]
    settings: Settings
    app_id: str
    host: str


@pytest.fixture
def home() -> Iterator[Path]:
    """A directory nginx's unprivileged workers can traverse (pytest's are 0700): they open
    the log files again themselves when told to reopen them."""
    base = Path(tempfile.mkdtemp(prefix="berth-metrics-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def world(home: Path) -> Iterator[World]:
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"nginx is not installed at {NGINX}", pytrace=False)
    tmp_path = home
    settings = Settings(home=tmp_path / "home", database_url="", metrics_bucket_seconds=10)
    engine, sessions, _ = open_store(settings)
    app_id, tenant_id = secrets.token_hex(8), secrets.token_hex(8)
    with sessions.begin() as session:
        session.add(Tenant(id=tenant_id, name=f"t-{tenant_id}"))
        session.flush()
        session.add(
            App(id=app_id, tenant_id=tenant_id, name="web", memory_mb=64, cpus_milli=100, port=80)
        )
    backend = App404Backend()
    port = free_port()
    manager = NginxManager(
        tmp_path / "nginx", nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=port
    )
    host = f"web-{app_id}.berth.localhost"
    route = Route(
        app_id, "web", tenant_id, (host,), (Upstream("127.0.0.1", backend.port),), "serving"
    )
    try:
        manager.apply(manager.config((route,), 1))
        assert manager.wait_for_generation(1, timeout=10)
        yield World(manager, port, sessions, settings, app_id, host)
    finally:
        manager.stop()
        backend.stop()
        engine.dispose()


def collector_for(world: World, **options: object) -> IngressCollector:
    assert world.manager.paths.metrics_log is not None
    return IngressCollector(
        world.manager.paths.metrics_log,
        world.sessions,
        "server-a",
        bucket_seconds=world.settings.metrics_bucket_seconds,
        retention_seconds=3600,
        reopen=nginx_reopen(world.manager.pid),
        **options,  # type: ignore[arg-type]
    )


def send(client: httpx.Client, world: World, path: str, host: str | None = None) -> float:
    started = time.perf_counter()
    response = client.get(
        f"http://127.0.0.1:{world.port}{path}", headers={"Host": host or world.host}
    )
    assert response.status_code in (200, 404)
    return (time.perf_counter() - started) * 1000


def pending(collector: IngressCollector) -> int:
    collector.read()
    return sum(b.requests for b in collector._pending.values())


def stored_total(world: World) -> AppBucket:
    with world.sessions() as session:
        rows = mstore.app_rows(session, mstore.Scope(app_id=world.app_id), 0, 2**40)
    total = AppBucket()
    for row in rows:
        total.merge(mstore.bucket_of_row(row))
    return total


def test_a_known_load_is_counted_exactly(world: World) -> None:
    collector = collector_for(world)
    started = time.time()
    fast_ms: list[float] = []
    slow_ms: list[float] = []
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        for n in range(1000):
            if n % 10 == 0:
                send(client, world, "/missing")  # 100 answered 404 by the app
            elif n % 33 == 1:
                slow_ms.append(send(client, world, "/slow"))  # 28 slow ones: under 5%
            else:
                fast_ms.append(send(client, world, f"/page/{n}"))
        for _ in range(50):  # no app's host: nginx's default server, counted for nobody
            assert (
                client.get(
                    f"http://127.0.0.1:{world.port}/", headers={"Host": "nobody.test"}
                ).status_code
                == 404
            )

    # nginx flushes its buffer once a second: read until every line is there (the lines of
    # the default server, and the fixture's generation probe, count for no app).
    wait_until(
        lambda: pending(collector) >= 1000 and collector.lines_read >= 1050,
        timeout=15,
        what="all lines read",
    )
    collector.flush()
    total = stored_total(world)
    assert total.requests == 1000
    assert total.by_class == [0, 900, 0, 100, 0]
    assert total.body_bytes == 900 * len(BODY) + 100 * len(MISSING)

    # Latency: the reported quantile is the top of the bucket holding nginx's own figure,
    # which a client on loopback only ever sees as slower.
    p50, p95, p99 = (histogram.quantile_ms(total.latency, q) for q in (0.5, 0.95, 0.99))
    assert p50 is not None and p95 is not None and p99 is not None
    fast_ms.sort()
    assert p50 <= max(1.0, fast_ms[len(fast_ms) // 2] * 1.2)
    assert p95 < SLOW_SECONDS * 1000  # 2.8% are slow: the 95th is a fast one
    assert SLOW_SECONDS * 1000 <= p99 <= max(slow_ms) * 1.2 + 1

    # What the API and Prometheus answer from the store.
    now = time.time()
    win = series.window(now, 600, 10, 10, 3600)
    with world.sessions() as session:
        rows = mstore.app_rows(session, mstore.Scope(app_id=world.app_id), win.since, win.until)
        _, totals = series.app_series(
            [(r.bucket_start, mstore.bucket_of_row(r)) for r in rows], win
        )
        text = exposition_for(session, world.settings, mstore.Scope(), now + 600)
        # The minute of whole buckets from the one the load started in (it lasts seconds).
        at = started // 10 * 10 + 60 + 0.5
        later = exposition_for(session, world.settings, mstore.Scope(), at)
    assert totals["requests"] == 1000 and totals["status"]["4xx"] == 100
    _, samples = parse(text)
    assert not [s for s in samples if s[0] == "berth_app_requests" and s[2]]  # all long past
    _, samples = parse(later)
    counted = {s[1]["status_class"]: s[2] for s in samples if s[0] == "berth_app_requests"}
    assert counted == {"1xx": 0, "2xx": 900, "3xx": 0, "4xx": 100, "5xx": 0}


def test_counts_survive_rotation_while_the_load_runs(world: World) -> None:
    # ~40 bytes a line: a 4 KiB limit rotates every hundred requests or so.
    collector = collector_for(world, max_log_bytes=4096)
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        for n in range(600):
            send(client, world, "/missing" if n % 4 == 0 else "/")
            if n % 50 == 49:
                time.sleep(1.1)  # let nginx flush, so the file grows past the limit
                collector.run_once()
    wait_until(
        lambda: (
            collector.read() == 0
            and stored_total(world).requests + sum(b.requests for b in collector._pending.values())
            >= 600
            and not collector._tail.draining
        ),
        timeout=20,
        what="every request counted",
    )
    collector.flush()
    assert collector.rotations >= 3
    total = stored_total(world)
    assert total.requests == 600
    assert total.by_class[3] == 150
    old = world.manager.paths.metrics_log.with_name("metrics.log.1")  # type: ignore[union-attr]
    assert old.exists()  # one old file kept, never more
    assert not list(old.parent.glob("metrics.log.2*"))


def test_a_server_without_any_app_starts(home: Path) -> None:
    # The metrics log names $berth_app: the default server declares it, so nginx accepts a
    # config without a single app's block (a fresh server's first config).
    manager = NginxManager(
        home / "empty", nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=free_port()
    )
    try:
        manager.ensure_running()
        assert manager.wait_for_generation(0, timeout=10)
    finally:
        manager.stop()
