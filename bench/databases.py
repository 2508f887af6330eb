"""Benchmark: managed databases on shared servers, beside doing the same by hand or dedicated.

Real servers from the distro (tests/databases/servers.py: PostgreSQL 15, MariaDB 10.11, Redis 7,
each in a temporary directory on 127.0.0.1, stopped and removed on exit even on failure).

1. Provisioning latency per engine: a tenant's ``POST /databases`` (what ``berth db create``
   sends) on Berth's real API app over a real store (SQLite) with the real providers, then
   ``GET /databases/NAME/credentials`` and a first query with them (``SELECT 1``; Redis: a
   ``SET`` under the key prefix). Beside it: the same made by hand as the admin with the
   engine's client library (psycopg: ``CREATE ROLE ... LOGIN PASSWORD``, ``CREATE DATABASE ...
   OWNER``; pymysql: ``CREATE DATABASE``, ``CREATE USER``, ``GRANT``; redis-py: ``ACL SETUSER``)
   then the same first query. Median of ``--repeat`` (5), min-max.
2. ``--count`` (1,000) empty tenant databases on one shared PostgreSQL and one MariaDB, made by
   Berth's providers (the statements ``db create`` sends): the server's memory (RSS and PSS of
   its processes, from /proc) and disk (blocks of its data directory) before and after; the
   cost of an idle connection (50 tenants each open one, ``SELECT 1``, stay idle: the memory
   delta / 50). Beside: ``--dedicated`` (10) dedicated servers per engine, started as processes
   with the same binaries and settings, measured, and scaled linearly to ``--count`` (said to be
   an extrapolation).

Prints a table and writes bench/results/databases.json. Traffic only to loopback.

    python bench/databases.py [--count N] [--dedicated K] [--repeat R] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

import psycopg  # noqa: E402
import pymysql  # noqa: E402
import redis  # noqa: E402
from argon2 import PasswordHasher  # noqa: E402
from psycopg import sql  # noqa: E402
from tests.api.conftest import Env, build_env  # noqa: E402
from tests.databases import servers  # noqa: E402

from bench.db.figures import human, ms_range, per_item, scaled, summary, table  # noqa: E402
from bench.db.procfs import Memory, dir_bytes, tree_memory  # noqa: E402
from berth.databases.names import Engine  # noqa: E402
from berth.databases.provider import Account, Credentials, Provider  # noqa: E402
from berth.databases.providers import provider_for  # noqa: E402
from berth.services import accounts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "databases.json"
ENGINES: tuple[Engine, ...] = ("postgres", "mariadb", "redis")
SHARED: tuple[Engine, ...] = ("postgres", "mariadb")
IDLE_CONNECTIONS = 50  # below the test servers' max_connections (60 and 100)
TIMEOUT = 30  # seconds, for every connect and query of the benchmark's own clients
SETTLE = 1.0  # seconds for new backends/threads to reach their idle footprint


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # so every server and temporary directory is removed


# -- the engines' clients -----------------------------------------------------------------


def _maria_parts(url: str) -> dict[str, Any]:
    p = urlsplit(url)
    return {
        "host": p.hostname,
        "port": p.port or 3306,
        "user": unquote(p.username or ""),
        "password": unquote(p.password or ""),
        "connect_timeout": TIMEOUT,
        "read_timeout": TIMEOUT,
        "write_timeout": TIMEOUT,
        "autocommit": True,
    }


def first_query(engine: Engine, creds: dict[str, Any]) -> None:
    """The tenant's first successful query with the credentials it was given."""
    if engine == "postgres":
        with psycopg.connect(creds["url"], connect_timeout=TIMEOUT) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    elif engine == "mariadb":
        conn = pymysql.connect(
            host=creds["host"], port=creds["port"], user=creds["username"],
            password=creds["password"], database=creds["database"], connect_timeout=TIMEOUT,
            read_timeout=TIMEOUT,
        )  # fmt: skip
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
        finally:
            conn.close()
    else:
        client = redis.Redis.from_url(creds["url"], socket_timeout=TIMEOUT)
        try:
            assert client.set(f"{creds['key_prefix']}first", "1")
        finally:
            client.close()


def by_hand(engine: Engine, admin_url: str) -> Callable[[], None]:
    """The same database made by hand as the admin with the engine's client, then queried;
    returns how to remove it."""
    tag = secrets.token_hex(6)
    user, db, password = f"hand_u{tag}", f"hand_d{tag}", secrets.token_hex(16)
    if engine == "postgres":
        with psycopg.connect(admin_url, connect_timeout=TIMEOUT, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(db), sql.Identifier(user)
                )
            )
        p = urlsplit(admin_url)
        first_query(engine, {"url": f"postgresql://{user}:{password}@{p.hostname}:{p.port}/{db}"})

        def undo() -> None:
            with psycopg.connect(admin_url, connect_timeout=TIMEOUT, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
                )
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))

        return undo
    if engine == "mariadb":
        parts = _maria_parts(admin_url)
        conn = pymysql.connect(**parts)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{db}`")
                cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
                cur.execute(f"GRANT ALL PRIVILEGES ON `{db}`.* TO %s@'%%'", (user,))
        finally:
            conn.close()
        first_query(
            engine,
            {"host": parts["host"], "port": parts["port"], "username": user,
             "password": password, "database": db},
        )  # fmt: skip

        def undo_maria() -> None:
            conn = pymysql.connect(**parts)
            try:
                with conn.cursor() as cur:
                    cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
                    cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
            finally:
                conn.close()

        return undo_maria
    admin = redis.Redis.from_url(admin_url, socket_timeout=TIMEOUT)
    try:
        admin.acl_setuser(
            user, enabled=True, passwords=[f"+{password}"], keys=[f"{db}:*"], commands=["+@all"]
        )
    finally:
        admin.close()
    p = urlsplit(admin_url)
    first_query(
        engine,
        {"url": f"redis://{user}:{password}@{p.hostname}:{p.port}/0", "key_prefix": f"{db}:"},
    )

    def undo_redis() -> None:
        admin = redis.Redis.from_url(admin_url, socket_timeout=TIMEOUT)
        try:
            admin.delete(f"{db}:first")
            admin.acl_deluser(user)
        finally:
            admin.close()

    return undo_redis


# -- 1. provisioning latency ----------------------------------------------------------------


def provisioning(env: Env, admin_urls: dict[Engine, str], repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for engine in ENGINES:
        berth, hand = [], []
        for _ in range(repeat):
            token = env.signup(f"bench{engine}").session  # not timed: a tenant already exists
            start = time.perf_counter()
            env.ok("POST", "/databases", token, json={"name": "main", "engine": engine}, status=201)
            creds = env.ok("GET", "/databases/main/credentials", token)
            first_query(engine, creds)
            berth.append(time.perf_counter() - start)
            env.ok("DELETE", "/databases/main", token)

            start = time.perf_counter()
            undo = by_hand(engine, admin_urls[engine])
            hand.append(time.perf_counter() - start)
            undo()
        out[engine] = {"berth": summary(berth), "by_hand": summary(hand)}
    return out


def register(env: Env, admin_urls: dict[Engine, str], capacity: int) -> None:
    for engine, url in admin_urls.items():
        body = {"name": f"bench-{engine}", "engine": engine, "url": url, "capacity": capacity}
        env.ok("POST", "/admin/db-servers", env.admin, json=body, status=201)


# -- 2. many tenant databases on one shared server ------------------------------------------


def server_root(engine: Engine, admin_url: str) -> tuple[int, Path]:
    """The server's main pid and data directory, as the server itself reports them."""
    if engine == "postgres":
        with psycopg.connect(admin_url, connect_timeout=TIMEOUT) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        data = Path(row[0])
        return int((data / "postmaster.pid").read_text().split()[0]), data
    conn = pymysql.connect(**_maria_parts(admin_url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@pid_file, @@datadir")
            pid_file, datadir = cur.fetchone()
    finally:
        conn.close()
    return int(Path(pid_file).read_text().split()[0]), Path(datadir)


def _mem(m: Memory) -> dict[str, int]:
    return {"processes": m.processes, "rss_bytes": m.rss, "pss_bytes": m.pss, "uss_bytes": m.uss}


def _disk(data: Path) -> dict[str, int]:
    total, redo = dir_bytes(data)
    return {"disk_bytes": total, "redo_log_bytes": redo, "disk_without_redo_bytes": total - redo}


def _measure(engine: Engine, admin_url: str) -> tuple[Memory, dict[str, int]]:
    time.sleep(SETTLE)
    pid, data = server_root(engine, admin_url)
    return tree_memory(pid), _disk(data)


@contextlib.contextmanager
def idle_tenants(engine: Engine, creds: list[Credentials]) -> Iterator[None]:
    opened: list[Any] = []
    try:
        for c in creds:
            if engine == "postgres":
                conn = psycopg.connect(c.url, connect_timeout=TIMEOUT, autocommit=True)
                conn.execute("SELECT 1")
            else:
                conn = pymysql.connect(
                    host=c.host, port=c.port, user=c.username, password=c.password,
                    database=c.database, connect_timeout=TIMEOUT, read_timeout=TIMEOUT,
                )  # fmt: skip
                conn.cursor().execute("SELECT 1")
            opened.append(conn)
        yield
    finally:
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()


def shared(engine: Engine, admin_url: str, count: int, deadline: float) -> dict[str, Any]:
    p = urlsplit(admin_url)
    provider: Provider = provider_for(engine, admin_url, tenant_host=p.hostname, tenant_port=p.port)
    mem0, disk0 = _measure(engine, admin_url)
    made: list[Account] = []
    creds: list[Credentials] = []
    start = time.monotonic()
    # Nothing is dropped one by one: the server is the benchmark's own and goes whole with
    # its directory when the run ends, even on failure.
    for _ in range(count):
        if time.monotonic() - start > deadline:
            break  # bounded: the figures say how many were made
        account = Account(secrets.token_hex(8), secrets.token_hex(8), "db", engine)
        made.append(account)
        c = provider.create(account)
        if len(creds) < IDLE_CONNECTIONS:
            creds.append(c)
    elapsed = time.monotonic() - start
    mem1, disk1 = _measure(engine, admin_url)
    with idle_tenants(engine, creds):
        mem2, _ = _measure(engine, admin_url)
    n = len(made)
    return {
        "databases": n,
        "requested": count,
        "create_seconds_total": elapsed,
        "empty_server": {**_mem(mem0), **disk0},
        "with_databases": {**_mem(mem1), **disk1},
        "per_database": {
            "rss_bytes": per_item(mem0.rss, mem1.rss, n),
            "pss_bytes": per_item(mem0.pss, mem1.pss, n),
            "disk_bytes": per_item(disk0["disk_bytes"], disk1["disk_bytes"], n),
            "disk_without_redo_bytes": per_item(
                disk0["disk_without_redo_bytes"], disk1["disk_without_redo_bytes"], n
            ),
        },
        "idle_connections": len(creds),
        "with_idle_connections": _mem(mem2),
        "per_idle_connection": {
            "rss_bytes": per_item(mem1.rss, mem2.rss, len(creds)),
            "pss_bytes": per_item(mem1.pss, mem2.pss, len(creds)),
            "uss_bytes": per_item(mem1.uss, mem2.uss, len(creds)),
        },
    }


def dedicated(engine: Engine, k: int, target: int) -> dict[str, Any]:
    starter = servers.postgres_server if engine == "postgres" else servers.mariadb_server
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(starter()) for _ in range(k)]
        for url in urls:
            # Each holds its tenant's one database, made and first queried as on the shared
            # server, so both are measured having served the same work.
            p = urlsplit(url)
            provider = provider_for(engine, url, tenant_host=p.hostname, tenant_port=p.port)
            provider.prepare()
            c = provider.create(Account(secrets.token_hex(8), secrets.token_hex(8), "db", engine))
            first_query(engine, {"url": c.url, "host": c.host, "port": c.port,
                                 "username": c.username, "password": c.password,
                                 "database": c.database})  # fmt: skip
        time.sleep(SETTLE)
        each = []
        for url in urls:
            pid, data = server_root(engine, url)
            each.append({**_mem(tree_memory(pid)), **_disk(data)})
    keys = ("pss_bytes", "rss_bytes", "uss_bytes", "disk_bytes", "disk_without_redo_bytes")
    per = {key: sum(e[key] for e in each) / k for key in keys}
    return {
        "servers": k,
        "settings": "the same binaries and flags as the shared server (tests/databases/servers.py);"
        " each holds one tenant database, created and queried once, then idle",
        "each": each,
        "per_server": per,
        "memory_scaled": scaled(per["pss_bytes"], k, target),
        "disk_scaled": scaled(per["disk_bytes"], k, target),
    }


# -- the run --------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    for engine, r in results["provisioning"].items():
        first = f"{engine}: create -> first query"
        rows.append([first, ms_range(r["berth"]), ms_range(r["by_hand"])])
    n = results["count"]
    for engine in SHARED:
        s, d = results["shared"][engine], results["dedicated"][engine]
        made, full, empty = s["databases"], s["with_databases"], s["empty_server"]
        each, idle, k = d["per_server"], s["per_idle_connection"], d["servers"]
        scaled_note = f"{k} measured, x {n:,}: extrapolated"
        rows += [
            [
                f"{engine}: server memory (PSS), {made:,} dbs",
                f"{human(full['pss_bytes'])} (empty: {human(empty['pss_bytes'])})",
                f"{human(d['memory_scaled']['total_bytes'])} ({scaled_note})",
            ],
            [
                f"{engine}: server memory (RSS sum), {made:,} dbs",
                f"{human(full['rss_bytes'])} (empty: {human(empty['rss_bytes'])})",
                f"{human(each['rss_bytes'] * n)} ({scaled_note})",
            ],
            [
                f"{engine}: memory (PSS) per database",
                f"{human(s['per_database']['pss_bytes'])} (server total"
                f" {human(full['pss_bytes'] - empty['pss_bytes'])}: within the noise if small)",
                f"{human(each['pss_bytes'])} per dedicated server",
            ],
            [
                f"{engine}: disk, {made:,} dbs",
                f"{human(full['disk_bytes'])} ({human(s['per_database']['disk_bytes'])} per db)",
                f"{human(d['disk_scaled']['total_bytes'])} ({scaled_note})",
            ],
            [
                f"{engine}: disk without redo log",
                f"{human(full['disk_without_redo_bytes'])}"
                f" ({human(s['per_database']['disk_without_redo_bytes'])} per db)",
                f"{human(each['disk_without_redo_bytes'] * n)} ({scaled_note})",
            ],
            [
                f"{engine}: per idle connection (of {s['idle_connections']})",
                f"PSS {human(idle['pss_bytes'])}, USS {human(idle['uss_bytes'])},"
                f" RSS {human(idle['rss_bytes'])}",
                "(the same per connection)",
            ],
        ]
    return table(rows, ["figure", "Berth (shared server)", "baseline (by hand / dedicated)"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--count", type=int, default=1000, help="tenant databases per shared server")
    ap.add_argument("--dedicated", type=int, default=10, help="dedicated servers measured")
    ap.add_argument("--repeat", type=int, default=5, help="provisioning samples per engine")
    ap.add_argument(
        "--deadline", type=float, default=1800, help="seconds at most for the N databases"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    bounds = [("--count", args.count, 60, 10_000), ("--dedicated", args.dedicated, 1, 50),
              ("--repeat", args.repeat, 1, 50)]  # fmt: skip
    for flag, value, low, high in bounds:
        if not low <= value <= high:
            ap.error(f"{flag} is between {low} and {high}")
    signal.signal(signal.SIGTERM, _terminate)
    # The API's signups hash passwords with small argon2 costs, as the API tests do: the
    # signup is outside every timed span anyway.
    accounts._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg(),
        },
        "count": args.count,
        "dedicated_servers": args.dedicated,
        "repeat": args.repeat,
    }
    with contextlib.ExitStack() as stack:
        admin_urls: dict[Engine, str] = {
            "postgres": stack.enter_context(servers.postgres_server()),
            "mariadb": stack.enter_context(servers.mariadb_server()),
            "redis": stack.enter_context(servers.redis_server()),
        }
        for engine in SHARED:
            provider_for(engine, admin_urls[engine]).prepare()
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="berth-dbbench-")))
        env = build_env(home)
        stack.callback(env.engine.dispose)
        register(env, admin_urls, capacity=args.repeat + 10)
        print("provisioning ...", flush=True)
        results["provisioning"] = provisioning(env, admin_urls, args.repeat)
        results["shared"] = {}
        for engine in SHARED:
            print(f"{args.count} databases on one {engine} ...", flush=True)
            results["shared"][engine] = shared(
                engine, admin_urls[engine], args.count, args.deadline
            )
    results["dedicated"] = {}
    for engine in SHARED:
        print(f"{args.dedicated} dedicated {engine} servers ...", flush=True)
        results["dedicated"][engine] = dedicated(engine, args.dedicated, args.count)
    results["host"]["loadavg_at_end"] = os.getloadavg()
    print(render(results))
    for engine in SHARED:
        print(f"{engine} dedicated: {results['dedicated'][engine]['memory_scaled']['note']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
