"""An instance whose connects go unanswered (its node killed or cut off) is unhealthy after one
check that gives up within the connect timeout, not after two full check timeouts.

A loopback listener that never accepts, with its accept queue full, drops further SYNs: the
same silence as a killed node's DNATed host-mode port.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from berth.agent.health import (
    CHECK_TIMEOUT_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    UNREACHABLE,
    CheckTarget,
    HealthMonitor,
    HealthState,
)


class _Targets:
    def __init__(self, targets: list[CheckTarget]) -> None:
        self.targets = targets

    def all(self) -> list[CheckTarget]:
        return list(self.targets)

    def lookup(self, instance_id: str) -> tuple[CheckTarget | None, bool]:
        return None, False


@pytest.fixture
def silent_port() -> Iterator[int]:
    listener = socket.socket()
    held = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        held.connect(("127.0.0.1", port))  # fills the queue: the next SYNs are dropped
        yield port
    finally:
        held.close()
        listener.close()


@pytest.mark.parametrize("path", ["/healthz", None], ids=["http", "tcp"])
def test_an_unanswered_connect_unroutes_at_once(silent_port: int, path: str | None) -> None:
    target = CheckTarget("c1", silent_port, path, started_at=1.0, host="127.0.0.1")
    monitor = HealthMonitor(_Targets([target]))
    try:
        monitor.states["c1"] = HealthState(healthy=True, started_at=1.0)
        assert monitor.check_round() is True
        state = monitor.state_of("c1")
        assert state is not None and not state.healthy
        assert state.failures == 1 and state.last_error.endswith(UNREACHABLE)
        # It gave up at the connect timeout, shorter than a whole check's.
        assert CONNECT_TIMEOUT_SECONDS < CHECK_TIMEOUT_SECONDS
    finally:
        monitor.stop()
