"""A new instance is health-checked at once and then quickly until its first pass: the pure
schedule, and the monitor against a real HTTP server on loopback (the runtime is a stub)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from berth.agent.health import (
    FAST_PROBE_BURST_SECONDS,
    FAST_PROBE_SLOW_STEP_SECONDS,
    FAST_PROBE_STEP_SECONDS,
    FAST_PROBE_WINDOW_SECONDS,
    LABEL_HEALTH_PATH,
    FastProbes,
    HealthMonitor,
)
from berth.runtime.protocol import ContainerInfo
from tests.harness import wait_until


def test_a_new_container_is_probed_at_once_then_every_step_until_it_passes() -> None:
    fast = FastProbes(step=0.05, window=10.0)
    fast.add("c1", now=100.0)
    assert fast.due(100.0) == ["c1"]  # at once
    fast.probed("c1", 100.01, passed=False)
    assert fast.due(100.03) == []
    assert fast.next_at() == pytest.approx(100.06)
    assert fast.due(100.06) == ["c1"]
    fast.probed("c1", 100.07, passed=True)  # its first pass: the regular rounds take over
    assert fast.due(100.2) == [] and fast.next_at() is None and "c1" not in fast


def test_fast_probes_end_with_their_window() -> None:
    fast = FastProbes(step=0.05, window=2.0)
    fast.add("slow", now=0.0)
    now = 0.0
    probes = 0
    while fast.due(now):
        probes += 1
        fast.probed("slow", now, passed=False)
        now += 0.05
    assert "slow" not in fast and fast.next_at() is None
    assert 30 <= probes <= 41  # bounded: about window / step probes, then regular rounds


def test_probes_are_quick_while_it_boots_then_slower_until_the_window_ends() -> None:
    fast = FastProbes(step=0.02, window=10.0, burst=2.0, slow_step=0.1)
    fast.add("c1", now=0.0)
    fast.probed("c1", 1.0, passed=False)  # booting: the next probe is one quick step away
    assert fast.next_at() == pytest.approx(1.02)
    fast.probed("c1", 2.5, passed=False)  # past the burst: the slow step
    assert fast.next_at() == pytest.approx(2.6)
    now, probes = 0.0, 0
    fast.add("c2", now=0.0)
    while fast.due(now) or "c2" in fast:
        if "c2" in fast.due(now):
            probes += 1
            fast.probed("c2", now, passed=False)
        now = round(now + 0.01, 2)
    # ~100 quick probes in the burst, ~80 slow ones after it: fewer than 50 ms steps would make
    assert 150 <= probes <= 200


def test_a_restart_gets_a_new_window_and_discard_ends_it() -> None:
    fast = FastProbes(step=0.05, window=1.0)
    fast.add("c1", now=0.0)
    fast.add("c2", now=0.0)
    fast.add("c1", now=0.9)  # started again
    assert fast.due(1.5) == ["c1"]  # c2's window is over, c1's is not
    fast.discard("c1")
    fast.discard("c1")
    assert fast.due(1.5) == [] and fast.next_at() is None
    fast.probed("gone", 2.0, passed=True)  # a late result for nothing pending is ignored


def test_the_defaults_are_quick_and_bounded() -> None:
    assert 0.01 <= FAST_PROBE_STEP_SECONDS <= 0.1
    assert FAST_PROBE_STEP_SECONDS < FAST_PROBE_SLOW_STEP_SECONDS <= 1.0
    assert FAST_PROBE_BURST_SECONDS < FAST_PROBE_WINDOW_SECONDS
    assert 1.0 <= FAST_PROBE_WINDOW_SECONDS <= 60.0


class App:
    """A loopback HTTP app that fails its health check until ``ready`` is set."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.requests = 0
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                app.requests += 1
                self.send_response(200 if app.ready.is_set() else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StubRuntime:
    """Lists nothing (so the regular rounds check nothing); inspects what it was given."""

    installation = "test"

    def __init__(self) -> None:
        self.containers: dict[str, ContainerInfo] = {}
        self.inspections = 0

    def list(self, labels: object = None) -> list[ContainerInfo]:
        return []

    def inspect(self, container_id: str) -> ContainerInfo | None:
        self.inspections += 1
        return self.containers.get(container_id)


@pytest.fixture
def app() -> Iterator[App]:
    a = App()
    yield a
    a.close()


@pytest.fixture
def runtime() -> StubRuntime:
    return StubRuntime()


@pytest.fixture
def monitor(runtime: StubRuntime) -> Iterator[tuple[HealthMonitor, list[int]]]:
    changes: list[int] = []
    stub: Any = runtime
    m = HealthMonitor(stub, interval=3600, on_change=lambda: changes.append(1))
    m.start()
    yield m, changes
    m.stop()
    assert not any(t.name == "berth-health-fast" for t in threading.enumerate())


def container(cid: str, port: int) -> ContainerInfo:
    return ContainerInfo(
        cid, "web", {LABEL_HEALTH_PATH: "/healthz"}, "running", started_at=1.0, host_port=port
    )


def test_a_started_instance_is_healthy_at_its_first_pass_not_at_the_next_round(
    app: App, monitor: tuple[HealthMonitor, list[int]]
) -> None:
    m, changes = monitor
    m.probe_soon(container("c1", app.port))
    wait_until(lambda: app.requests >= 3, 20, "probed again and again while it fails")
    # Failures while it boots are not counted: ps says "waiting", not "failing".
    assert not m.is_healthy("c1") and m.state_of("c1") is None and changes == []
    app.ready.set()
    wait_until(lambda: m.is_healthy("c1"), 20, "healthy at its first pass")
    assert changes == [1]  # the reconciler is woken to route it
    seen = app.requests
    state = m.state_of("c1")
    assert state is not None and state.last_checked > 0 and state.started_at == 1.0
    m.forget("c1")  # it died: unhealthy at once, and the reconciler is told
    assert not m.is_healthy("c1") and changes == [1, 1]
    assert app.requests == seen  # nothing probed it after its pass (regular rounds: hourly)


def test_an_engine_start_event_looks_the_port_up(
    app: App, runtime: StubRuntime, monitor: tuple[HealthMonitor, list[int]]
) -> None:
    m, changes = monitor
    app.ready.set()
    runtime.containers["c2"] = container("c2", app.port)
    m.probe_soon("c2")  # only an id, as an event carries
    wait_until(lambda: m.is_healthy("c2"), 20, "healthy after one lookup and one probe")
    assert runtime.inspections == 1 and changes == [1]


def test_a_container_that_is_gone_is_not_probed(
    runtime: StubRuntime, monitor: tuple[HealthMonitor, list[int]]
) -> None:
    m, changes = monitor
    m.probe_soon("missing")
    wait_until(lambda: runtime.inspections >= 1, 20, "the lookup")
    wait_until(lambda: "missing" not in m._fast, 20, "dropped from the fast schedule")
    assert m.state_of("missing") is None and changes == []


def test_a_running_container_with_nothing_to_check_is_left_to_the_regular_rounds(
    runtime: StubRuntime, monitor: tuple[HealthMonitor, list[int]]
) -> None:
    m, changes = monitor
    runtime.containers["noport"] = ContainerInfo("noport", "web", {}, "running", started_at=1.0)
    runtime.containers["booting"] = ContainerInfo("booting", "web", {}, "created")
    m.probe_soon("noport")
    m.probe_soon("booting")
    wait_until(lambda: "noport" not in m._fast, 20, "dropped after one lookup")
    wait_until(lambda: runtime.inspections >= 4, 20, "the booting one is looked up again")
    assert "booting" in m._fast and changes == []
    m.forget("booting")
    assert "booting" not in m._fast
