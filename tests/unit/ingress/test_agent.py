"""The ingress agent with the real nginx in a temporary directory, asking a stand-in for the
Berth server (the real server and agent together on Swarm nodes:
tests/cluster/test_ingress_nodes.py). A config nginx refuses, or a server that does not
answer, leaves nginx serving what it served; SIGTERM's path stops nginx."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.domain.traffic import TrafficControls, user_with_password
from berth.ingress.agent import SYNC_PATH, Agent, AgentError, Nginx, parse_answer, workers_of
from berth.ingress.node_config import node_config
from berth.proxy.model import NginxPaths, Route, Upstream
from berth.proxy.nginx import _worker_identity
from tests.harness import free_port

TOKEN = "bit_test-token"


@dataclass
class StandIn:
    """Answers the agent's sync with ``answers[0]`` (then the next), records the requests."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)


def _server(stand_in: StandIn) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            stand_in.requests.append(json.loads(self.rfile.read(length)))
            stand_in.auth.append(self.headers.get("Authorization") or "")
            if self.path != SYNC_PATH or not stand_in.answers:
                self.send_response(404)
                self.end_headers()
                return
            answer = stand_in.answers[0] if len(stand_in.answers) == 1 else stand_in.answers.pop(0)
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _backend(text: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Rig:
    agent: Agent
    stand_in: StandIn
    paths: NginxPaths
    port: int
    backends: dict[str, int]

    controls: dict[str, TrafficControls] = field(default_factory=dict)

    def answer(self, generation: int, text: str | None = None) -> dict[str, Any]:
        routes = tuple(
            Route(f"app{i}", name, "t1", (f"{name}.edge.test",),
                  (Upstream("127.0.0.1", port),), "serving", self.controls.get(name))
            for i, (name, port) in enumerate(sorted(self.backends.items()))
        )  # fmt: skip
        config = node_config(routes, generation, self.port, self.paths)
        return {
            "etag": config.etag,
            "generation": generation,
            "conf": text or config.text,
            "files": config.auth_files,
        }

    def get(self, host: str) -> httpx.Response:
        with httpx.Client(timeout=5, trust_env=False) as client:
            return client.get(f"http://127.0.0.1:{self.port}/", headers={"Host": host})


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    user, group = _worker_identity()
    # nginx's workers read the users files on every request: every directory above them must
    # let them through (pytest's own tmp_path parents do not), as /var/lib/berth-ingress does.
    base = Path(tempfile.mkdtemp(prefix="berth-agent-", dir="/tmp"))
    base.chmod(0o711)
    state = base / "state"
    state.mkdir()
    paths = NginxPaths.in_dir(state, worker_user=user, worker_group=group)
    port = free_port()
    stand_in = StandIn()
    server = _server(stand_in)
    backend = _backend("hello from shop")
    token_url = f"http://127.0.0.1:{server.server_address[1]}"
    nginx = Nginx("/usr/sbin/nginx", state, port, worker_group=group or "root")
    agent = Agent(token_url, TOKEN, "w1", nginx, interval=0.05)
    try:
        yield Rig(agent, stand_in, paths, port, {"shop": backend.server_address[1]})
    finally:
        nginx.stop()
        server.shutdown()
        backend.shutdown()
        server.server_close()
        backend.server_close()
        shutil.rmtree(base, ignore_errors=True)
    assert nginx.pid() is None


def test_the_agent_serves_what_it_is_sent_and_keeps_it_through_failures(rig: Rig) -> None:
    rig.stand_in.answers = [rig.answer(1)]
    rig.agent.step()
    assert rig.agent.nginx.live_generation() == 1
    assert rig.get("shop.edge.test").text == "hello from shop"
    assert rig.get("other.edge.test").status_code == 404
    assert rig.stand_in.auth[-1] == f"Bearer {TOKEN}"
    assert rig.stand_in.requests[-1]["node"] == "w1"

    # Unchanged: nothing is installed again (the master stays, no reload).
    master = rig.agent.nginx.pid()
    rig.stand_in.answers = [{**rig.answer(1), "conf": None}]
    rig.agent.step()
    assert rig.agent.nginx.pid() == master
    assert rig.stand_in.requests[-1]["live_generation"] == 1
    assert rig.stand_in.requests[-1]["etag"] == rig.agent.etag

    # A config nginx refuses: the error says why, the node keeps serving generation 1.
    rig.stand_in.answers = [rig.answer(2, text="events {}\nhttp { nonsense_directive on; }\n")]
    with pytest.raises(AgentError, match="nginx refused the config"):
        rig.agent.step()
    assert rig.agent.nginx.live_generation() == 1
    assert rig.get("shop.edge.test").text == "hello from shop"

    # A new app: reloaded, live at once, and no worker of the old config left to answer a new
    # connection with it.
    rig.backends["cart"] = _backend("hello from cart").server_address[1]
    rig.stand_in.answers = [rig.answer(3)]
    assert master is not None
    before = workers_of(master)
    assert before
    rig.agent.step()
    assert not before & workers_of(master)
    assert rig.agent.nginx.live_generation() == 3
    assert rig.get("cart.edge.test").text == "hello from cart"
    assert rig.agent.nginx.pid() == master


def test_basic_auth_users_files_reach_the_node(rig: Rig) -> None:
    """The users files come with the config, are written before nginx checks it, and go once
    no config names them."""
    rig.controls["shop"] = TrafficControls(basic_auth=(user_with_password("ann", "s3cret-pass"),))
    rig.stand_in.answers = [rig.answer(1)]
    rig.agent.step()
    assert rig.get("shop.edge.test").status_code == 401
    with httpx.Client(timeout=5, trust_env=False, auth=("ann", "s3cret-pass")) as client:
        resp = client.get(f"http://127.0.0.1:{rig.port}/", headers={"Host": "shop.edge.test"})
    assert resp.status_code == 200 and resp.text == "hello from shop"
    users = rig.agent.nginx.state_dir / "htpasswd"
    (written,) = list(users.iterdir())
    assert oct(written.stat().st_mode & 0o777) == "0o640"
    rig.controls.clear()
    rig.stand_in.answers = [rig.answer(2)]
    rig.agent.step()
    assert rig.get("shop.edge.test").status_code == 200
    assert list(users.iterdir()) == []


def test_a_server_that_does_not_answer_changes_nothing(rig: Rig) -> None:
    rig.stand_in.answers = [rig.answer(1)]
    rig.agent.step()
    rig.agent.url = f"http://127.0.0.1:{free_port()}{SYNC_PATH}"  # nothing listens there
    with pytest.raises(AgentError, match="cannot reach"):
        rig.agent.step()
    assert rig.get("shop.edge.test").text == "hello from shop"


def test_nginx_that_died_is_started_again_with_what_was_installed(rig: Rig) -> None:
    rig.stand_in.answers = [rig.answer(1)]
    rig.agent.step()
    rig.agent.nginx.stop()
    assert rig.agent.nginx.live_generation() is None
    rig.stand_in.answers = [{**rig.answer(1), "conf": None}]
    rig.agent.step()
    rig.agent._wait_live(1)
    assert rig.get("shop.edge.test").text == "hello from shop"


def test_the_run_loop_reports_errors_and_stops_nginx_on_term(rig: Rig) -> None:
    rig.stand_in.answers = [rig.answer(1)]
    thread = threading.Thread(target=rig.agent.run, daemon=True)
    thread.start()
    try:
        deadline = 100
        while rig.agent.nginx.live_generation() != 1 and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        assert rig.agent.nginx.live_generation() == 1
    finally:
        rig.agent.stopping.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert rig.agent.nginx.pid() is None  # stopped gracefully with the agent


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"generation": 1}',
        b'{"etag": "", "generation": 1}',
        b'{"etag": "ab", "generation": true}',
        b'{"etag": "ab", "generation": -1}',
        b'{"etag": "ab", "generation": 1, "conf": 5}',
        b'{"etag": "ab", "generation": 1, "conf": "", "files": {"../../etc/passwd": "x"}}',
        b'{"etag": "ab", "generation": 1, "conf": "", "files": {"a1-0123456789abcdef": '
        b'"ann:plain\\nevil"}}',
        b'{"etag": "ab", "generation": 1, "conf": "", "files": []}',
    ],
)
def test_a_broken_answer_is_refused(body: bytes) -> None:
    with pytest.raises(AgentError):
        parse_answer(body)


def test_only_http_urls() -> None:
    with pytest.raises(AgentError, match="http"):
        Agent("file:///etc/passwd", TOKEN, "w1", Nginx("/usr/sbin/nginx", Path("/tmp"), 80))
