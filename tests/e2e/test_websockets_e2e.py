"""Websockets and server-sent events end to end: a real `berth server` (real Docker Engine,
Berth's own nginx), the echo app (tests/support/wsapp.py) built and deployed through the CLI.

Sessions opened through the ingress to the app's domain keep echoing, and an event stream
keeps coming in order, while ANOTHER app rolls out a new release and a third scales up and
down: zero dropped sessions. Then the app's own rollout: nginx keeps each open connection to
the old instance until that instance stops; the app closes its sessions with 1001 on SIGTERM
(Berth stops an old instance only once the new one is routed), and a reconnect lands on the
new release.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from berth.proxy.nginx import GENERATION_PATH, PROBE_HOST
from tests.harness import BUSYBOX_APP, BerthServer, wait_until, write_app
from tests.support import wsapp
from tests.support.wsclient import Closed, WsClient, sse_events

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

ECHO, OTHER, THIRD = "wsecho", "wsother", "wsthird"
SESSIONS = 5

DOCKERFILE = """\
FROM berth/python:3
COPY wsapp.py /app/wsapp.py
ENV PORT=8080
EXPOSE 8080
CMD ["python3", "-u", "/app/wsapp.py"]
"""


@pytest.fixture(scope="module")
def echo_app(berth: BerthServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    context = write_app(tmp_path_factory.mktemp("wsapp"), DOCKERFILE)
    shutil.copy(wsapp.__file__, context / "wsapp.py")
    berth.create_app(ECHO, "--health-path", "/healthz")
    result = berth.deploy_dir(ECHO, context)
    assert result["deployment"]["status"] == "succeeded", result
    berth.wait_converged(ECHO, 1)
    return result


@pytest.fixture(scope="module")
def neighbours(berth: BerthServer) -> None:
    for name in (OTHER, THIRD):
        berth.create_app(name)
        result = berth.deploy_dir(name, BUSYBOX_APP)
        assert result["deployment"]["status"] == "succeeded", result
        berth.wait_converged(name, 1)


def session(berth: BerthServer, path: str = "/ws") -> WsClient:
    """A session to the echo app through the ingress (``connect()`` or ``with`` opens it);
    a read waits up to 60 s, longer than a rollout takes."""
    return WsClient(
        berth.host, berth.ingress_port, path, host_header=berth.host_of(ECHO), timeout=60
    )


def generation(berth: BerthServer) -> int:
    """The generation of the config Berth's nginx serves (its default server answers it)."""
    response = berth.ingress_get(PROBE_HOST, GENERATION_PATH)
    assert response.status_code == 200, response.text
    return int(response.text)


class Echoing:
    """Sessions that each echo a numbered message every 50 ms on a thread until stopped;
    any wrong answer or ended session is a failure."""

    def __init__(self, sessions: list[WsClient]) -> None:
        self.sessions = sessions
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.echoes = [0] * len(sessions)
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(sessions))
        ]

    def __enter__(self) -> Echoing:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=20)

    def _run(self, i: int) -> None:
        ws = self.sessions[i]
        n = 0
        while not self.stop.wait(0.05):
            n += 1
            message = f"session {i} message {n}"
            try:
                answer = ws.echo(message)
            except (Closed, OSError) as exc:
                self.failures.append(f"session {i} after {n - 1} echoes: {exc!r}")
                return
            if answer != message:
                self.failures.append(f"session {i}: sent {message!r}, got {answer!r}")
                return
            self.echoes[i] = n


@pytest.fixture
def sessions(berth: BerthServer, echo_app: dict[str, Any]) -> Iterator[list[WsClient]]:
    opened: list[WsClient] = []
    try:
        for _ in range(SESSIONS):
            opened.append(session(berth))
            opened[-1].connect()
        yield opened
    finally:
        for ws in opened:
            ws.abort()


def test_sessions_and_a_stream_survive_other_apps_rolling_out_and_scaling(
    berth: BerthServer, echo_app: dict[str, Any], neighbours: None, sessions: list[WsClient]
) -> None:
    stream = "e2e-stream"
    events = sse_events(
        berth.host,
        berth.ingress_port,
        f"/events?stream={stream}",
        host_header=berth.host_of(ECHO),
        timeout=20,
    )
    ids: list[int] = []
    stop_reading = threading.Event()

    def read_events() -> None:
        for event in events:
            if event.event == "tick":
                ids.append(int(event.id or 0))
            if stop_reading.is_set():
                return

    reader = threading.Thread(target=read_events, daemon=True)
    before = generation(berth)
    try:
        reader.start()
        with Echoing(sessions) as echoing:
            wait_until(lambda: min(echoing.echoes) >= 5, 30, "every session echoes")
            rollout = berth.cli_json("config", "set", OTHER, "WAVE=2")  # a new release
            assert rollout["deployment"]["status"] == "succeeded", rollout
            berth.wait_converged(OTHER, 1)
            for n in (3, 1):
                assert berth.cli_json("scale", THIRD, str(n))["scale"] == n
                berth.wait_converged(THIRD, n)
            marks = list(echoing.echoes)
            wait_until(
                lambda: all(e > m + 5 for e, m in zip(echoing.echoes, marks, strict=True)),
                30,
                "every session still echoes after the changes",
            )
        assert echoing.failures == []
        # Routes changed under the sessions: each a new config of Berth's nginx (the new
        # instance of OTHER in and the old one out, THIRD's two more and two fewer).
        changes = generation(berth) - before
        assert changes >= 3, changes
        for i, ws in enumerate(sessions):
            assert ws.echo(f"{i} at the end") == f"{i} at the end"
        stop_reading.set()
        reader.join(timeout=20)
        assert not reader.is_alive()
        assert ids and ids == list(range(1, len(ids) + 1)), ids[:20]  # in order, no gap
        print(f"echoes per session: {echoing.echoes}; {len(ids)} events; {changes} configs")
    finally:
        stop_reading.set()
        reader.join(timeout=20)
        with contextlib.suppress(ValueError):  # still running on the reader: its socket
            events.close()  # closes with the generator or at the app's 600th event
    # The other apps really changed underneath (a new release, then 3 and back to 1).
    assert {r["release_version"] for r in berth.ps(OTHER)} == {rollout["release"]}


def test_its_own_rollout_ends_its_sessions_when_the_old_instance_stops(
    berth: BerthServer, echo_app: dict[str, Any], sessions: list[WsClient]
) -> None:
    for ws in sessions:
        assert ws.handshake is not None
        assert ws.handshake["x-release"] == "1"
        assert ws.echo("before the rollout") == "before the rollout"
    ended: list[Closed] = []

    def wait_for_end(ws: WsClient) -> None:
        try:
            while True:
                ws.recv_data()
        except Closed as closed:
            ended.append(closed)

    waiters = [threading.Thread(target=wait_for_end, args=(ws,), daemon=True) for ws in sessions]
    for t in waiters:
        t.start()
    out = berth.cli_json("config", "set", ECHO, "RELEASE=2")
    assert out["deployment"]["status"] == "succeeded", out
    for t in waiters:
        t.join(timeout=60)
    # Each ended with the old instance's goodbye (it got SIGTERM once the new one served),
    # not cut by nginx.
    assert [c.code for c in ended] == [1001] * SESSIONS, ended
    berth.wait_converged(ECHO, 1)
    with session(berth) as fresh:
        assert fresh.handshake is not None and fresh.handshake["x-release"] == "2"
        assert fresh.echo("on the new release") == "on the new release"


def test_an_app_that_ignores_sigterm_keeps_its_sessions_until_it_is_killed(
    berth: BerthServer, echo_app: dict[str, Any]
) -> None:
    """Berth stops an old instance with SIGTERM and kills it 10 s later: sessions on an app
    that ignores SIGTERM keep echoing next to the new release, then end without a close
    frame (a browser sees 1006) when the old instance is killed."""
    out = berth.cli_json("config", "set", ECHO, "WSAPP_ON_SIGTERM=ignore", "RELEASE=3")
    assert out["deployment"]["status"] == "succeeded", out
    berth.wait_converged(ECHO, 1)
    with session(berth) as old:
        assert old.handshake is not None and old.handshake["x-release"] == "3"
        rollout = berth.cli_json("config", "set", ECHO, "RELEASE=4")
        assert rollout["deployment"]["status"] == "succeeded", rollout
        # The new release serves new sessions while the old instance still serves its own.
        with session(berth) as new:
            assert new.handshake is not None and new.handshake["x-release"] == "4"
            assert old.echo("still on release 3") == "still on release 3"
        echoes = 0
        with pytest.raises(Closed) as closed:
            while True:
                old.echo(f"echo {echoes}")
                echoes += 1
                time.sleep(0.1)
        assert closed.value.code is None, closed.value
        print(f"the old session echoed {echoes} more times until the old instance was killed")
    berth.wait_converged(ECHO, 1)


def test_forwarded_headers_reach_the_app_as_the_ingress_sets_them(
    berth: BerthServer, echo_app: dict[str, Any]
) -> None:
    forged = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Real-IP": "6.6.6.6"}
    host = berth.host_of(ECHO)
    ws = WsClient(
        berth.host, berth.ingress_port, host_header=f"{host}:{berth.ingress_port}", headers=forged
    )
    with ws:
        assert ws.handshake is not None
        assert ws.handshake["x-seen-forwarded-for"] == berth.host
        assert ws.handshake["x-seen-real-ip"] == berth.host
        assert ws.handshake["x-seen-forwarded-proto"] == "http"
        assert ws.handshake["x-seen-forwarded-host"] == host
