"""Run a real Berth server (real Docker Engine, real nginx) for end-to-end tests and benchmarks.

``BerthServer`` starts ``python -m berth.cli.main server`` as a child process with a fresh state
directory, free loopback ports and its own base domain, and talks to it the way a user does:
through the HTTP API, the ``berth`` CLI and nginx. ``cleanup()`` removes everything the server
made (containers, networks, built images, nginx, the process, the state directory); it runs from
the test fixtures' finalizers and, as a last resort, at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from berth.netpolicy.iptables import IptablesFirewall

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
PYTHON_APP = EXAMPLES / "python-app"
BUSYBOX_APP = EXAMPLES / "busybox-app"
BASE_IMAGES = ("berth/busybox:latest", "berth/python:3")
NGINX_BINARY = "/usr/sbin/nginx"

LABEL_MANAGED = "berth.managed"
LABEL_INSTALLATION = "berth.installation"
LABEL_APP_NAME = "berth.app-name"
LABEL_BUILD_INSTALLATION = "berth.build.installation"

# Below the kernel's ephemeral range (32768+), where Docker picks published ports, so a port
# chosen here is never handed to a container later.
_PORT_RANGE = (20000, 32000)
_ports_taken: set[int] = set()
_ports_lock = threading.Lock()

_live_servers: list[BerthServer] = []


def wait_until(
    cond: Callable[[], Any], timeout: float = 30.0, what: str = "the condition holds"
) -> Any:
    """Poll ``cond`` until it returns a truthy value (returned); fail with ``what`` on timeout.

    Exceptions from ``cond`` count as "not yet" (the last one is shown on timeout).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = cond()
        except Exception as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting until {what}{detail}")
        time.sleep(0.1)


def free_port() -> int:
    """A loopback TCP port that is free now, outside Docker's range, not handed out before."""
    with _ports_lock:
        for _ in range(1000):
            port = random.randrange(*_PORT_RANGE)
            if port in _ports_taken:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _ports_taken.add(port)
            return port
    raise RuntimeError("no free port found")


def docker_client() -> docker.DockerClient:
    return docker.from_env(version="auto", timeout=120)


def check_requirements() -> None:
    """Fail (never skip) when the real Docker Engine, the base images or nginx are missing."""
    problems = []
    try:
        client = docker_client()
        client.ping()
        for ref in BASE_IMAGES:
            try:
                client.images.get(ref)
            except docker.errors.ImageNotFound:
                problems.append(f"image {ref} is missing (run `python -m berth.images`)")
        client.close()
    except docker.errors.DockerException as exc:
        problems.append(f"the Docker Engine is not reachable: {exc}")
    if not os.access(NGINX_BINARY, os.X_OK):
        problems.append(f"nginx is not installed at {NGINX_BINARY}")
    else:
        result = subprocess.run([NGINX_BINARY, "-v"], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            problems.append(f"`nginx -v` failed: {result.stderr.strip()}")
    if problems:
        raise RuntimeError("end-to-end tests need real parts:\n  " + "\n  ".join(problems))


@dataclass
class LoadResult:
    """What a client loop saw: every request's outcome."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    # When each failed request started and ended (time.monotonic()), in ``failures``' order.
    failure_times: list[tuple[float, float]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def failures_apart_from(self, at: float, within: float = 2.0) -> list[str]:
        """Failures other than requests already in flight at ``at`` (a process killed -9 or a
        link cut then) that ended within ``within`` seconds of it: those no proxy can save
        once the response has begun."""
        return [
            f
            for f, (start, end) in zip(self.failures, self.failure_times, strict=True)
            if not (start <= at <= end <= at + within)
        ]


class ClientLoop:
    """GET one URL through nginx in a background thread until stopped or bounded out.

    Bounded by ``max_seconds`` and ``max_requests``, so a test can never spin forever.
    Each request opens a new connection: an nginx reload closes idle keep-alive connections,
    and a client that reuses one at that instant gets a reset that HTTP lets it retry (browsers
    do, silently). On a fresh connection, every failure is one a user would see.
    """

    def __init__(
        self,
        server: BerthServer,
        host: str,
        path: str = "/",
        max_seconds: float = 30.0,
        max_requests: int = 2000,
        pause: float = 0.01,
    ) -> None:
        self.server, self.host, self.path = server, host, path
        self.max_seconds, self.max_requests, self.pause = max_seconds, max_requests, pause
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="client-loop", daemon=True)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(timeout=self.max_seconds + 15)
        return self.result

    def wait_for_requests(self, n: int, timeout: float = 15.0) -> None:
        wait_until(lambda: self.result.total >= n, timeout, f"the client made {n} requests")

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        url = f"http://{self.server.host}:{self.server.ingress_port}{self.path}"
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=10.0, trust_env=False, limits=limits) as client:
            while (
                not self._stop.is_set()
                and time.monotonic() < deadline
                and self.result.total < self.max_requests
            ):
                started = time.perf_counter()
                began = time.monotonic()
                try:
                    resp = client.get(url, headers={"Host": self.host})
                except httpx.HTTPError as exc:
                    self.result.failures.append(f"{type(exc).__name__}: {exc}")
                    self.result.failure_times.append((began, time.monotonic()))
                else:
                    if resp.status_code == 200:
                        self.result.ok += 1
                        self.result.bodies.append(resp.text)
                        self.result.latencies.append(time.perf_counter() - started)
                    else:
                        self.result.failures.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
                        self.result.failure_times.append((began, time.monotonic()))
                time.sleep(self.pause)


class BerthServer:
    """One ``berth server`` process on its own state directory, ports and base domain."""

    def __init__(
        self,
        *,
        deploy_timeout: float = 30.0,
        max_build_context_bytes: int | None = None,
        max_scale: int | None = None,
        extra_env: Mapping[str, str] | None = None,
        default_intervals: bool = False,
        host: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        # ``host``/``command_prefix``: a server inside a network namespace of a test cluster's
        # node (``nsenter --net=...``), reached at that node's address.
        self.host, self.command_prefix = host, tuple(command_prefix)
        tag = uuid.uuid4().hex[:10]
        self.root = Path(tempfile.mkdtemp(prefix=f"berth-e2e-{tag}-"))
        # nginx workers run as nobody when the server runs as root; they must reach tmp/.
        self.root.chmod(0o755)
        self.home = self.root / "home"
        self.config_home = self.root / "cli-config"
        self.log_path = self.root / "server.log"
        self.api_port = free_port()
        self.ingress_port = free_port()
        self.base_domain = f"e{tag}.berth.test"
        self.api_url = f"http://{host}:{self.api_port}"
        settings = {
            "BERTH_HOME": str(self.home),
            "BERTH_API_PORT": str(self.api_port),
            "BERTH_INGRESS_PORT": str(self.ingress_port),
            "BERTH_INGRESS_LISTEN": host,
            "BERTH_API_HOST": host,
            "BERTH_BASE_DOMAIN": self.base_domain,
            "BERTH_DEPLOY_TIMEOUT_SECONDS": str(deploy_timeout),
            "BERTH_RECONCILE_INTERVAL_SECONDS": "0.5",
            "BERTH_HEALTH_INTERVAL_SECONDS": "0.5",
        }
        if default_intervals:  # the benchmarks measure what users get, not the tests' pace
            del settings["BERTH_RECONCILE_INTERVAL_SECONDS"]
            del settings["BERTH_HEALTH_INTERVAL_SECONDS"]
        if max_build_context_bytes is not None:
            settings["BERTH_MAX_BUILD_CONTEXT_BYTES"] = str(max_build_context_bytes)
        if max_scale is not None:
            settings["BERTH_MAX_SCALE"] = str(max_scale)
        settings.update(extra_env or {})
        self.settings = settings
        self.max_scale = int(settings.get("BERTH_MAX_SCALE", "20"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.installation: str | None = None
        self.token: str | None = None
        self._api: httpx.Client | None = None
        self._cleaned = False
        # How many instances of an app the backend runs (here: containers on this engine).
        self.count_instances: Callable[[str], int] = lambda app: len(self.containers(app))
        _live_servers.append(self)

    # -- process ------------------------------------------------------------------------

    def server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.update(self.settings)
        env["PYTHONUNBUFFERED"] = "1"
        env["XDG_CONFIG_HOME"] = str(self.config_home)
        return env

    def start(self, timeout: float = 60.0) -> BerthServer:
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start at {time.ctime()} =====\n".encode())
            self.proc = subprocess.Popen(
                [*self.command_prefix, sys.executable, "-m", "berth.cli.main", "server"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.server_env(),
                cwd=self.root,
                start_new_session=True,
            )
        self._wait_healthy(timeout)
        self.token = (self.home / "admin-token").read_text().strip()
        if self._api is not None:
            self._api.close()
        self._api = httpx.Client(
            base_url=self.api_url + "/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60.0,
            trust_env=False,
        )
        status = self.api_json("GET", "/status")
        if self.installation is not None:
            assert status["installation"] == self.installation, "installation id changed"
        self.installation = status["installation"]
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"berth server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                resp = httpx.get(self.api_url + "/healthz", timeout=2, trust_env=False)
                if resp.status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(
            f"berth server did not answer /healthz in {timeout}s:\n{self.log_tail()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Send ``sig`` to the server and wait until it has exited; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"server ignored signal {sig} for {timeout}s") from None

    def restart(self, timeout: float = 60.0) -> BerthServer:
        """Start again on the same state directory and ports (after ``stop``)."""
        self.stop()
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # -- the API, the CLI, nginx -----------------------------------------------------------

    @property
    def api(self) -> httpx.Client:
        assert self._api is not None, "server not started"
        return self._api

    def api_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API and return the JSON body; fails on an error status."""
        resp = self.api.request(method, path, **kwargs)
        assert resp.status_code < 400, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.update(
            {
                "BERTH_API_URL": self.api_url,
                "BERTH_TOKEN": self.token or "",
                "XDG_CONFIG_HOME": str(self.config_home),
                "COLUMNS": "200",
                "TERM": "dumb",
                "NO_COLOR": "1",
            }
        )
        return env

    def cli(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """Run ``berth ARGS`` as a user would; never raises on a non-zero exit."""
        return subprocess.run(
            [sys.executable, "-m", "berth.cli.main", *args],
            capture_output=True,
            text=True,
            env=self.cli_env(),
            cwd=self.root,
            timeout=timeout,
            check=False,
        )

    def cli_ok(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        result = self.cli(*args, timeout=timeout)
        assert result.returncode == 0, (
            f"`berth {' '.join(args)}` exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\nserver log:\n{self.log_tail()}"
        )
        return result

    def cli_json(self, *args: str, timeout: float = 180.0) -> Any:
        """Run ``berth ARGS --json`` (must succeed) and parse what it printed."""
        return json.loads(self.cli_ok(*args, "--json", timeout=timeout).stdout)

    def host_of(self, app: str) -> str:
        return f"{app}.{self.base_domain}"

    def ingress_get(self, host: str, path: str = "/", timeout: float = 10.0) -> httpx.Response:
        """GET through Berth's nginx with the given Host header."""
        return httpx.get(
            f"http://{self.host}:{self.ingress_port}{path}",
            headers={"Host": host},
            timeout=timeout,
            trust_env=False,
        )

    def app_body(self, app: str, path: str = "/") -> str | None:
        """The app's 200 response body through nginx, or None when it does not answer 200."""
        try:
            resp = self.ingress_get(self.host_of(app), path)
        except httpx.HTTPError:
            return None
        return resp.text if resp.status_code == 200 else None

    def client_loop(self, app: str, **kwargs: Any) -> ClientLoop:
        return ClientLoop(self, self.host_of(app), **kwargs)

    # -- what runs in Docker ---------------------------------------------------------------

    def containers(self, app: str | None = None, all: bool = True) -> list[Any]:
        """This installation's containers (docker-py objects), optionally one app's."""
        assert self.installation is not None
        labels = [f"{LABEL_MANAGED}=true", f"{LABEL_INSTALLATION}={self.installation}"]
        if app is not None:
            labels.append(f"{LABEL_APP_NAME}={app}")
        with contextlib.closing(docker_client()) as client:
            found = client.containers.list(all=all, filters={"label": labels}, ignore_removed=True)
            return list(found)

    def containers_created(self, app: str, since: float) -> int:
        """How many containers the engine created for ``app`` since ``since`` (unix time)."""
        assert self.installation is not None
        filters = {
            "type": "container",
            "event": "create",
            "label": [f"{LABEL_INSTALLATION}={self.installation}", f"{LABEL_APP_NAME}={app}"],
        }
        with contextlib.closing(docker_client()) as client:
            events = client.events(
                since=int(since), until=int(time.time()) + 1, decode=True, filters=filters
            )
            return sum(1 for _ in events)

    def inspect(self, container_id: str) -> dict[str, Any]:
        with contextlib.closing(docker_client()) as client:
            return dict(client.api.inspect_container(container_id))

    def networks(self) -> list[str]:
        assert self.installation is not None
        with contextlib.closing(docker_client()) as client:
            nets = client.networks.list(
                filters={"label": f"{LABEL_INSTALLATION}={self.installation}"}
            )
            return sorted(n.name for n in nets)

    def built_images(self) -> list[Any]:
        assert self.installation is not None
        with contextlib.closing(docker_client()) as client:
            return list(
                client.images.list(
                    all=True, filters={"label": f"{LABEL_BUILD_INSTALLATION}={self.installation}"}
                )
            )

    # -- convenience over the CLI --------------------------------------------------------

    def create_app(self, name: str, *options: str) -> dict[str, Any]:
        data: dict[str, Any] = self.cli_json("apps", "create", name, *options)
        return data

    def deploy_dir(self, name: str, directory: Path) -> dict[str, Any]:
        data: dict[str, Any] = self.cli_json("deploy", name, str(directory), timeout=240)
        return data

    def ps(self, name: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.cli_json("ps", name)
        return data

    def wait_converged(self, name: str, scale: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Until ``ps`` shows exactly ``scale`` healthy running instances and docker agrees."""

        def converged() -> list[dict[str, Any]] | None:
            rows = self.ps(name)
            healthy = [r for r in rows if r["state"] == "running" and r["healthy"]]
            # Every state: no leftovers either (on Swarm: the tasks that run, wherever).
            in_docker = self.count_instances(name)
            if len(rows) == scale and len(healthy) == scale and in_docker == scale:
                return rows
            return None

        rows: list[dict[str, Any]] = wait_until(
            converged, timeout, f"{name} runs exactly {scale} healthy instances"
        )
        return rows

    # -- cleanup ------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove everything this server made. Safe to call twice; never raises."""
        if self._cleaned:
            return
        self._cleaned = True
        steps: list[Callable[[], None]] = [
            self._kill_server,
            self._remove_docker_objects,
            self._stop_nginx,
            self._kill_server,  # again: nothing may have started in between
            self._remove_egress_rules,  # the server is gone: nothing re-adds them
            self._close_api,
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:  # one failed step must not keep the others from running
                print(f"berth e2e cleanup: {step.__name__} failed: {exc!r}", file=sys.stderr)
        keep = os.environ.get("BERTH_E2E_KEEP_HOME") == "1"
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _live_servers.remove(self)

    def _kill_server(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        # Servers started in the background (`berth server start`) on this home, found by their
        # environment: the pid file may not name them yet, or any more.
        for pid in self._processes_on_home():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _processes_on_home(self) -> list[int]:
        marker = f"BERTH_HOME={self.home}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
        return pids

    def _installation_id(self) -> str | None:
        if self.installation is not None:
            return self.installation
        # The server may have died before answering /status: read the id from its store.
        db = self.home / "berth.db"
        if not db.exists():
            return None
        import sqlite3

        with contextlib.closing(sqlite3.connect(db)) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'installation_id'").fetchone()
        return str(row[0]) if row else None

    def _remove_docker_objects(self) -> None:
        inst = self._installation_id()
        if not inst:
            return
        with contextlib.closing(docker_client()) as client:
            owned = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTALLATION}={inst}"]}
            for container in client.containers.list(all=True, filters=owned, ignore_removed=True):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
            for network in client.networks.list(filters={"label": f"{LABEL_INSTALLATION}={inst}"}):
                with contextlib.suppress(docker.errors.NotFound):
                    network.remove()
            built = {"label": f"{LABEL_BUILD_INSTALLATION}={inst}"}
            # Tagged images first: removing one also prunes its untagged parents.
            images = sorted(client.images.list(all=True, filters=built), key=lambda i: not i.tags)
            for image in images:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    client.images.remove(image.id, force=True)

    def _remove_egress_rules(self) -> None:
        """This installation's iptables chains and jumps (berth.netpolicy); no other's."""
        inst = self._installation_id()
        if inst:
            IptablesFirewall(inst).remove()

    def _stop_nginx(self) -> None:
        """Quit this server's nginx master, then kill whatever nginx process is left.

        Workers outlive a killed master (and keep serving), so they are found on their own:
        every nginx process runs in this server's directory (the server's cwd).
        """
        pid_file = self.home / "nginx" / "nginx.pid"
        with contextlib.suppress(OSError, ValueError):
            master = int(pid_file.read_text().strip())
            if master in self._nginx_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(master, signal.SIGQUIT)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and master in self._nginx_pids():
                    time.sleep(0.05)
        for _ in range(50):
            left = self._nginx_pids()
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _nginx_pids(self) -> set[int]:
        conf = str((self.home / "nginx").resolve())
        root = str(self.root.resolve())
        pids = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if cmdline.startswith("nginx:") and (
                conf in cmdline or cwd == root or cwd.startswith(root + "/")
            ):
                pids.add(int(proc.name))
        return pids

    def _close_api(self) -> None:
        if self._api is not None:
            self._api.close()


@contextlib.contextmanager
def running_server(**kwargs: Any) -> Iterator[BerthServer]:
    """A started server that is always cleaned up."""
    server = BerthServer(**kwargs)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def write_app(directory: Path, dockerfile: str, files: Mapping[str, str] | None = None) -> Path:
    """Write a small build context (a Dockerfile and files) and return its directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (directory / name).write_text(text)
    return directory


@atexit.register
def _cleanup_all() -> None:
    for server in list(_live_servers):
        server.cleanup()


def cleanup_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, CI) into KeyboardInterrupt, so that fixture finalizers and
    the atexit hook still run and remove every server's containers, nginx and files."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)
