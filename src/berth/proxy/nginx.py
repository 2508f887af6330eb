"""Berth's own nginx: one config directory, one pid file, one master process.

nginx daemonizes itself (its own session), so it keeps serving while Berth is stopped,
restarting or killed. A new ``NginxManager`` on the same directory adopts the running master
and never restarts it. nginx never serves a config it rejects: the first config is checked
(``nginx -t``) before nginx starts; a new one is checked while the master loads it (the master
runs the same checks and on a failure keeps serving the old config, with no new workers), and
when ``nginx -t`` rejects it the old file is put back and loaded again, and the apply raises.

A reload does not wait out nginx's own pause: after starting the new workers the master sleeps
100 ms before it asks the old ones to stop, and until then the old workers take (nearly) every
new connection and keep their idle keep-alive ones, so a new route is seen ~0.1 s late. Once
all the new workers are up, Berth asks the old ones itself (SIGQUIT: nginx's graceful shutdown
of a worker, as the master would 100 ms later): they finish what they serve and stop accepting,
and new connections wait in the listen socket's backlog for a new worker, never refused.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import logging
import os
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from berth.errors import ProxyConfigError
from berth.procfs import children
from berth.proxy import dynamic
from berth.proxy.model import NginxPaths, ProxyConfig, Route, TlsConfig, Upstream
from berth.proxy.render import AUTH_DIR, AUTH_FILE_NAME, auth_files, peers, render_nginx_conf

log = logging.getLogger(__name__)

GENERATION_PATH = "/__berth/generation"
# A single-label Host never passes domain validation, so no app can claim it and the probe
# always reaches the default server.
PROBE_HOST = "berth-generation-probe"
_COMMAND_TIMEOUT = 30.0
_START_TIMEOUT = 10.0
# How long a reload waits for the master's new workers before leaving the old ones to it (a
# config the master cannot load starts none: the old workers then go on serving).
_NEW_WORKERS_TIMEOUT = 1.0
_WORKER_TITLE = "nginx: worker process"
# The control socket speaks plain HTTP: a context made once, never used for a handshake.
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class NginxManager:
    """Render, check, install and (re)load the config of the nginx that Berth owns."""

    def __init__(
        self,
        conf_dir: Path,
        nginx_binary: str = "/usr/sbin/nginx",
        listen_host: str = "0.0.0.0",
        listen_port: int = 80,
        dynamic_upstreams: bool | None = None,
    ) -> None:
        self.conf_dir = Path(conf_dir).resolve()
        self.nginx_binary = nginx_binary
        self.listen_host = listen_host
        self.listen_port = listen_port
        worker_user, worker_group = _worker_identity()
        # None: on when the distro's Lua module is installed (berth.proxy.dynamic).
        self.dynamic = dynamic.available() if dynamic_upstreams is None else dynamic_upstreams
        self.paths = NginxPaths.in_dir(
            self.conf_dir,
            worker_user=worker_user,
            worker_group=worker_group,
            lua_modules=dynamic.MODULES_DIR if self.dynamic else None,
        )
        # What nginx's shared dictionary was last told (pushed again after a (re)start).
        self._peers: bytes | None = None
        self.reload_count = 0
        # HTTPS: the TLS part for a set of routes (certificates known to this server) and a
        # number that grows whenever it would change; None: plain HTTP only.
        self.tls: Callable[[tuple[Route, ...]], TlsConfig | None] | None = None
        self.tls_version: Callable[[], int] = lambda: 0
        self.acme_upstream: Upstream | None = None  # where HTTP-01 challenges are answered
        # Serialises apply/start/reload/stop between the syncer thread and direct callers.
        self._lock = threading.RLock()

    @property
    def conf_path(self) -> Path:
        return self.paths.conf_file

    def config(self, routes: tuple[Route, ...], generation: int) -> ProxyConfig:
        """A ``ProxyConfig`` listening where this manager listens."""
        return ProxyConfig(
            listen_host=self.listen_host,
            listen_port=self.listen_port,
            routes=routes,
            generation=generation,
            tls=self.tls(routes) if self.tls is not None else None,
            acme_upstream=self.acme_upstream,
        )

    # -- desired state ---------------------------------------------------------------------

    def apply(self, cfg: ProxyConfig) -> bool:
        """Make ``cfg`` the live config. Returns False when it equals the live one (no
        reload). Raises ``ProxyConfigError`` when it cannot be rendered or nginx rejects it;
        the live config is then untouched."""
        self._check_listen(cfg)
        with self._lock:
            self._prepare_dirs()
            text = self._render(cfg)
            # The users files the new config names exist before it can go live; a file's
            # name is its content's digest, so the live config's files are never rewritten.
            files = self._write_auth_files(cfg)
            live = self._live_text()
            body = self._peers_body(cfg) if self.dynamic else None
            if text == live or (
                body is not None
                and live is not None
                and dynamic.without_generation(text) == dynamic.without_generation(live)
            ):
                # Only instances (or the generation) changed: told at run time, no reload.
                self._start_if_stopped()
                if body is None or body == self._peers:
                    return False
                self._push_peers(body)
                return True
            master = self.pid()
            if body is not None and master is not None:
                # The new config's apps find their instances from its first request on; the
                # entries of apps it drops go after the reload.
                self._push_peers(body, keep_others=True)
            if master is None or live is None:
                self._install(text)
                if master is None:
                    self._start()
                else:
                    self.reload()
            else:
                self._reload_while_checking(text, live, master)
            if body is not None:
                self._push_peers(body)
            self._prune_auth_files(set(files))
            return True

    def ensure_running(self) -> int:
        """Adopt the running master if there is one, else start nginx. Returns its pid."""
        with self._lock:
            pid = self.pid()
            if pid is not None:
                return pid
            self._prepare_dirs()
            if not self.conf_path.exists():
                # Nothing was ever applied here: serve the 404 page until routes arrive.
                self._install(self._render(self.config((), 0)))
            return self._start()

    # -- process control -------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of the live nginx master serving this directory, if there is one."""
        try:
            pid = int(self.paths.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_our_master(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def reload(self) -> None:
        """Ask the master to load nginx.conf again. nginx reloads gracefully: old workers
        finish their requests, and a config that fails to load leaves the old one serving."""
        with self._lock:
            pid = self.pid()
            if pid is None:
                raise ProxyConfigError("nginx is not running, cannot reload it")
            old = _workers_of(pid)
            os.kill(pid, signal.SIGHUP)
            self.reload_count += 1
            _retire_old_workers(pid, old)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGQUIT), then fast (SIGTERM), then SIGKILL if it hangs."""
        with self._lock:
            pid = self.pid()
            if pid is None:
                return
            for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if _wait_until(lambda: not self._is_our_master(pid), timeout):
                    return
                log.warning("nginx master %d ignored %s", pid, sig.name)

    def wait_for_generation(self, generation: int, timeout: float = 10.0) -> bool:
        """Poll the default server until it answers ``generation``: the reload carrying that
        config is live. Returns False on timeout."""
        url = f"http://{self._probe_address()}{GENERATION_PATH}"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while True:
                if self._read_generation(client, url) == generation:
                    return True
                if time.monotonic() >= deadline:
                    return False
                # Each probe is one loopback request: polling often costs nothing and makes
                # the reload's end visible within 10 ms.
                time.sleep(0.01)

    # -- internals -------------------------------------------------------------------------

    def _peers_body(self, cfg: ProxyConfig) -> bytes:
        try:
            return dynamic.peers_body(cfg.generation, peers(cfg))
        except ValueError as exc:
            raise ProxyConfigError(f"cannot render nginx config: {exc}") from exc

    def _control_client(self) -> httpx.Client:
        """Plain HTTP over the Unix socket. An SSL context (the CA bundle loaded again) would
        be most of an instance change's time, and no TLS is spoken here."""
        assert self.paths.control_socket is not None
        transport = httpx.HTTPTransport(uds=str(self.paths.control_socket), verify=_NO_TLS)
        return httpx.Client(transport=transport, timeout=10.0, trust_env=False, verify=_NO_TLS)

    def live_peers(self) -> dict[str, tuple[str, ...]]:
        """What nginx's dictionary holds now: app id -> its instances (dynamic mode only)."""
        socket_path = self.paths.control_socket
        if socket_path is None:
            raise ProxyConfigError("this nginx takes its instances from its config")
        try:
            with self._control_client() as client:
                answer = client.get(f"http://nginx{dynamic.PEERS_PATH}")
        except httpx.HTTPError as exc:
            raise ProxyConfigError(f"cannot read the instances from nginx: {exc}") from exc
        return dynamic.parse_peers(answer.text)

    def _push_peers(self, body: bytes, *, keep_others: bool = False) -> None:
        """Tell nginx's shared dictionary every app's instances (and the generation), over
        the control socket in nginx's own directory."""
        socket_path = self.paths.control_socket
        assert socket_path is not None
        url = f"http://nginx{dynamic.PEERS_PATH}" + ("?keep=1" if keep_others else "")
        try:
            with self._control_client() as client:
                answer = client.post(url, content=body)
        except httpx.HTTPError as exc:
            raise ProxyConfigError(f"cannot set the instances in nginx: {exc}") from exc
        if answer.status_code != 200:
            raise ProxyConfigError(
                f"nginx refused the instances: HTTP {answer.status_code} {answer.text[:200]}"
            )
        if not keep_others:
            self._peers = body

    def _check_listen(self, cfg: ProxyConfig) -> None:
        # wait_for_generation probes the manager's address, so a config listening
        # elsewhere would never be seen live.
        if (cfg.listen_host, cfg.listen_port) != (self.listen_host, self.listen_port):
            raise ProxyConfigError(
                f"config listens on {cfg.listen_host}:{cfg.listen_port} but this nginx "
                f"listens on {self.listen_host}:{self.listen_port}"
            )

    def _render(self, cfg: ProxyConfig) -> str:
        try:
            return render_nginx_conf(cfg, self.paths)
        except ValueError as exc:
            raise ProxyConfigError(f"cannot render nginx config: {exc}") from exc

    def _prepare_dirs(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.paths.temp_dir.mkdir(exist_ok=True)
        if self.paths.worker_user is not None:
            # Workers run as an unprivileged user and write request bodies under tmp/;
            # nginx chowns the leaf temp dirs but cannot make their parents traversable.
            self.conf_dir.chmod(0o755)
            self.paths.temp_dir.chmod(0o755)

    def _write_auth_files(self, cfg: ProxyConfig) -> dict[str, str]:
        """Write each basic auth file the config names that is not there yet, atomically:
        readable by nginx's workers only (they read it on every request)."""
        try:
            files = auth_files(cfg)
        except ValueError as exc:
            raise ProxyConfigError(f"cannot render nginx config: {exc}") from exc
        if not files:
            return files
        directory = self.conf_dir / AUTH_DIR
        directory.mkdir(mode=0o750, exist_ok=True)
        gid = grp.getgrnam(self.paths.worker_group).gr_gid if self.paths.worker_group else -1
        if gid != -1:
            os.chown(directory, -1, gid)
        for name, content in files.items():
            path = directory / name
            with contextlib.suppress(FileNotFoundError):
                if path.read_text() == content:
                    continue
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".auth.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as tmp:
                    tmp.write(content)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                if gid != -1:
                    os.chown(tmp_name, -1, gid)
                os.chmod(tmp_name, 0o640)
                os.replace(tmp_name, path)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        return files

    def _prune_auth_files(self, keep: set[str]) -> None:
        """Remove the users files no live config names any more (after a reload)."""
        directory = self.conf_dir / AUTH_DIR
        if not directory.is_dir():
            return
        for path in directory.iterdir():
            if AUTH_FILE_NAME.fullmatch(path.name) and path.name not in keep:
                path.unlink(missing_ok=True)

    def _live_text(self) -> str | None:
        try:
            return self.conf_path.read_text()
        except FileNotFoundError:
            return None

    def _install(self, text: str) -> None:
        """Write ``text`` beside nginx.conf, have nginx check it, then atomically move it
        into place. On rejection the temp file is removed and nginx.conf is untouched."""
        tmp_path = self._write_temp(text)
        try:
            self._test_config(tmp_path)
            os.replace(tmp_path, self.conf_path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise

    def _reload_while_checking(self, text: str, live: str, master: int) -> None:
        """Install ``text`` and signal the master at once, with ``nginx -t`` of the same text
        running meanwhile (its few to tens of milliseconds are not waited for before the
        reload goes live). Rejected: the old file is put back and loaded again, then this
        raises."""
        new = self._write_temp(text)
        # nginx -t reads its own name for the same file: the rename below cannot pull it away.
        check = new.with_name(new.name + ".check")
        old: set[int] | None = None
        try:
            os.link(new, check)
            checking = self._spawn_nginx("-t", "-q", "-c", str(check), "-p", f"{self.conf_dir}/")
            try:
                os.replace(new, self.conf_path)
                old = _workers_of(master)
                try:
                    os.kill(master, signal.SIGHUP)
                    self.reload_count += 1
                except ProcessLookupError:
                    old = None  # the master died meanwhile: started below once checked
                else:
                    # New workers exist only once the master's own checks passed (the same as
                    # nginx -t's); a rejection by nginx -t ends the wait for them.
                    _retire_old_workers(
                        master, old, rejected=lambda: checking.poll() not in (None, 0)
                    )
            finally:
                returncode, errors = _collect(checking)
        finally:
            check.unlink(missing_ok=True)
            new.unlink(missing_ok=True)  # still there only when the rename failed
        if returncode != 0:
            self._replace_live(live)
            if self.pid() is not None:
                self.reload()  # the master refused the new file; this one it had running
            raise ProxyConfigError("nginx rejected the configuration: " + errors.strip())
        if old is None:
            self._start()

    def _write_temp(self, text: str) -> Path:
        fd, tmp_name = tempfile.mkstemp(dir=self.conf_dir, prefix=".nginx.conf.", suffix=".tmp")
        tmp_path = Path(tmp_name)
        try:
            with os.fdopen(fd, "w") as tmp:
                tmp.write(text)
                tmp.flush()
                os.fsync(tmp.fileno())
            tmp_path.chmod(0o644)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        return tmp_path

    def _replace_live(self, text: str) -> None:
        tmp_path = self._write_temp(text)
        try:
            os.replace(tmp_path, self.conf_path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise

    def _spawn_nginx(self, *args: str) -> subprocess.Popen[str]:
        try:
            return subprocess.Popen(
                [self.nginx_binary, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except FileNotFoundError as exc:
            raise ProxyConfigError(f"nginx binary not found: {self.nginx_binary}") from exc

    def _test_config(self, conf: Path) -> None:
        result = self._run_nginx("-t", "-q", "-c", str(conf), "-p", f"{self.conf_dir}/")
        if result.returncode != 0:
            raise ProxyConfigError(
                "nginx rejected the configuration: " + result.stderr.strip(),
            )

    def _start_if_stopped(self) -> None:
        if self.pid() is None:
            self._start()

    def _start(self) -> int:
        self._stop_orphaned_workers()
        if self.paths.control_socket is not None:
            # A killed master leaves its socket file behind, and nginx would not bind over it.
            self.paths.control_socket.unlink(missing_ok=True)
        result = self._run_nginx("-c", str(self.conf_path), "-p", f"{self.conf_dir}/")
        if result.returncode != 0:
            raise ProxyConfigError("nginx failed to start: " + result.stderr.strip())
        # The launching process exits right after forking the daemon; the daemon writes
        # the pid file a moment later.
        if not _wait_until(self.is_running, _START_TIMEOUT):
            raise ProxyConfigError(
                f"nginx did not come up; see {self.paths.error_log}",
            )
        pid = self.pid()
        assert pid is not None
        log.info("started nginx master %d for %s", pid, self.conf_dir)
        if self.paths.control_socket is not None:
            # Only Berth (nginx's own user) may set instances: nobody else on the machine may
            # connect to the socket (a reload inherits it, so this holds until the next start).
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self.paths.control_socket, 0o600)
        if self._peers is not None:
            self._push_peers(self._peers)  # a new master's dictionary starts empty
        return pid

    def _stop_orphaned_workers(self) -> None:
        """Workers outlive a master that was killed (SIGKILL, OOM) and keep holding the listen
        socket, so a new master could never bind it. Stop them before starting one."""
        orphans = _orphaned_workers(self.listen_host, self.listen_port)
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if _wait_until(lambda: not any(_cmdline(str(p)) for p in orphans), 5):
                break
        if orphans:
            log.warning("stopped nginx workers %s left behind by a dead master", orphans)

    def _run_nginx(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.nginx_binary, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_COMMAND_TIMEOUT,
                check=False,
            )
        except FileNotFoundError as exc:
            raise ProxyConfigError(f"nginx binary not found: {self.nginx_binary}") from exc
        except subprocess.TimeoutExpired as exc:
            raise ProxyConfigError(f"nginx {' '.join(args)} timed out") from exc

    def _is_our_master(self, pid: int) -> bool:
        """True when ``pid`` is a live nginx master started on this directory's nginx.conf.
        The command line check guards against a stale pid file naming a recycled pid,
        and against zombies (whose command line is empty)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        title = cmdline.replace(b"\0", b" ").decode(errors="replace")
        return "nginx: master process" in title and str(self.conf_path) in title

    def _probe_address(self) -> str:
        host = ipaddress.ip_address(self.listen_host)
        if host.is_unspecified:
            host = ipaddress.ip_address("::1" if host.version == 6 else "127.0.0.1")
        if host.version == 6:
            return f"[{host.compressed}]:{self.listen_port}"
        return f"{host.compressed}:{self.listen_port}"

    @staticmethod
    def _read_generation(client: httpx.Client, url: str) -> int | None:
        try:
            response = client.get(url, headers={"Host": PROBE_HOST})
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            return int(response.text.strip())
        except ValueError:
            return None


def _collect(process: subprocess.Popen[str]) -> tuple[int, str]:
    """The exit code and error output of an ``nginx -t``; a hung one counts as a rejection."""
    try:
        _, errors = process.communicate(timeout=_COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return 1, f"nginx -t timed out after {_COMMAND_TIMEOUT:.0f}s"
    return process.returncode, errors or ""


def _workers_of(master: int) -> set[int]:
    """The master's serving workers: a forked child takes the worker title once it is set up
    (its listening sockets in its event loop), so a new one counts only when it can accept; a
    stopping one is titled "... is shutting down"."""
    return {p for p in children(master) if _cmdline(str(p)).strip() == _WORKER_TITLE}


def _retire_old_workers(
    master: int, old: set[int], rejected: Callable[[], bool] = lambda: False
) -> None:
    """After a SIGHUP: once as many new workers as old ones are up, stop the old ones
    gracefully now rather than after the master's 100 ms pause. Nothing happens when no new
    workers come (the master kept the old config) or the old ones are already stopping."""
    if not old:
        return
    deadline = time.monotonic() + _NEW_WORKERS_TIMEOUT
    while True:
        workers = _workers_of(master)
        if not workers & old:
            return  # the master already asked them (its pause is over)
        if len(workers - old) >= len(old):
            break
        if rejected():
            return
        if time.monotonic() >= deadline:
            log.warning("nginx started no new workers after a reload (see its error log)")
            return
        time.sleep(0.002)
    for pid in workers & old:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)


def _worker_identity() -> tuple[str | None, str | None]:
    """As root, workers must drop to an unprivileged user; otherwise nginx cannot switch
    users and the ``user`` directive must be left out."""
    if os.geteuid() != 0:
        return None, None
    for group in ("nogroup", "nobody"):
        try:
            grp.getgrnam(group)
        except KeyError:
            continue
        return "nobody", group
    return "nobody", "nobody"


def _orphaned_workers(host: str, port: int) -> list[int]:
    """nginx workers listening on ``host:port`` whose master is gone (it was killed)."""
    want = ipaddress.ip_address(host)
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                addr_hex, _, port_hex = fields[1].partition(":")
                raw = bytes.fromhex(addr_hex)
                # The kernel prints each 32-bit word in host (little-endian) order.
                addr = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                listening = fields[3] == "0A" and int(port_hex, 16) == port
                if listening and ipaddress.ip_address(addr) == want:
                    inodes.add(fields[9])
    if not inodes:
        return []
    sockets = {f"socket:[{inode}]" for inode in inodes}
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not _cmdline(proc.name).startswith("nginx: worker"):
                continue
            parent = Path(f"/proc/{proc.name}/stat").read_text().rpartition(")")[2].split()[1]
            if _cmdline(parent).startswith("nginx: master"):
                continue  # a live master's worker is not an orphan
            if any(os.readlink(fd) in sockets for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _cmdline(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
