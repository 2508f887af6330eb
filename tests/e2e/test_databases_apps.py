"""An app attached to managed databases, end to end: a real Berth server (local backend, egress
filter on), the distro's PostgreSQL, MariaDB and Redis on an address of this machine that is
not loopback (a dummy interface the test owns, as a provider's database machine would be), and
an app built by Berth whose instances connect through the URLs `db attach` put in their config.

- Each engine answers the app's instances through the injected URL: they reach the servers
  only because the tenant has a database there (the egress filter's rule).
- `db rotate` of each one under constant load through the ingress: the new URL arrives in a
  new release, start-first, and no request fails. Every request uses each engine twice: on the
  connection the app keeps (as a pool does) and on a NEW connection opened for that request,
  which must log in: the old credential stays valid until every instance serves the new URL,
  the new one is valid before any instance has it.
- Then the old credentials are revoked (`db info`: revoked at ...), still under load, and
  connect no more; the app keeps working with the new ones.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.databases.servers import mariadb_server, postgres_server, redis_server
from tests.harness import BerthServer, ClientLoop, running_server, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

APP = "dbclient"
SITE = Path(__file__).resolve().parents[2] / ".venv" / "lib" / "python3.11" / "site-packages"
# What the app imports, copied from Berth's own virtualenv into the build context (the image
# has Python only): psycopg with its binary build (libpq inside), PyMySQL.
PACKAGES = ("psycopg", "psycopg_binary", "psycopg_binary.libs", "pymysql", "typing_extensions.py")

APP_SOURCE = r"""
import os, socket, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import psycopg, pymysql

LOCK = threading.Lock()
CONNS = {}


def pg():
    conn = CONNS.get("pg")
    if conn is None or conn.closed:
        conn = CONNS["pg"] = psycopg.connect(os.environ["PG_URL"], autocommit=True,
                                             connect_timeout=5)
        conn.execute("CREATE TABLE IF NOT EXISTS hits (n int)")
    conn.execute("INSERT INTO hits VALUES (1)")
    return conn.execute("SELECT count(*) FROM hits").fetchone()[0]


def my():
    conn = CONNS.get("my")
    if conn is None or not conn.open:
        u = urlsplit(os.environ["MYSQL_URL"])
        conn = CONNS["my"] = pymysql.connect(
            host=u.hostname, port=u.port, user=unquote(u.username), connect_timeout=5,
            password=unquote(u.password), database=u.path.lstrip("/"), autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS hits (n int)")
    with conn.cursor() as cur:
        cur.execute("INSERT INTO hits VALUES (1)")
        cur.execute("SELECT count(*) FROM hits")
        return cur.fetchone()[0]


def rd():
    conn = CONNS.get("rd")
    if conn is None:
        u = urlsplit(os.environ["REDIS_URL"])
        conn = socket.create_connection((u.hostname, u.port), timeout=5)
        conn.sendall(f"AUTH {unquote(u.username)} {unquote(u.password)}\r\n".encode())
        if not conn.recv(64).startswith(b"+OK"):
            raise RuntimeError("redis refused the URL's credentials")
        CONNS["rd"] = conn
    conn.sendall(f"INCR {os.environ['REDIS_KEY_PREFIX']}hits\r\n".encode())
    answer = conn.recv(64)
    if not answer.startswith(b":"):
        raise RuntimeError(f"redis answered {answer!r}")
    return int(answer[1:].strip())


def pg_fresh():
    with psycopg.connect(os.environ["PG_URL"], autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM hits").fetchone()[0]


def my_fresh():
    u = urlsplit(os.environ["MYSQL_URL"])
    conn = pymysql.connect(
        host=u.hostname, port=u.port, user=unquote(u.username), connect_timeout=5,
        password=unquote(u.password), database=u.path.lstrip("/"), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM hits")
            return cur.fetchone()[0]
    finally:
        conn.close()


def rd_fresh():
    u = urlsplit(os.environ["REDIS_URL"])
    with socket.create_connection((u.hostname, u.port), timeout=5) as conn:
        conn.sendall(f"AUTH {unquote(u.username)} {unquote(u.password)}\r\n".encode())
        if not conn.recv(64).startswith(b"+OK"):
            raise RuntimeError("redis refused the URL's credentials on a new connection")
        conn.sendall(f"GET {os.environ['REDIS_KEY_PREFIX']}hits\r\n".encode())
        return int(conn.recv(64).split(b"\r\n")[1] or 0)


def check(name, call):
    try:
        return call()
    except Exception:
        CONNS.pop(name, None)  # a broken connection: open a new one, once
        return call()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, "ok")
        try:
            with LOCK:
                counts = [check("pg", pg), check("my", my), check("rd", rd)]
            # New connections, no second try: each must log in with the URL this instance has.
            fresh = [pg_fresh(), my_fresh(), rd_fresh()]
        except Exception as exc:
            return self.reply(500, f"{type(exc).__name__}: {exc}")
        self.reply(200, "pg=%d my=%d rd=%d fresh=%d,%d,%d" % tuple(counts + fresh))

    def reply(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
"""
DOCKERFILE = """FROM berth/python:3
COPY site/ /app/site/
COPY app.py /app/app.py
ENV PORT=8080 PYTHONPATH=/app/site
EXPOSE 8080
CMD ["python3", "-u", "/app/app.py"]
"""


def sh(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


@contextlib.contextmanager
def database_address() -> Iterator[str]:
    """An address of this machine, not loopback, of the test's own: on the host's end of a veth
    pair whose other end is in a namespace of the test's own (this kernel has no dummy links).
    Tenant containers reach it only through the host (the egress filter's INPUT rules)."""
    tag = secrets.token_hex(3)
    netns, host_end, ns_end = f"berth-dbaddr-{tag}", f"bdh{tag}", f"bdn{tag}"
    address = f"10.231.{random.randrange(0, 256)}.{random.randrange(1, 255)}"
    sh("ip", "netns", "add", netns)
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", netns)
        sh("ip", "-n", netns, "link", "set", ns_end, "up")
        sh("ip", "addr", "add", f"{address}/32", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        assert sh("ip", "route", "get", address).startswith("local"), address
        yield address
    finally:
        subprocess.run(["ip", "link", "del", host_end], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


@dataclass
class World:
    server: BerthServer
    servers: dict[str, str]  # engine -> admin URL


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with (
        database_address() as address,
        postgres_server(host=address) as pg,
        mariadb_server(host=address) as my,
        redis_server(host=address) as rd,
        running_server() as server,
    ):
        urls = {"postgres": pg, "mariadb": my, "redis": rd}
        for engine, url in urls.items():
            server.api_json(
                "POST",
                "/admin/db-servers",
                json={"name": f"{engine}1", "engine": engine, "url": url},
            )
        yield World(server, urls)


def _app_dir(tmp: Path) -> Path:
    site = tmp / "site"
    site.mkdir(parents=True)
    for name in PACKAGES:
        source = SITE / name
        assert source.exists(), f"{source} is missing from the virtualenv"
        if source.is_dir():
            shutil.copytree(source, site / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, site / name)
    (tmp / "app.py").write_text(APP_SOURCE)
    (tmp / "Dockerfile").write_text(DOCKERFILE)
    return tmp


def _wait_deployed(server: BerthServer, release: dict[str, Any]) -> None:
    deployment = release["deployment"]
    assert deployment is not None, release

    def done() -> bool:
        status = server.api_json("GET", f"/apps/{APP}/deployments/{deployment['id']}")["status"]
        assert status not in ("failed", "cancelled"), status
        return bool(status == "succeeded")

    wait_until(done, 120, f"deployment {deployment['id']} succeeded")


def _check(server: BerthServer) -> str:
    resp = server.ingress_get(server.host_of(APP), "/check")
    assert resp.status_code == 200, resp.text
    return resp.text


def test_an_attached_app_works_through_its_urls_and_across_rotations(
    world: World, tmp_path: Path
) -> None:
    server = world.server
    server.create_app(APP, "--memory", "128M", "--health-path", "/healthz")
    server.cli_ok("scale", APP, "2")
    out = server.deploy_dir(APP, _app_dir(tmp_path / "app"))
    assert out["deployment"]["status"] == "succeeded", out
    for db, engine, var in (("pgdb", "postgres", "PG_URL"), ("mydb", "mariadb", "MYSQL_URL"),
                            ("rdb", "redis", "REDIS_URL")):  # fmt: skip
        server.cli_json("db", "create", db, "--engine", engine)
        _wait_deployed(server, server.cli_json("db", "attach", APP, db, "--as", var))
    server.wait_converged(APP, 2, timeout=90)
    first = _check(server)
    assert first.startswith("pg=") and " my=" in first and " rd=" in first, first

    old = {db: server.cli_json("db", "credentials", db)["url"] for db in ("pgdb", "mydb", "rdb")}
    with ClientLoop(server, server.host_of(APP), "/check", max_seconds=240) as load:
        load.wait_for_requests(20)
        for db in ("pgdb", "mydb", "rdb"):
            rotated = server.cli_json("db", "rotate", db)
            (release,) = rotated["releases"]
            _wait_deployed(server, release)
            server.wait_converged(APP, 2, timeout=90)
            time.sleep(1)  # requests on the new release's instances too
        # The old credentials go once the old instances are gone, while the load goes on.
        for db in ("pgdb", "mydb", "rdb"):
            wait_until(
                lambda db=db: server.cli_json("db", "info", db)["old_credential"] == "revoked",
                120,
                f"{db}'s old credential revoked",
            )
        revoked_at = load.result.ok
        time.sleep(2)  # requests after the revocations too
    result = load.stop()
    print(
        f"3 rotations under load, per-request connections to every engine: {result.ok} "
        f"requests ({revoked_at} before the last revocation), {len(result.failures)} failed"
    )
    assert result.ok > 50, result.ok
    assert result.failures == [], result.failures[:5]
    info = server.cli_ok("db", "info", "pgdb").stdout
    assert "revoked at" in info, info
    # Every request reached all three databases: the counts only grew.
    assert _check(server) != first

    new = {db: server.cli_json("db", "credentials", db)["url"] for db in old}
    for db in old:
        assert urlsplit(new[db]).password != urlsplit(old[db]).password, db
    _refused_with(old)


def _refused_with(old: dict[str, str]) -> None:
    """The passwords before the rotation connect no more (asked from this machine)."""
    import psycopg
    import pymysql
    import redis

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(old["pgdb"], connect_timeout=5).close()
    u = urlsplit(old["mydb"])
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host=u.hostname, port=u.port, user=u.username, password=u.password,
                        connect_timeout=5).close()  # fmt: skip
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(old["rdb"], socket_timeout=5).ping()
