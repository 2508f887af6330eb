"""MariaDB backups: ``mariadb-dump --single-transaction`` with the tenant's writes paused, so
the fingerprint and the dump see the same rows; verified by the ``mariadb`` client restoring the
file into a scratch database.

Same content: MariaDB cannot hand a snapshot to another session, so an admin session takes
``LOCK TABLES ... READ`` on every base table of the database (the tenant's writes to it wait;
reads go on; other databases are not touched), takes the fingerprint, runs the dump (which
only reads) and unlocks. A lock that cannot be had in ``lock_wait_timeout`` fails the backup.

The fingerprint: per base table, ``COUNT(*)`` and the sum of the first 60 bits of each row's
md5 over its columns in order (``CONCAT_WS`` with each column's ``ISNULL`` beside it, so NULL
and '' differ); a sum, so row order does not matter and duplicates count.

Views and triggers carry their definer: the tenant's user. A restore into another database
(another user) rewrites that one exact clause to the target's user as the file streams in, so
nothing runs with the source user's rights. The client runs as the admin, with ``--database``
(the dump names no database: it restores anywhere), the password in MYSQL_PWD.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.cursors

from berth.databases.backup import BackupFailed, Fingerprint, Tools, run_tool, scratch_names
from berth.databases.mariadb import quote_ident
from berth.databases.names import Engine
from berth.databases.provider import Account
from berth.databases.rotation import logins

LOCK_WAIT_SECONDS = 30


def quote_any(name: str) -> str:
    """A tenant's table or column name, backtick-quoted (a backtick doubled)."""
    return "`" + name.replace("`", "``") + "`"


class MariaDBBackups:
    engine: Engine = "mariadb"

    def __init__(self, admin_url: str, tools: Tools | None = None) -> None:
        parts = urlsplit(admin_url)
        self._connect: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
        }
        self._env = {"MYSQL_PWD": str(self._connect["password"])}
        self._tools = tools or Tools()

    @contextmanager
    def _admin(self, database: str | None = None) -> Iterator[pymysql.cursors.Cursor]:
        try:
            conn = pymysql.connect(
                **self._connect, database=database, autocommit=True, connect_timeout=10,
                charset="utf8mb4",
            )  # fmt: skip
        except pymysql.MySQLError as exc:
            raise BackupFailed(f"MariaDB: cannot connect: {exc}") from exc
        try:
            with conn.cursor() as cur:
                yield cur
        except pymysql.MySQLError as exc:
            raise BackupFailed(f"MariaDB: {exc}") from exc
        finally:
            conn.close()

    def _client(self) -> list[str]:
        c = self._connect
        return ["--protocol=TCP", "-h", str(c["host"]), "-P", str(c["port"]), "-u", str(c["user"])]

    # -- the interface -----------------------------------------------------------------------

    def dump(self, account: Account, path: Path) -> Fingerprint:
        db = account.names.database
        with self._admin(db) as cur:
            cur.execute("SET SESSION lock_wait_timeout = %s", (LOCK_WAIT_SECONDS,))
            tables = _tables(cur, db)
            if tables:
                cur.execute("LOCK TABLES " + ", ".join(f"{quote_any(t)} READ" for t in tables))
            try:
                fingerprint = _fingerprint(cur, db, tables)
                run_tool(
                    [self._tools.path(self._tools.mariadb_dump), *self._client(),
                     "--single-transaction", "--routines", "--triggers", "--hex-blob",
                     "--no-tablespaces", "--skip-dump-date", "--default-character-set=utf8mb4",
                     f"--result-file={path}", db],
                    secret_env=self._env, what="the dump", timeout=self._tools.timeout,
                )  # fmt: skip
            finally:
                if tables:
                    cur.execute("UNLOCK TABLES")
        return fingerprint

    def verify(self, account: Account, path: Path) -> Fingerprint:
        scratch = quote_ident(scratch_names(account).database)
        with self._admin() as cur:
            try:
                cur.execute(f"DROP DATABASE IF EXISTS {scratch}")
                cur.execute(f"CREATE DATABASE {scratch} CHARACTER SET utf8mb4")
                self._load(path, scratch_names(account).database, [])
                name = scratch_names(account).database
                return _fingerprint(cur, name, _tables(cur, name))
            finally:
                cur.execute(f"DROP DATABASE IF EXISTS {scratch}")

    def restore(self, source: Account, target: Account, path: Path) -> None:
        """The target's tables go, then the file is loaded into it. MariaDB renames no
        database, so a load that fails half-way leaves it partly restored (said so)."""
        db = target.names.database
        with self._admin() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (db,)
            )
            row = cur.fetchone()
            if not row or not row[0]:
                raise BackupFailed("the database to restore into is not on its server")
            # Grants live in mysql.db, not in the database: they outlive its re-creation.
            cur.execute(f"DROP DATABASE {quote_ident(db)}")
            cur.execute(f"CREATE DATABASE {quote_ident(db)} CHARACTER SET utf8mb4")
        # Routines' definers may be any of the source's logins (a rotation's pair too).
        rewrite = [
            (old, new)
            for old, new in zip(logins(source.names), logins(target.names), strict=True)
            if old != new
        ]
        try:
            self._load(path, db, rewrite)
        except BackupFailed as exc:
            raise BackupFailed(f"{exc.message} (the database is only partly restored)") from None

    def _load(self, path: Path, database: str, rewrite: list[tuple[str, str]]) -> None:
        run_tool(
            [self._tools.path(self._tools.mariadb), *self._client(), "--batch",
             "--default-character-set=utf8mb4", f"--database={database}"],
            secret_env=self._env, what="the restore", timeout=self._tools.timeout,
            stdin=_lines(path, rewrite),
        )  # fmt: skip


def _lines(path: Path, rewrite: list[tuple[str, str]]) -> Iterator[bytes]:
    pairs = [
        (f"DEFINER=`{old}`@`%`".encode(), f"DEFINER=`{new}`@`%`".encode()) for old, new in rewrite
    ]
    with open(path, "rb") as f:
        for line in f:
            for old, new in pairs:
                line = line.replace(old, new)
            yield line


def _tables(cur: pymysql.cursors.Cursor, database: str) -> list[str]:
    cur.execute(
        "SELECT TABLE_NAME FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
        (database,),
    )
    return [str(r[0]) for r in cur.fetchall()]


def _fingerprint(cur: pymysql.cursors.Cursor, database: str, tables: list[str]) -> Fingerprint:
    found: Fingerprint = {}
    for table in tables:
        cur.execute(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (database, table),
        )
        columns = [quote_any(str(r[0])) for r in cur.fetchall()]
        parts = ", ".join(f"{c}, ISNULL({c})" for c in columns)
        # Every name is quoted above (the tenant's text); nothing else is interpolated.
        source = f"{quote_any(database)}.{quote_any(table)}"
        sums = f"SUM(CONV(SUBSTRING(MD5(CONCAT_WS(0x1f, {parts})), 1, 15), 16, 10))"
        cur.execute(f"SELECT COUNT(*), COALESCE({sums}, 0) FROM {source}")  # noqa: S608
        row = cur.fetchone()
        assert row is not None
        found[table] = [int(row[0]), str(row[1])]
    return found
