"""PostgreSQL backups: ``pg_dump -Fc`` in the snapshot the fingerprint is taken in, verified by
``pg_restore`` into a scratch database, restored through a staging database renamed into place.

Same snapshot: an admin session opens a REPEATABLE READ transaction, exports its snapshot
(``pg_export_snapshot``), takes the fingerprint in it, and ``pg_dump --snapshot`` dumps exactly
that snapshot while the session holds it open. Writes go on meanwhile; neither sees them.

The fingerprint: per table (``relkind`` r or p, outside the system schemas), its row count and
the md5 of its rows' md5s in order (``md5(t::text)``, so no primary key is needed). Sequences'
positions and large objects are dumped but not part of it.

A dump holds the tenant's own definitions (functions an index or a default calls), so nothing
of it is ever restored with the admin's rights: the scratch database is owned by a NOLOGIN role
of its own and ``pg_restore --role`` runs as that role; a restore into the tenant's database
runs as the tenant's role. The admin is made a member of the role for the time of the restore
(a CREATEROLE admin is not one by itself) and stops being one after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from berth.databases.backup import BackupFailed, Fingerprint, Tools, run_tool, scratch_names
from berth.databases.names import Engine, server_names
from berth.databases.postgres import lock_logins, set_login
from berth.databases.provider import Account

_TABLES = """
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT LIKE 'pg\\_%%'
      AND n.nspname <> 'information_schema'
    ORDER BY 1, 2
"""


class PostgresBackups:
    engine: Engine = "postgres"

    def __init__(self, admin_url: str, tools: Tools | None = None) -> None:
        self._conninfo = admin_url
        parts = conninfo_to_dict(admin_url)
        self._host = str(parts.get("host") or "127.0.0.1")
        self._port = str(parts.get("port") or 5432)
        self._user = str(parts.get("user") or "postgres")
        self._env = {"PGPASSWORD": str(parts.get("password") or ""), "PGCONNECT_TIMEOUT": "10"}
        self._tools = tools or Tools()

    # -- sessions ----------------------------------------------------------------------------

    @contextmanager
    def _admin(self, dbname: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        extra: dict[str, Any] = {"dbname": dbname} if dbname else {}
        try:
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=10,
                # Row security must not filter (or run policies in) what is counted.
                options="-c default_transaction_read_only=off -c row_security=off",
                **extra,
            )
        except psycopg.OperationalError as exc:
            raise BackupFailed(f"PostgreSQL: cannot connect: {exc}") from exc
        try:
            yield conn
        except psycopg.Error as exc:
            raise BackupFailed(f"PostgreSQL: {exc}") from exc
        finally:
            conn.close()

    def _client(self, dbname: str) -> list[str]:
        return ["-h", self._host, "-p", self._port, "-U", self._user, "-d", dbname, "-w"]

    # -- the interface -----------------------------------------------------------------------

    def dump(self, account: Account, path: Path) -> Fingerprint:
        with self._admin(account.names.database) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            fingerprint = _fingerprint(conn)
            run_tool(
                [self._tools.path(self._tools.pg_dump), "-Fc", "--no-sync",
                 f"--snapshot={row[0]}", "-f", str(path), *self._client(account.names.database)],
                secret_env=self._env, what="the dump", timeout=self._tools.timeout,
            )  # fmt: skip
            conn.execute("COMMIT")
        return fingerprint

    def verify(self, account: Account, path: Path) -> Fingerprint:
        scratch = scratch_names(account)
        with self._admin() as conn:
            try:
                self._drop(conn, scratch.database, scratch.user)
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(scratch.user)))
                self._new_database(conn, scratch.database, scratch.user)
                self._pg_restore(conn, path, scratch.database, scratch.user)
                with self._admin(scratch.database) as scratch_conn:
                    return _fingerprint(scratch_conn)
            finally:
                self._drop(conn, scratch.database, scratch.user)

    def restore(self, source: Account, target: Account, path: Path) -> None:
        """Into a staging database first (the target untouched if that fails); then the
        target's sessions are ended and the staging database takes its name."""
        n = target.names
        staging = server_names(target.tenant_id, f"staging{target.database_id}")
        old = server_names(target.tenant_id, f"replaced{target.database_id}")
        with self._admin() as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (n.database,))
            if found.fetchone() is None:
                raise BackupFailed("the database to restore into is not on its server")
            try:
                self._drop(conn, staging.database, None)
                self._new_database(conn, staging.database, n.user)
                self._pg_restore(conn, path, staging.database, n.user)
                # Apps lose their sessions for the rename; they reconnect to the restored one.
                # Every login of the account (a rotation's pair too) waits meanwhile.
                locked = lock_logins(conn, target)
                try:
                    self._end_sessions(conn, n.database)
                    self._drop(conn, old.database, None)
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(n.database), sql.Identifier(old.database)
                        )
                    )
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(staging.database), sql.Identifier(n.database)
                        )
                    )
                finally:
                    set_login(conn, locked, True)
                self._drop(conn, old.database, None)
            finally:
                self._drop(conn, staging.database, None)

    # -- helpers -----------------------------------------------------------------------------

    def _pg_restore(
        self, conn: psycopg.Connection[Any], path: Path, database: str, role: str
    ) -> None:
        member = sql.Identifier(role)
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(member))
        try:
            run_tool(
                [self._tools.path(self._tools.pg_restore), "--no-owner", "--no-acl",
                 "--exit-on-error", "--single-transaction", f"--role={role}",
                 *self._client(database), str(path)],
                secret_env=self._env, what="the restore", timeout=self._tools.timeout,
            )  # fmt: skip
        finally:
            conn.execute(sql.SQL("REVOKE {} FROM CURRENT_USER").format(member))

    @staticmethod
    def _new_database(conn: psycopg.Connection[Any], database: str, owner: str) -> None:
        """As ``PostgresProvider.create`` makes a tenant's: only its owner may connect."""
        db, role = sql.Identifier(database), sql.Identifier(owner)
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING 'UTF8'").format(
                db, role
            )
        )
        conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, role))

    @staticmethod
    def _end_sessions(conn: psycopg.Connection[Any], database: str) -> None:
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )

    @staticmethod
    def _drop(conn: psycopg.Connection[Any], database: str, role: str | None) -> None:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        if role is not None:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _fingerprint(conn: psycopg.Connection[Any]) -> Fingerprint:
    found: Fingerprint = {}
    for schema, table in conn.execute(_TABLES).fetchall():
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '')"
                " FROM (SELECT md5(t::text) AS h FROM {}.{} t) rows"
            ).format(sql.Identifier(schema), sql.Identifier(table))
        ).fetchone()
        assert row is not None
        found[f"{schema}.{table}"] = [int(row[0]), str(row[1])]
    return found
