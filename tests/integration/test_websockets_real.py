"""Websockets and server-sent events through the real nginx with Berth's config.

The app is tests/support/wsapp.py (standard library: RFC 6455 echo, SSE) on loopback threads
of this process; the client is tests/support/wsclient.py (a raw socket, so it can also forge
headers, stall a handshake or send a 10 MB frame), and once the ``websockets`` library as a
second, independent implementation. Every test has its own conf dir and loopback port; the
finalizers stop that nginx and the apps even when the test failed.

What nginx does with an upgraded connection, as measured here: after the 101 it copies bytes
both ways with one proxy_buffer_size buffer per direction (no body or frame limit applies: the
app must bound its messages, wsapp refuses over 1 MiB with 1009); the only idle limit is
proxy_read_timeout, re-armed by traffic in either direction (client pings alone, or the app's
pings alone, keep a session open), and at expiry nginx closes both sides without a close frame.
A reload leaves an old worker running for as long as it holds sessions (no
worker_shutdown_timeout is set): the sessions survive every route change.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect as websockets_connect

import berth.proxy.nginx as nginx_module
from berth.procfs import children
from berth.proxy.model import NginxPaths, ProxyConfig, Route, Upstream
from berth.proxy.nginx import NginxManager
from tests.harness import wait_until
from tests.integration.test_nginx_real import NGINX, free_port
from tests.support import wsapp
from tests.support.wsclient import OP_BINARY, OP_PING, Closed, WsClient, sse_events

pytestmark = [pytest.mark.nginx]

HOST = "echo.example.test"
SHOP = "shop.example.test"
# The template's value; a test that shortens it checks the line is there to be shortened.
READ_TIMEOUT_LINE = "proxy_read_timeout 60s;"
BUFFERING_LINE = "proxy_buffering off;"
# A line of the http block to add a directive after.
HTTP_BLOCK_LINE = "client_max_body_size 64m;"


@pytest.fixture(autouse=True, scope="module")
def _nginx_is_installed() -> None:
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"nginx is not installed at {NGINX}; run `make test`", pytrace=False)


@pytest.fixture
def apps() -> Iterator[Callable[[str], wsapp.Server]]:
    started: list[wsapp.Server] = []

    def start(instance: str) -> wsapp.Server:
        server = wsapp.serve(instance=instance)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def manager(tmp_path: Path, port: int) -> Iterator[NginxManager]:
    m = NginxManager(
        tmp_path / "nginx", nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=port
    )
    yield m
    m.stop()
    assert not m.is_running()


def upstream(app: wsapp.Server) -> Upstream:
    return Upstream("127.0.0.1", app.server_address[1])


def route(app_id: str, name: str, host: str, *instances: wsapp.Server) -> Route:
    return Route(app_id, name, "t1", (host,), tuple(upstream(a) for a in instances), "serving")


def apply(manager: NginxManager, routes: tuple[Route, ...], generation: int) -> None:
    assert manager.apply(manager.config(routes, generation)) is True
    assert manager.wait_for_generation(generation, timeout=10)


def client(port: int, path: str = "/ws", host: str = HOST, **kwargs: object) -> WsClient:
    return WsClient("127.0.0.1", port, path, host_header=host, **kwargs)  # type: ignore[arg-type]


def workers(master: int) -> set[int]:
    """Every worker of the master, serving or shutting down."""
    found = set()
    for pid in children(master):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("nginx: worker process"):
            found.add(pid)
    return found


def with_config_line(monkeypatch: pytest.MonkeyPatch, line: str, replacement: str) -> None:
    """Render Berth's config with one line of the template replaced (a shortened timeout)."""
    real = nginx_module.render_nginx_conf

    def render(cfg: ProxyConfig, paths: NginxPaths) -> str:
        text: str = real(cfg, paths)
        assert line in text, f"the template no longer has {line!r}"
        return text.replace(line, replacement)

    monkeypatch.setattr(nginx_module, "render_nginx_conf", render)


# -- sessions ---------------------------------------------------------------------------------


def test_an_echo_session_through_nginx(
    manager: NginxManager, apps: Callable[[str], wsapp.Server], port: int
) -> None:
    apply(manager, (route("e1", "echo", HOST, apps("i1")),), 1)
    with client(port) as ws:
        assert ws.handshake is not None and ws.handshake["x-instance"] == "i1"
        assert [ws.echo(f"message {n}") for n in range(20)] == [f"message {n}" for n in range(20)]
        assert ws.echo("ünïcødé ✓") == "ünïcødé ✓"
        blob = os.urandom(256 * 1024)  # larger than nginx's proxy buffers: streamed through
        ws.send_binary(blob)
        assert ws.recv_data() == (OP_BINARY, blob)
        ws.ping(b"are you there")
        assert ws.recv() == (0xA, b"are you there")
        assert ws.close(1000) == 1000


def test_the_websockets_library_agrees(
    manager: NginxManager, apps: Callable[[str], wsapp.Server], port: int
) -> None:
    """A second implementation of RFC 6455 talks to the app through nginx: the echo app and
    the raw client are not merely consistent with each other."""
    apply(manager, (route("e1", "echo", HOST, apps("i1")),), 1)
    # The library takes the Host from the URI: it connects over a socket to nginx.
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with websockets_connect(f"ws://{HOST}/ws", sock=sock, open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\xff" * 1000)
        assert ws.recv(timeout=10) == b"\x00\xff" * 1000
        assert ws.ping(b"p").wait(10)


def test_a_non_websocket_request_to_the_ws_path_is_a_plain_400(
    manager: NginxManager, apps: Callable[[str], wsapp.Server], port: int
) -> None:
    apply(manager, (route("e1", "echo", HOST, apps("i1")),), 1)
    with urllib.request.urlopen(
        urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": HOST}), timeout=10
    ) as resp:
        assert resp.read().decode().startswith("wsapp i1")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/ws", headers={"Host": HOST})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 400


def test_forwarded_headers_are_nginx_s_and_a_client_s_forgeries_do_not_pass(
    manager: NginxManager, apps: Callable[[str], wsapp.Server], port: int
) -> None:
    apply(manager, (route("e1", "echo", HOST, apps("i1")),), 1)
    forged = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example.test",
        "X-Real-IP": "6.6.6.6",
    }
    # The Host carries the port, as browsers send it: X-Forwarded-Host is the bare name.
    with client(port, host=f"{HOST}:{port}", headers=forged) as ws:
        assert ws.handshake is not None
        assert ws.handshake["x-seen-forwarded-for"] == "127.0.0.1"
        assert ws.handshake["x-seen-real-ip"] == "127.0.0.1"
        assert ws.handshake["x-seen-forwarded-proto"] == "http"
        assert ws.handshake["x-seen-forwarded-host"] == HOST
        assert ws.echo("still an echo") == "still an echo"
    # Without nginx the app shows what a client sent: the check above is not vacuous.
    app = apps("direct")
    with WsClient("127.0.0.1", app.server_address[1], headers=forged) as direct:
        assert direct.handshake is not None
        assert direct.handshake["x-seen-forwarded-for"] == "6.6.6.6"


def test_a_session_stays_open_across_100_route_changes(
    manager: NginxManager, apps: Callable[[str], wsapp.Server], port: int
) -> None:
    """Each change is a config apply (a reload): other apps' routes come and go and another
    app's upstream set changes; the open session echoes after every one, and new sessions
    open. The old worker that holds the session keeps running until it ends, and only it."""
    echo, shop_a, shop_b, other = apps("echo-1"), apps("shop-a"), apps("shop-b"), apps("other")
    shop_sets = ((shop_a,), (shop_a, shop_b), (shop_b,))

    def routes(n: int) -> tuple[Route, ...]:
        # Two other apps at a time, one new and one gone per change.
        others = tuple(
            route(f"o{k}", f"other{k}", f"other{k}.example.test", other) for k in (n, n + 1)
        )
        return (
            route("e1", "echo", HOST, echo),
            route("s1", "shop", SHOP, *shop_sets[n % 3]),
            *others,
        )

    apply(manager, routes(0), 1)
    master = manager.pid()
    assert master is not None
    serving = wait_until(lambda: nginx_module._workers_of(master), 10, "nginx's workers are up")
    reloads = manager.reload_count
    seen_shop: set[str] = set()
    with client(port) as ws:
        assert ws.echo("before") == "before"
        for n in range(1, 101):
            apply(manager, routes(n), n + 1)
            assert ws.echo(f"after change {n}") == f"after change {n}"
            if n % 10 == 0:
                with client(port) as fresh:
                    assert fresh.echo(f"new session {n}") == f"new session {n}"
                with urllib.request.urlopen(
                    urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": SHOP}),
                    timeout=10,
                ) as resp:
                    seen_shop.add(resp.read().decode().split()[1])
        assert manager.reload_count - reloads == 100
        assert seen_shop == {"shop-a", "shop-b"}
        # The worker of the first config holds the session (shutting down); the other 99
        # generations of old workers are gone.
        wait_until(
            lambda: len(workers(master)) == len(serving) + 1,
            10,
            "only the session's old worker is left besides the serving ones",
        )
        assert ws.echo("last") == "last"
        assert ws.close() == 1000
    wait_until(
        lambda: workers(master) == nginx_module._workers_of(master),
        10,
        "the old worker exits once its session ended",
    )
    assert manager.pid() == master


def test_old_workers_live_exactly_as_long_as_their_sessions(
    manager: NginxManager, apps: Callable[[str], wsapp.Server], port: int
) -> None:
    """A session opened after each of 5 configs: each older config keeps one worker (with
    that config's memory) for its session, and it exits when the session ends. Frequent
    reloads under long sessions pile workers up; nothing outlives its sessions."""
    echo = apps("echo-1")

    def routes(n: int) -> tuple[Route, ...]:
        return (
            route("e1", "echo", HOST, echo),
            route(f"o{n}", "other", f"o{n}.example.test", echo),
        )

    sessions: list[WsClient] = []
    try:
        for n in range(1, 6):
            apply(manager, routes(n), n)
            sessions.append(client(port))
            sessions[-1].connect()
        master = manager.pid()
        assert master is not None
        serving = wait_until(lambda: nginx_module._workers_of(master), 10, "workers are up")
        wait_until(
            lambda: len(workers(master)) == len(serving) + 4,
            10,
            "one old worker per older config with a session",
        )
        for i, ws in enumerate(sessions):
            assert ws.echo(f"session {i}") == f"session {i}"
        for ws in sessions[:4]:
            assert ws.close() == 1000
        wait_until(
            lambda: workers(master) == serving, 10, "the old workers exit with their sessions"
        )
        assert sessions[4].echo("the newest") == "the newest"
    finally:
        for ws in sessions:
            ws.abort()


def test_a_session_survives_its_own_app_gaining_and_losing_other_instances(
    manager: NginxManager, apps: Callable[[str], wsapp.Server], port: int
) -> None:
    """Its own upstream set changes while the instance it is on stays: nothing to drop."""
    first, second = apps("first"), apps("second")
    apply(manager, (route("e1", "echo", HOST, first),), 1)
    with client(port) as ws:
        for n, instances in enumerate(((first, second), (first,), (first, second)), start=2):
            apply(manager, (route("e1", "echo", HOST, *instances),), n)
            assert ws.echo(f"change {n}") == f"change {n}"
        assert ws.handshake is not None and ws.handshake["x-instance"] == "first"


def test_a_stopping_instance_closes_its_sessions_with_going_away(
    manager: NginxManager, apps: Callable[[str], wsapp.Server], port: int
) -> None:
    """What an app's own rollout does to its open sockets: the route moves to the new
    instance, the old one keeps its sessions until it stops, then they end (1001 from an app
    that says goodbye); a reconnect lands on the new instance."""
    old, new = apps("old"), apps("new")
    apply(manager, (route("e1", "echo", HOST, old),), 1)
    with client(port) as ws:
        apply(manager, (route("e1", "echo", HOST, new),), 2)
        assert ws.echo("still on the old instance") == "still on the old instance"
        old.stop()
        with pytest.raises(Closed) as closed:
            ws.recv_data()
        assert closed.value.code == 1001
    with client(port) as again:
        assert again.handshake is not None and again.handshake["x-instance"] == "new"


# -- server-sent events -----------------------------------------------------------------------


def _stop_stream(port: int, stream: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/events/stop?stream={stream}", headers={"Host": HOST}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(resp.read().decode().strip())


@pytest.mark.parametrize(
    ("buffering", "query"),
    [
        ("off", ""),  # Berth's config: any app's stream passes
        ("on", "&accel_buffering=no"),  # nginx's default, and an app that opts out itself
    ],
)
def test_sse_events_arrive_one_by_one_through_nginx(
    manager: NginxManager,
    apps: Callable[[str], wsapp.Server],
    port: int,
    monkeypatch: pytest.MonkeyPatch,
    buffering: str,
    query: str,
) -> None:
    """The stream runs until the client stops it: if nginx buffered it (~35 bytes an event,
    against 4 KiB buffers), no event would arrive before the stop, and a read waits at most
    5 s. So each event is seen while the app is still sending, in order."""
    with_config_line(monkeypatch, BUFFERING_LINE, f"proxy_buffering {buffering};")
    apply(manager, (route("e1", "echo", HOST, apps("sse")),), 1)
    stream = f"s{time.monotonic_ns()}"
    path = f"/events?stream={stream}{query}"
    events = sse_events("127.0.0.1", port, path, host_header=HOST, timeout=5)
    try:
        received = [next(events) for _ in range(10)]
        assert [(e.event, e.id) for e in received] == [("tick", str(n)) for n in range(1, 11)]
        assert all(e.data.endswith(" sse") for e in received)
        state, sent = _stop_stream(port, stream).split()
        assert state == "running" and int(sent) >= 10  # seen before the stream ended
        rest = list(events)
        assert rest[-1].event == "end"
        assert [int(e.id or 0) for e in rest[:-1]] == list(range(11, int(sent) + 1))
    finally:
        events.close()


def test_sse_stream_outlives_the_read_timeout_when_events_keep_coming(
    manager: NginxManager,
    apps: Callable[[str], wsapp.Server],
    port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event every 100 ms against a 1 s read timeout: 40 events (4 s) pass."""
    with_config_line(monkeypatch, READ_TIMEOUT_LINE, "proxy_read_timeout 1s;")
    apply(manager, (route("e1", "echo", HOST, apps("sse")),), 1)
    stream = f"s{time.monotonic_ns()}"
    events = sse_events("127.0.0.1", port, f"/events?stream={stream}", host_header=HOST, timeout=5)
    try:
        assert [next(events).id for _ in range(40)] == [str(n) for n in range(1, 41)]
        assert _stop_stream(port, stream).startswith("running")
    finally:
        events.close()


# -- timeouts ---------------------------------------------------------------------------------


def test_an_idle_session_is_closed_at_nginx_s_read_timeout_and_traffic_keeps_it_open(
    manager: NginxManager,
    apps: Callable[[str], wsapp.Server],
    port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """proxy_read_timeout shortened to 1 s (Berth's is 60 s). An idle session ends without a
    close frame (a browser sees 1006); one where only the client sends (pongs the app does
    not answer), or only the app (its pings), lives past 3 timeouts."""
    with_config_line(monkeypatch, READ_TIMEOUT_LINE, "proxy_read_timeout 1s;")
    apply(manager, (route("e1", "echo", HOST, apps("i1")),), 1)

    idle = client(port, timeout=20)
    client_only = client(port, timeout=20)
    app_pings = client(port, "/ws?ping=0.3", timeout=20)
    for ws in (idle, client_only, app_pings):
        ws.connect()
    try:
        started = time.monotonic()
        stop = threading.Event()
        failures: list[BaseException] = []

        def keep_sending() -> None:
            while not stop.wait(0.3):
                try:
                    client_only.send(0xA, b"unsolicited pong")  # the app ignores it
                except OSError as exc:
                    failures.append(exc)
                    return

        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()
        with pytest.raises(Closed) as closed:
            idle.recv()
        idle_for = time.monotonic() - started
        assert closed.value.code is None and "ended without a close frame" in closed.value.reason

        pings = 0
        while time.monotonic() - started < 3.5:
            opcode, payload = app_pings.recv(answer_pings=False)  # only the app sends
            assert opcode == OP_PING and payload.startswith(b"app-ping")
            pings += 1
        stop.set()
        sender.join(timeout=5)
        assert failures == []
        assert client_only.echo("still open") == "still open"
        assert app_pings.echo("still open") == "still open"
        print(f"idle session closed after {idle_for:.2f}s (timeout 1s); {pings} app pings seen")
    finally:
        for ws in (idle, client_only, app_pings):
            ws.abort()


# -- hostile clients --------------------------------------------------------------------------


def test_a_10_mb_frame_ends_only_its_own_session(
    manager: NginxManager, apps: Callable[[str], wsapp.Server], port: int
) -> None:
    """nginx applies no size limit after the upgrade (client_max_body_size is for request
    bodies) and streams the frame through its small buffers; the app refuses it by its
    header (1009). The other sessions keep echoing meanwhile."""
    app = apps("i1")
    apply(manager, (route("e1", "echo", HOST, app),), 1)
    good = [client(port) for _ in range(3)]
    for ws in good:
        ws.connect()
    try:
        hostile = client(port)
        hostile.connect()
        send_error: list[BaseException] = []

        def flood() -> None:
            try:
                hostile.send_binary(b"\x00" * (10 * 1024 * 1024))
            except OSError as exc:  # the app closed its end: nginx closes the client's
                send_error.append(exc)

        flooding = threading.Thread(target=flood, daemon=True)
        flooding.start()
        for n in range(20):
            for i, ws in enumerate(good):
                assert ws.echo(f"{i}:{n}") == f"{i}:{n}"
        with pytest.raises(Closed) as closed:
            while True:
                hostile.recv()
        # Refused by its header, with 1009; the close frame reaches the client unless the
        # reset of a connection closed mid-send overtakes it (then the session just ends).
        assert app.sessions.refused == [1009]
        assert closed.value.code in (1009, None), closed.value
        flooding.join(timeout=30)
        assert not flooding.is_alive()
        print(f"the hostile session ended with {closed.value}; its send: {send_error}")
        for i, ws in enumerate(good):
            assert ws.echo(f"{i}: after") == f"{i}: after"
        with client(port) as fresh:
            assert fresh.echo("a new session") == "a new session"
    finally:
        hostile.abort()
        for ws in good:
            ws.abort()


def _stalled_handshake(port: int, n: int) -> socket.socket:
    """A connection that sends half a websocket handshake and then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nX-Stall: {n}\r\n".encode()
    )
    return sock


def test_stalled_handshakes_do_not_affect_other_sessions(
    manager: NginxManager, apps: Callable[[str], wsapp.Server], port: int
) -> None:
    """100 clients that never finish their handshake hold only an nginx connection each
    (never reaching the app, until client_header_timeout: 60 s); sessions open and echo
    meanwhile."""
    apply(manager, (route("e1", "echo", HOST, apps("i1")),), 1)
    with client(port) as before:
        stalled = [_stalled_handshake(port, n) for n in range(100)]
        try:
            assert before.echo("while they stall") == "while they stall"
            for n in range(10):
                with client(port) as fresh:
                    assert fresh.echo(f"fresh {n}") == f"fresh {n}"
            # They are still open (nothing answered them): they did stall.
            stalled[0].settimeout(0.2)
            with pytest.raises(TimeoutError):
                stalled[0].recv(1)
        finally:
            for sock in stalled:
                sock.close()
        assert before.echo("after") == "after"


def test_nginx_drops_a_stalled_handshake_at_client_header_timeout(
    manager: NginxManager,
    apps: Callable[[str], wsapp.Server],
    port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With client_header_timeout shortened to 1 s, nginx closes the stalled connections on
    its own (no response: a 408 in its log) and the sessions never noticed."""
    with_config_line(
        monkeypatch, HTTP_BLOCK_LINE, HTTP_BLOCK_LINE + "\n    client_header_timeout 1s;"
    )
    apply(manager, (route("e1", "echo", HOST, apps("i1")),), 1)
    with client(port) as ws:
        stalled = [_stalled_handshake(port, n) for n in range(20)]
        try:
            for sock in stalled:
                sock.settimeout(10)
                assert sock.recv(1024) == b""  # closed by nginx, nothing answered
            assert ws.echo("unaffected") == "unaffected"
        finally:
            for sock in stalled:
                sock.close()
