"""Berth's own registry process: ``docker-registry serve CONFIG``, supervised.

It runs in a session of its own, so it keeps serving the nodes' pulls while Berth is stopped,
restarting or killed; a new ``RegistryServer`` on the same directory adopts it (its pid file
names a live ``docker-registry serve`` of this directory's config) and never restarts it.
``ensure_running()`` starts it when it is not running or died, and waits until ``/v2/``
answers 200 (the registry answers 503 while its storage health check fails).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import httpx

from berth.errors import BerthError
from berth.registry.config import Listen, RegistryConfig, parse_listen, parse_tls, render_config
from berth.settings import Settings

log = logging.getLogger(__name__)

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_GC_TIMEOUT = 600.0
_LOG_TAIL = 2000


class RegistryError(BerthError):
    """The platform registry cannot be started, reached or collected."""

    status = 503
    code = "registry_unavailable"


USERNAME = "berth"
# The registry checks the bcrypt hash on every request; the password is 32 random bytes, so a
# low cost loses nothing against guessing and keeps pushes (hundreds of requests) fast.
_BCRYPT_COST = 5


@dataclass(frozen=True)
class RegistryCredentials:
    username: str
    password: str = field(repr=False)

    @property
    def auth_config(self) -> dict[str, str]:
        """docker-py's ``auth_config`` (push, pull, and Swarm's service create/update)."""
        return {"username": self.username, "password": self.password}


class RegistryServer:
    """Write the config, start, adopt, restart and stop the platform registry."""

    def __init__(self, settings: Settings) -> None:
        self.binary = settings.registry_binary
        self.listen: Listen = parse_listen(settings.registry_listen)
        self.tls = parse_tls(
            settings.registry_tls_cert, settings.registry_tls_key, settings.registry_tls_ca
        )
        self.dir = Path(settings.registry_dir).resolve()
        self.storage_dir = self.dir / "storage"
        self.config_path = self.dir / "config.yml"
        self.pid_path = self.dir / "registry.pid"
        self.log_path = self.dir / "registry.log"
        self.htpasswd_path = self.dir / "htpasswd"
        self.credentials_path = self.dir / "credentials"
        self.auth = settings.registry_auth == "on" or (
            settings.registry_auth == "auto" and not self.listen.is_loopback
        )
        if self.auth and not self.tls and not self.listen.is_loopback:
            log.warning(
                "the platform registry on %s takes credentials over plain HTTP: give it a "
                "certificate (BERTH_REGISTRY_TLS_CERT/_KEY) on a network others share",
                self.listen.address,
            )
        if not self.auth and not self.listen.is_loopback:
            log.warning(
                "the platform registry listens on %s without authentication: make sure no "
                "tenant container can reach it (BERTH_EGRESS_BLOCKED_RANGES)",
                self.listen.address,
            )
        self.start_count = 0
        self._credentials: RegistryCredentials | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._read_only = False
        # Serialises start/stop/mode changes between the supervisor and direct callers.
        self._lock = threading.RLock()

    @property
    def address(self) -> str:
        """``host:port``: the host part of every reference pushed to this registry."""
        return self.listen.address

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's ``verify`` for this registry: its CA under TLS."""
        return ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else True

    @property
    def credentials(self) -> RegistryCredentials | None:
        """Berth's account on its registry (created on first use), None without auth."""
        if not self.auth:
            return None
        if self._credentials is not None:
            return self._credentials
        try:
            username, _, password = self.credentials_path.read_text().strip().partition(":")
        except FileNotFoundError:
            username = password = ""
        if not username or not password:  # none yet, or a truncated file: a new account
            self.dir.mkdir(parents=True, exist_ok=True)
            username, password = USERNAME, secrets.token_hex(32)
            _write_private(self.credentials_path, f"{username}:{password}\n")
        if not self._htpasswd_matches(username, password):
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(_BCRYPT_COST)).decode()
            _write_private(self.htpasswd_path, f"{username}:{hashed}\n")
        self._credentials = RegistryCredentials(username, password)
        return self._credentials

    @property
    def auth_config(self) -> dict[str, str] | None:
        credentials = self.credentials
        return credentials.auth_config if credentials else None

    # -- process control -------------------------------------------------------------------

    def ensure_running(self) -> int:
        """Adopt the live registry of this directory, else start one. Returns its pid."""
        with self._lock:
            pid = self.pid()
            if pid is not None and self._answers() and self._live_config_is_current():
                return pid
            if pid is not None:
                # Wedged, its storage check fails, or it runs an old config (a server killed
                # mid-collection leaves it read-only): start afresh.
                log.warning("registry %d on %s is not as wanted; restarting it", pid, self.url)
                self._stop_pid(pid)
            return self._start()

    def pid(self) -> int | None:
        """The pid of the live registry serving this directory's config, if there is one."""
        if self._child is not None:
            self._child.poll()  # reaps it if it died, so its pid no longer looks alive
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def stop(self) -> None:
        with self._lock:
            pid = self.pid()
            if pid is not None:
                self._stop_pid(pid)
            self.pid_path.unlink(missing_ok=True)

    def set_read_only(self, read_only: bool) -> None:
        """Restart in (or out of) read-only mode: pulls keep working, pushes and deletes get
        405. The registry reads its config only at start, hence the restart."""
        with self._lock:
            if read_only == self._read_only and self.is_running():
                return
            self._read_only = read_only
            pid = self.pid()
            if pid is not None:
                self._stop_pid(pid)
            self._start()

    def garbage_collect(self) -> str:
        """``docker-registry garbage-collect CONFIG`` while the registry serves read-only, so no
        push can upload a blob the collector is about to delete. Returns its output."""
        with self._lock:
            self.set_read_only(True)
            try:
                result = subprocess.run(
                    [self.binary, "garbage-collect", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=_GC_TIMEOUT,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RegistryError(f"registry garbage-collect failed: {exc}") from exc
            finally:
                self.set_read_only(False)
            if result.returncode != 0:
                raise RegistryError(
                    "registry garbage-collect failed: " + _tail(result.stderr or result.stdout)
                )
            return result.stdout + result.stderr

    # -- internals -------------------------------------------------------------------------

    def _config_text(self) -> str:
        secret_path = self.dir / "http-secret"
        if not secret_path.exists():
            _write_private(secret_path, secrets.token_hex(32))
        cfg = RegistryConfig(
            storage_dir=self.storage_dir,
            listen=self.listen,
            http_secret=secret_path.read_text().strip(),
            read_only=self._read_only,
            htpasswd=self.htpasswd_path if self.auth else None,
            tls=self.tls,
        )
        return render_config(cfg)

    def _htpasswd_matches(self, username: str, password: str) -> bool:
        try:
            line = self.htpasswd_path.read_text().strip()
        except OSError:
            return False
        name, _, hashed = line.partition(":")
        try:
            return name == username and bcrypt.checkpw(password.encode(), hashed.encode())
        except ValueError:
            return False

    def _live_config_is_current(self) -> bool:
        try:
            return self.config_path.read_text() == self._config_text()
        except OSError:
            return False

    def _write_config(self) -> None:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        _ = self.credentials  # the htpasswd file exists before the registry reads it
        _write_private(self.config_path, self._config_text())

    def _start(self) -> int:
        if self._answers():
            # Not ours (ours would have been adopted): another installation's registry. Pushing
            # there, or collecting its garbage, would mix two installations' images.
            raise RegistryError(
                f"{self.url} already answers and is not this installation's registry: "
                "set BERTH_REGISTRY_LISTEN to an address of its own"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with open(self.log_path, "ab") as out:
            try:
                child = subprocess.Popen(
                    [self.binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives Berth, as nginx does
                    close_fds=True,
                )
            except OSError as exc:
                raise RegistryError(f"cannot run {self.binary}: {exc}") from exc
        self._child = child
        _write_private(self.pid_path, f"{child.pid}\n")
        self.start_count += 1
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._answers():
            if child.poll() is not None:
                raise RegistryError(
                    f"registry exited with {child.returncode} at start: {self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                self._stop_pid(child.pid)
                raise RegistryError(f"registry did not answer on {self.url}: {self._log_tail()}")
            time.sleep(0.02)
        if child.poll() is not None:  # it answered, yet ours is gone: someone else answered
            raise RegistryError(f"registry exited with {child.returncode}: {self._log_tail()}")
        log.info("started registry %d on %s (%s)", child.pid, self.url, self.dir)
        return child.pid

    def _stop_pid(self, pid: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_until(lambda: not self._alive(pid), _STOP_TIMEOUT):
                return
            log.warning("registry %d ignored %s", pid, sig.name)

    def _alive(self, pid: int) -> bool:
        if self._child is not None and self._child.pid == pid:
            return self._child.poll() is None
        return self._is_ours(pid)

    def _is_ours(self, pid: int) -> bool:
        """A live ``docker-registry serve`` of this directory's config. The command line check
        guards against a recycled pid and against zombies (whose command line is empty)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return len(argv) >= 3 and argv[1] == b"serve" and argv[2] == str(self.config_path).encode()

    def _answers(self) -> bool:
        credentials = self.credentials
        auth = (credentials.username, credentials.password) if credentials else None
        try:
            with httpx.Client(
                timeout=1.0, trust_env=False, auth=auth, verify=self.verify
            ) as client:
                return client.get(f"{self.url}/v2/").status_code == 200
        except httpx.HTTPError:
            return False

    def _log_tail(self) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return "(no log)"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only (the config holds the
    upload secret)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tail(text: str) -> str:
    text = text.strip()
    return text[-_LOG_TAIL:] if text else "(no output)"


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
