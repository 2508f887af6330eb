"""Real database servers from the distro, started by the tests as their own processes: each in
a temporary directory, on 127.0.0.1 and a free port, with an admin account of its own, and
stopped and removed on exit even when a test failed."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN = "berthadmin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _require(path: str, package: str) -> str:
    found = shutil.which(path) or (path if Path(path).exists() else None)
    if not found:
        raise RuntimeError(
            f"{path} is missing: install {package} (scripts/ensure-system.sh --with-postgres)"
        )
    return found


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not become ready in 60 s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def postgres_server(host: str = "127.0.0.1") -> Iterator[str]:
    """A PostgreSQL 15 cluster of its own (initdb + postgres), run as the ``postgres`` user when
    the tests run as root (postgres refuses root), password authentication only. Yields the
    admin's URL. ``host``: the address it listens on (another than loopback: every client
    address may try a password, as on a real shared server)."""
    initdb = _require(str(PG_BIN / "initdb"), "postgresql")
    postgres = _require(str(PG_BIN / "postgres"), "postgresql")
    root = Path(tempfile.mkdtemp(prefix="berth-pg-"))
    user = "postgres" if os.geteuid() == 0 else None
    proc: subprocess.Popen[bytes] | None = None
    try:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        password = secrets.token_hex(16)
        pwfile = root / "pw"
        pwfile.write_text(password)
        if user is not None:
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        data, log, port = root / "data", root / "log", free_port()
        subprocess.run(
            [initdb, "-D", str(data), "-U", ADMIN, f"--pwfile={pwfile}", "--auth=scram-sha-256",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            user=user, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        if host != "127.0.0.1":
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [postgres, "-D", str(data), "-c", f"port={port}",
                 "-c", f"listen_addresses={host}", "-c", f"unix_socket_directories={root}",
                 "-c", "fsync=off", "-c", "max_connections=60", "-c", "shared_buffers=16MB"],
                user=user, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"postgresql://{ADMIN}:{password}@{host}:{port}/postgres"

        def ready() -> bool:
            import psycopg

            try:
                psycopg.connect(url, connect_timeout=2).close()
            except psycopg.OperationalError:
                return False
            return True

        _wait(ready, proc, log, "postgres")
        yield url
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)  # fast shutdown: ends the sessions left open
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def redis_server(root: Path | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """redis-server without data persistence, protected mode on, its users in an ACL file (the
    ``default`` user off, an admin with a password). Yields the admin's URL.

    Given ``root``, it runs there and leaves it (users file included) for a later start on the
    same directory: a restart."""
    binary = _require("redis-server", "redis-server")
    owned = root is None
    root = Path(tempfile.mkdtemp(prefix="berth-redis-")) if root is None else root
    proc: subprocess.Popen[bytes] | None = None
    try:
        port, log = free_port(), root / "log"
        secret, users = root / "admin-password", root / "users.acl"
        if not users.exists():
            secret.write_text(secrets.token_hex(16))
            users.write_text(
                f"user default off\nuser {ADMIN} on >{secret.read_text()} ~* &* +@all\n"
            )
            users.chmod(0o600)
        password = secret.read_text()
        conf = root / "redis.conf"
        conf.write_text(
            f'port {port}\nbind {host}\nprotected-mode yes\nsave ""\nappendonly no\n'
            f"dir {root}\ndaemonize no\naclfile {users}\n"
        )
        conf.chmod(0o600)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, str(conf)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        url = f"redis://{ADMIN}:{password}@{host}:{port}/0"

        def ready() -> bool:
            import redis

            try:
                return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
            except redis.RedisError:
                return False

        _wait(ready, proc, log, "redis-server")
        yield url
    finally:
        if proc is not None:
            _stop(proc, signal.SIGTERM)
        if owned:
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def mariadb_server(host: str = "127.0.0.1") -> Iterator[str]:
    """mariadbd with a data directory of its own (mariadb-install-db), TCP on 127.0.0.1 and its
    socket in the temporary directory; an admin user made by an init file. Yields its URL."""
    install = _require("mariadb-install-db", "mariadb-server")
    binary = _require("mariadbd", "mariadb-server")
    root = Path(tempfile.mkdtemp(prefix="berth-mariadb-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        password, port, log = secrets.token_hex(16), free_port(), root / "log"
        data = root / "data"
        subprocess.run(
            [install, "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        init = root / "init.sql"
        init.write_text(
            f"CREATE USER IF NOT EXISTS '{ADMIN}'@'{host}' IDENTIFIED BY '{password}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN}'@'{host}' WITH GRANT OPTION;\n"
        )
        init.chmod(0o600)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, "--no-defaults", f"--datadir={data}", "--user=root",
                 "--skip-networking=0", f"--bind-address={host}", f"--port={port}",
                 f"--socket={root / 'sock'}", f"--pid-file={root / 'pid'}",
                 f"--init-file={init}", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
                 "--innodb-flush-log-at-trx-commit=0", "--max-connections=100",
                 f"--tmpdir={root}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"mysql://{ADMIN}:{password}@{host}:{port}/"

        def ready() -> bool:
            import pymysql

            try:
                pymysql.connect(
                    host=host, port=port, user=ADMIN, password=password, connect_timeout=2
                ).close()
            except pymysql.MySQLError:
                return False
            return True

        _wait(ready, proc, log, "mariadbd")
        yield url
    finally:
        if proc is not None:
            _stop(proc, signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)
