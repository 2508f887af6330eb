"""Content for backup tests, written and read as the tenant (its own credentials), on each real
engine and on the fake: tables with NULLs, unicode, binary data and quoted names."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
import pymysql
import redis

from berth.databases.names import Engine
from berth.databases.provider import Credentials

# A table name a careless quoting would break on, on every engine.
ODD = 'odd "name`; x'


def _maria(creds: Credentials) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=creds.host, port=creds.port, user=creds.username, password=creds.password,
        database=creds.database, autocommit=True, connect_timeout=5, charset="utf8mb4",
    )  # fmt: skip


def fill(engine: Engine, creds: Credentials, rows: int, tag: str = "a") -> None:
    """``rows`` rows (Redis: keys) of varied content; ``tag`` makes one filling differ."""
    if engine == "postgres":
        with psycopg.connect(creds.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, name text,"
                " data bytea, n numeric)"
            )
            conn.execute(psycopg.sql.SQL("CREATE TABLE IF NOT EXISTS {} (v text)").format(
                psycopg.sql.Identifier(ODD)))  # fmt: skip
            # A view and a trigger of the tenant's: restored owned by the target's role.
            conn.execute("CREATE OR REPLACE VIEW named AS SELECT id, name FROM items")
            conn.execute(
                "CREATE OR REPLACE FUNCTION fill_n() RETURNS trigger LANGUAGE plpgsql AS"
                " $$BEGIN NEW.n := coalesce(NEW.n, -1); RETURN NEW; END$$"
            )
            conn.execute(
                "CREATE OR REPLACE TRIGGER fill_n BEFORE INSERT ON items"
                " FOR EACH ROW EXECUTE FUNCTION fill_n()"
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO items (name, data, n) VALUES (%s, %s, %s)",
                    [(_name(i, tag), _blob(i), None if i % 7 == 0 else i / 3) for i in range(rows)],
                )
            conn.execute(
                psycopg.sql.SQL("INSERT INTO {} VALUES (NULL), (''), ('ünï')").format(
                    psycopg.sql.Identifier(ODD)
                )
            )
    elif engine == "mariadb":
        conn = _maria(creds)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS items (id INT AUTO_INCREMENT PRIMARY KEY,"
                    " name TEXT, data BLOB, n DECIMAL(20,6))"
                )
                odd = "`" + ODD.replace("`", "``") + "`"
                cur.execute(f"CREATE TABLE IF NOT EXISTS {odd} (v TEXT)")
                # A view and a trigger: their definer is the tenant's user (rewritten to the
                # target's on a restore into another database, or the copy could not use them).
                cur.execute("CREATE OR REPLACE VIEW named AS SELECT id, name FROM items")
                cur.execute(
                    "CREATE TRIGGER IF NOT EXISTS fill_n BEFORE INSERT ON items"
                    " FOR EACH ROW SET NEW.n = COALESCE(NEW.n, -1)"
                )
                cur.executemany(
                    "INSERT INTO items (name, data, n) VALUES (%s, %s, %s)",
                    [(_name(i, tag), _blob(i), None if i % 7 == 0 else i / 3) for i in range(rows)],
                )
                cur.execute(f"INSERT INTO {odd} VALUES (NULL), (''), ('ünï')")
        finally:
            conn.close()
    elif engine == "redis":
        r = redis.Redis.from_url(creds.url, socket_timeout=30)
        try:
            p, pipe = creds.key_prefix, r.pipeline(transaction=False)
            for i in range(rows):
                pipe.set(f"{p}s:{tag}:{i}", _blob(i))
            pipe.rpush(f"{p}list", *[_name(i, tag) for i in range(10)])
            pipe.hset(f"{p}hash", mapping={"a": "1", "ü": _blob(3)})
            pipe.sadd(f"{p}set", "x", "y", tag)
            pipe.zadd(f"{p}zset", {"one": 1.5, tag: 2})
            pipe.set(f"{p}ttl", "soon", ex=3600)
            pipe.execute()
        finally:
            r.close()


def _name(i: int, tag: str) -> str:
    return f"{tag}-row-{i}-ünïcödé-'\";"


def _blob(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * 4 + bytes([0, 255, i % 256])


def snapshot(engine: Engine, creds: Credentials) -> object:
    """Everything the tenant can read back, in a comparable form."""
    if engine == "postgres":
        with psycopg.connect(creds.url, autocommit=True, connect_timeout=5) as conn:
            items = conn.execute("SELECT id, name, data, n FROM items ORDER BY id").fetchall()
            items += conn.execute("SELECT count(*), max(name) FROM named").fetchall()
            odd = conn.execute(
                psycopg.sql.SQL("SELECT v FROM {} ORDER BY v NULLS FIRST").format(
                    psycopg.sql.Identifier(ODD)
                )
            ).fetchall()
            return items, odd
    if engine == "mariadb":
        conn = _maria(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, name, data, n FROM items ORDER BY id")
                items = cur.fetchall()
                cur.execute("SELECT COUNT(*), MAX(name) FROM named")
                items += cur.fetchall()
                odd = "`" + ODD.replace("`", "``") + "`"
                cur.execute(f"SELECT v FROM {odd} ORDER BY v")
                return items, cur.fetchall()
        finally:
            conn.close()
    r = redis.Redis.from_url(creds.url, socket_timeout=30)
    try:
        p = creds.key_prefix
        # The tenant's user has no SCAN: it reads the keys it knows.
        strings = [r.get(f"{p}s:a:{i}") for i in range(50)]
        return (
            strings,
            r.lrange(f"{p}list", 0, -1),
            r.hgetall(f"{p}hash"),
            r.smembers(f"{p}set"),
            r.zrange(f"{p}zset", 0, -1, withscores=True),
            r.get(f"{p}ttl"),
            r.pttl(f"{p}ttl") > 0,
        )
    finally:
        r.close()


def trigger_works(engine: Engine, creds: Credentials) -> bool:
    """The restored trigger runs for the database's own user (it fills a NULL ``n``)."""
    if engine == "postgres":
        with psycopg.connect(creds.url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("INSERT INTO items (name) VALUES ('t') RETURNING n").fetchone()
            return row is not None and row[0] == -1
    if engine == "mariadb":
        conn = _maria(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO items (name) VALUES ('t')")
                cur.execute("SELECT n FROM items WHERE id = LAST_INSERT_ID()")
                row = cur.fetchone()
                return row is not None and row[0] == -1
        finally:
            conn.close()
    return True
