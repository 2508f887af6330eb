"""The ingress agent: the one process of a ``berth-ingress`` task on a node labelled
``ingress=true``. It keeps that node's nginx serving what every Berth server's nginx serves.

Standard library only: the image (berth.images.ingress_image) holds python3, the distro's nginx
and this module (with berth.procfs), nothing else of Berth. The agent renders nothing: a Berth
server renders the node's whole nginx.conf from the same routes as its own
(berth.ingress.node_config), so there is one renderer and one validation of tenant text, on the
server.

Once a second it asks a server (``POST /api/v1/ingress/sync``, with the token Swarm mounted as a
secret) for the config, telling it what this node serves now (the generation nginx answers
at ``/__berth/generation``) and the last error. A new config is checked with ``nginx -t`` and
only then installed and reloaded: a config nginx refuses, or a server that does not answer,
leaves the node serving what it served. On SIGTERM (the task stops) nginx stops gracefully:
requests in flight are answered.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from berth.procfs import alive, children

SYNC_PATH = "/api/v1/ingress/sync"
MAX_CONF_BYTES = 64 * 1024 * 1024
MAX_BACKOFF_SECONDS = 10.0
ERROR_LIMIT = 500  # characters of an error sent back to the server


class AgentError(Exception):
    pass


@dataclass(frozen=True)
class SyncAnswer:
    etag: str
    generation: int
    conf: str | None  # None: what the agent has is current
    files: dict[str, str] = field(default_factory=dict)  # basic auth users files


# What a users file may be called and hold (berth.proxy.render names and fills them): checked
# again here, so that a broken answer can neither write outside htpasswd/ nor a line nginx
# would read as anything but one user and its bcrypt hash.
AUTH_DIR = "htpasswd"
AUTH_FILE_NAME = re.compile(r"[a-z0-9]{1,64}-[0-9a-f]{16}")
AUTH_LINE = re.compile(r"[A-Za-z0-9._-]{1,64}:\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")
MAX_AUTH_FILES = 10000


def parse_answer(body: bytes) -> SyncAnswer:
    """The server's answer, checked: a broken answer changes nothing on the node."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise AgentError(f"the server's answer is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AgentError("the server's answer is not an object")
    etag, generation, conf = data.get("etag"), data.get("generation"), data.get("conf")
    if not isinstance(etag, str) or not etag:
        raise AgentError("the server's answer has no etag")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise AgentError("the server's answer has no generation")
    if conf is not None and not isinstance(conf, str):
        raise AgentError("the server's config is not text")
    files = data.get("files")
    files = {} if files is None else files
    if not isinstance(files, dict) or len(files) > MAX_AUTH_FILES:
        raise AgentError("the server's users files are not a map")
    for name, content in files.items():
        if not isinstance(name, str) or not AUTH_FILE_NAME.fullmatch(name):
            raise AgentError(f"the server named a users file {name!r}")
        if not isinstance(content, str) or not all(
            AUTH_LINE.fullmatch(line) for line in content.splitlines()
        ):
            raise AgentError(f"the users file {name} holds more than users and hashes")
    return SyncAnswer(etag, generation, conf, dict(files))


class Nginx:
    """The node's nginx, run by the agent (the config says ``daemon on``: the master forks)."""

    def __init__(
        self, binary: str, state_dir: Path, port: int, worker_group: str = "www-data"
    ) -> None:
        self.binary = binary
        self.worker_group = worker_group  # the config's: its workers read the users files
        self.state_dir = state_dir
        self.conf = state_dir / "nginx.conf"
        self.pid_file = state_dir / "nginx.pid"
        self.port = port

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # -e: the error log before the config is read (the compiled-in path is read-only here).
        return subprocess.run(
            [self.binary, "-e", "/dev/stderr", "-p", str(self.state_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def write_auth_files(self, files: dict[str, str]) -> None:
        """Each users file the next config names, atomically, readable by nginx's workers'
        group (www-data) only; they are read on every request."""
        directory = self.state_dir / AUTH_DIR
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        gid = _group_id(self.worker_group)
        if gid is not None:
            os.chown(directory, -1, gid)
        for name, content in files.items():
            path = directory / name
            with contextlib.suppress(FileNotFoundError):
                if path.read_text() == content:
                    continue
            tmp = directory / f".{name}.tmp"
            tmp.write_text(content)
            if gid is not None:
                os.chown(tmp, -1, gid)
            tmp.chmod(0o640)
            os.replace(tmp, path)

    def prune_auth_files(self, keep: set[str]) -> None:
        """After a reload: the users files no live config names go."""
        directory = self.state_dir / AUTH_DIR
        if directory.is_dir():
            for path in directory.iterdir():
                if AUTH_FILE_NAME.fullmatch(path.name) and path.name not in keep:
                    path.unlink(missing_ok=True)

    def install(self, text: str) -> None:
        """Check ``text`` with ``nginx -t``; only then make it the config. Raises AgentError
        (nginx's words) and leaves the config as it was."""
        # The config's temp paths live below tmp/ (nginx makes the rest).
        (self.state_dir / "tmp").mkdir(parents=True, exist_ok=True)
        candidate = self.state_dir / "nginx.conf.new"
        candidate.write_text(text)
        checked = self._run("-t", "-q", "-c", str(candidate))
        if checked.returncode != 0:
            candidate.unlink(missing_ok=True)
            raise AgentError(f"nginx refused the config: {checked.stderr.strip()[-400:]}")
        os.replace(candidate, self.conf)

    def pid(self) -> int | None:
        reap()
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid

    def start(self) -> None:
        # Not captured: the master it forks keeps stderr (its error log) open for good, so a
        # pipe would never end; its words go to the task's log like every later line.
        started = subprocess.run(
            [self.binary, "-e", "/dev/stderr", "-p", str(self.state_dir), "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        if started.returncode != 0:
            raise AgentError(f"nginx did not start (exit {started.returncode}): see the task's log")

    def reload(self, pid: int) -> None:
        os.kill(pid, signal.SIGHUP)

    def serve(self) -> None:
        """Start nginx with the installed config, or make it reload it."""
        pid = self.pid()
        if pid is None:
            self.start()
        else:
            self.reload(pid)

    def live_generation(self) -> int | None:
        """What nginx answers now (None: nothing listens)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                conn.sendall(
                    b"GET /__berth/generation HTTP/1.0\r\nHost: berth-ingress-agent\r\n\r\n"
                )
                data = b""
                while len(data) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            return None
        try:
            return int(body.strip())
        except ValueError:
            return None

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful: the workers answer what they hold, then exit."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.1)


def workers_of(master: int) -> set[int]:
    """nginx's workers (and cache processes): the master's children."""
    return children(master)


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def reap() -> None:
    """The agent may be PID 1 (no init): collect nginx's exited master."""
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return


class Agent:
    def __init__(
        self, server: str, token: str, node: str, nginx: Nginx, interval: float = 1.0
    ) -> None:
        if not server.startswith(("http://", "https://")):
            raise AgentError(f"the server's URL must be http(s): {server!r}")
        self.url = server.rstrip("/") + SYNC_PATH
        self.token = token
        self.node = node
        self.nginx = nginx
        self.interval = interval
        self.etag = ""
        self.generation: int | None = None  # of the installed config
        self.error = ""
        self.stopping = threading.Event()

    def sync(self) -> SyncAnswer:
        body = json.dumps(
            {
                "node": self.node,
                "etag": self.etag,
                "live_generation": self.nginx.live_generation(),
                "error": self.error[:ERROR_LIMIT],
            }
        ).encode()
        request = urllib.request.Request(  # noqa: S310 (the operator's http(s) URL)
            self.url,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                raw = answer.read(MAX_CONF_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise AgentError(f"the server answered {exc.code}: {exc.read(400)!r}") from None
        except (OSError, urllib.error.URLError) as exc:
            raise AgentError(f"cannot reach {self.url}: {exc}") from None
        if len(raw) > MAX_CONF_BYTES:
            raise AgentError("the server's config is larger than the agent accepts")
        return parse_answer(raw)

    def step(self) -> None:
        """One round: ask, and apply what changed."""
        answer = self.sync()
        if answer.conf is not None:
            self.nginx.write_auth_files(answer.files)  # before nginx -t reads their names
            self.nginx.install(answer.conf)
            master = self.nginx.pid()
            old_workers = workers_of(master) if master is not None else set()
            self.nginx.serve()
            self.etag, self.generation = answer.etag, answer.generation
            self._wait_live(answer.generation, old_workers)
            self.nginx.prune_auth_files(set(answer.files))
        elif self.nginx.pid() is None and self.etag:
            self.nginx.start()  # it died: serve what was installed

    def _wait_live(
        self,
        generation: int,
        old_workers: AbstractSet[int] = frozenset(),
        timeout: float = 10.0,
    ) -> None:
        """Until the new config answers and the workers of the old one are gone: until then an
        old worker may still take a new connection and answer it with the old config (what
        the server is told this node serves must be all it serves)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nginx.live_generation() == generation and not any(
                alive(pid) for pid in old_workers
            ):
                return
            time.sleep(0.05)

    def run(self) -> None:
        delay = self.interval
        while not self.stopping.is_set():
            try:
                self.step()
            except (AgentError, OSError, subprocess.SubprocessError) as exc:
                self.error = str(exc)
                print(f"berth-ingress: {exc}", file=sys.stderr, flush=True)
                delay = min(max(delay * 2, self.interval), MAX_BACKOFF_SECONDS)
            else:
                self.error = ""
                delay = self.interval
            self.stopping.wait(delay)
        self.nginx.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="berth-ingress-agent")
    parser.add_argument("--server", required=True, help="a Berth server's API URL")
    parser.add_argument("--token-file", required=True, type=Path)
    parser.add_argument("--node", default=os.environ.get("BERTH_NODE", socket.gethostname()))
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/berth-ingress"))
    parser.add_argument("--nginx", default="/usr/sbin/nginx")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        print(f"berth-ingress: cannot read the token: {exc}", file=sys.stderr)
        return 2
    try:
        nginx = Nginx(args.nginx, args.state_dir, args.port)
        agent = Agent(args.server, token, args.node, nginx, args.interval)
    except AgentError as exc:
        print(f"berth-ingress: {exc}", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        agent.stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
