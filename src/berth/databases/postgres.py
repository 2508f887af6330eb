"""PostgreSQL: one LOGIN role and one database owned by it per tenant database.

The role is NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS with the plan's
CONNECTION LIMIT; ``CONNECT, TEMPORARY`` on its database are revoked from PUBLIC and CONNECT is
granted to the role alone, so no other tenant's role can connect to it. ``prepare`` also takes
CONNECT on the maintenance databases (``postgres``, ``template1``) from PUBLIC.

What a tenant's role can still see, because PostgreSQL shows every role the shared catalogs:
the names of all databases (``pg_database``) and roles (``pg_roles``), which are opaque hashes
(``names.server_names``), the existence of other sessions in ``pg_stat_activity`` (without their
user's query text, which only the same role or a superuser sees), tablespaces and server
settings. It sees no table, row or schema of another database: those catalogs live inside each
database, and it cannot connect to any database but its own.

Rotation without a failed login (``berth.databases.rotation``). A role has one password, so
the first rotation adds a LOGIN role ``<user>a`` (then ``<user>b``, taking turns), a member of
the account's role with ``ALTER ROLE ... SET role`` to it: its sessions act as the account's
role, which owns the database and everything they create, so its rights are the account's.
The new password is on the other role of the pair before any app has it; the old role keeps
its own until it is revoked (NOLOGIN, PASSWORD NULL, its sessions ended). The account's role
itself logs in only until the first rotation's revocation. Each login role has the plan's
CONNECTION LIMIT: while two credentials overlap the account may hold up to twice as many.

The size quota. ``ALTER DATABASE ... SET default_transaction_read_only = on`` alone would not
hold: any session can ``SET transaction_read_only = off``, and the owner can even ``ALTER
DATABASE ... RESET`` it. So over quota the database and everything in it change owner to a
NOLOGIN role of Berth's (``names.owner``, by ``REASSIGN OWNED``) and the tenant's role keeps
USAGE on its schemas and SELECT and TRUNCATE (which frees space; DELETE would not, without the
owner's VACUUM FULL) on its tables: privileges it cannot give itself back. Not DELETE: a rule
``ON DELETE DO ALSO INSERT ...`` it made before would run as the table's owner. SECURITY
DEFINER routines (which would run as the new owner) lose EXECUTE, and so do the functions that
create large objects (which need no table privilege). The read-only default stays too, for a
plain message. Under quota again, ownership returns to the tenant's role. The tenant's
sessions are ended around the change (the role cannot log in meanwhile), so nothing created
between the two steps keeps write rights.

So over quota a write fails with ``permission denied`` (42501), or first with ``cannot execute
... in a read-only transaction`` (25006); the tenant cannot undo either (``SET
default_transaction_read_only = off`` lifts only the message, never the privileges). To free
space it runs that SET and then ``TRUNCATE`` (DELETE needs the owner's VACUUM FULL to shrink
files). The size measured is ``pg_database_size``: an empty database is already about 7.3 MB
(its copy of template0's catalogs), which counts against the quota.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from berth.databases.errors import (
    DatabaseExists,
    DatabaseNotFound,
    DatabaseServerError,
    DatabaseServerUnavailable,
    DatabaseServerUnsafe,
)
from berth.databases.names import Engine, new_password
from berth.databases.password_hashes import postgres_scram_verifier
from berth.databases.provider import Account, Credentials, Rotated, Usage
from berth.databases.rotation import current_login, logins, next_login

_MAINTENANCE_DATABASES = ("postgres", "template1")
# The pg_catalog functions that create a large object: they check no table privilege, so over
# quota they lose EXECUTE in the tenant's database (pg_proc is per database).
_LARGE_OBJECT_CREATORS = (
    "pg_catalog.lo_creat(integer)",
    "pg_catalog.lo_create(oid)",
    "pg_catalog.lo_from_bytea(oid, bytea)",
)
_TENANT_SCHEMAS = """
    SELECT n.nspname FROM pg_namespace n
    WHERE n.nspowner IN (%s::regrole, 'pg_database_owner'::regrole)
      AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'
"""
# Sent without parameters, so its % are the server's. The statements are composed by the
# server itself (format and regprocedure's output are PostgreSQL's own quoting): the routines'
# names are the tenant's text.
_SECURITY_DEFINER_ROUTINES = """
    SELECT format('{verb} EXECUTE ON ROUTINE %s {direction} PUBLIC', p.oid::regprocedure)
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE p.prosecdef AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
"""


class PostgresProvider:
    engine: Engine = "postgres"

    def __init__(
        self, admin_url: str, *, tenant_host: str | None = None, tenant_port: int | None = None
    ) -> None:
        self._conninfo = admin_url
        parts = conninfo_to_dict(admin_url)
        self._tenant_host = tenant_host or str(parts.get("host") or "127.0.0.1")
        self._tenant_port = tenant_port or int(parts.get("port") or 5432)

    # -- connections -------------------------------------------------------------------------

    @contextmanager
    def _admin(self, dbname: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        extra: dict[str, Any] = {"dbname": dbname} if dbname else {}
        # A database over quota defaults to read-only; Berth's own sessions must not.
        extra["options"] = "-c default_transaction_read_only=off"
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10, **extra)
        except psycopg.OperationalError as exc:
            if dbname is not None:
                raise DatabaseNotFound("the database is not on its server") from exc
            raise DatabaseServerUnavailable(f"PostgreSQL admin connection failed: {exc}") from exc
        try:
            yield conn
        except psycopg.errors.OperationalError as exc:
            raise DatabaseServerUnavailable(f"PostgreSQL failed: {exc}") from exc
        except psycopg.Error as exc:
            raise DatabaseServerError(f"PostgreSQL refused a statement: {exc}") from exc
        finally:
            conn.close()

    # -- the interface -----------------------------------------------------------------------

    def check(self) -> None:
        with self._admin() as conn:
            row = conn.execute(
                "SELECT rolsuper OR rolcreaterole AND rolcreatedb FROM pg_roles "
                "WHERE rolname = current_user"
            ).fetchone()
            if not row or not row[0]:
                raise DatabaseServerError("the admin role cannot create roles and databases")
            # A trust line would let anyone on the network log in as any tenant's role.
            trusting = conn.execute(
                "SELECT count(*) FROM pg_hba_file_rules"
                " WHERE auth_method = 'trust' AND type LIKE 'host%%'"
            ).fetchone()
            if trusting and trusting[0]:
                raise DatabaseServerUnsafe(
                    "the PostgreSQL server trusts network connections without a password "
                    "(pg_hba.conf 'trust' for host lines): tenants would not be isolated"
                )

    def prepare(self) -> None:
        with self._admin() as conn:
            for db in _MAINTENANCE_DATABASES:
                conn.execute(
                    sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                        sql.Identifier(db)
                    )
                )

    def exists(self, account: Account) -> bool:
        n = account.names
        with self._admin() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM pg_database WHERE datname = %s)"
                " + (SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s))",
                (n.database, [*logins(n), n.owner]),
            ).fetchone()
        return bool(row and row[0])

    def credentials(self, account: Account, password: str) -> Credentials:
        return Credentials(
            engine="postgres",
            host=self._tenant_host,
            port=self._tenant_port,
            database=account.names.database,
            username=current_login(account.names, account.login),
            password=password,
        )

    def create(self, account: Account) -> Credentials:
        if self.exists(account):
            raise DatabaseExists("the database already exists on its server")
        n = account.names
        password = new_password()
        role, db = sql.Identifier(n.user), sql.Identifier(n.database)
        try:
            with self._admin() as conn:
                conn.execute(
                    sql.SQL(
                        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                        " NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {}"
                    ).format(
                        role,
                        sql.Literal(int(account.connection_limit)),
                        sql.Literal(postgres_scram_verifier(password)),
                    )
                )
                conn.execute(
                    sql.SQL(
                        "CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING 'UTF8'"
                    ).format(db, role)
                )
                conn.execute(
                    sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db)
                )
                # Explicit, so the role still connects while Berth's role owns the database.
                conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, role))
            with self._admin(n.database) as conn:
                conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        except BaseException:
            self.drop(account)
            raise
        return self.credentials(account, password)

    def drop(self, account: Account) -> None:
        n = account.names
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(n.database)
                )
            )
            # The pair first: members of the account's role.
            for role in (*logins(n)[1:], n.user, n.owner):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    def rotate_password(self, account: Account) -> Credentials:
        password = new_password()
        login = current_login(account.names, account.login)
        with self._admin() as conn:
            if not self._role_exists(conn, account.names.user):
                raise DatabaseNotFound("the database's role is not on its server")
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(login), sql.Literal(postgres_scram_verifier(password))
                )
            )
            for other in logins(account.names):
                if other != login and self._role_exists(conn, other):
                    conn.execute(
                        sql.SQL("ALTER ROLE {} PASSWORD NULL").format(sql.Identifier(other))
                    )
        return self.credentials(account, password)

    def add_credential(self, account: Account) -> Rotated:
        n = account.names
        old, new = current_login(n, account.login), next_login(n, account.login)
        password = new_password()
        role, verifier = sql.Identifier(new), sql.Literal(postgres_scram_verifier(password))
        limit = sql.Literal(int(account.connection_limit))
        with self._admin() as conn:
            if not self._role_exists(conn, n.user):
                raise DatabaseNotFound("the database's role is not on its server")
            if self._role_exists(conn, new):
                conn.execute(
                    sql.SQL("ALTER ROLE {} LOGIN CONNECTION LIMIT {} PASSWORD {}").format(
                        role, limit, verifier
                    )
                )
            else:
                conn.execute(
                    sql.SQL(
                        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                        " NOBYPASSRLS INHERIT CONNECTION LIMIT {} PASSWORD {} IN ROLE {}"
                    ).format(role, limit, verifier, sql.Identifier(n.user))
                )
            # Its sessions act as the account's role, so what they create is the account's
            # (the quota's REASSIGN and the backups' --role see one owner).
            conn.execute(sql.SQL("ALTER ROLE {} SET role = {}").format(role, sql.Literal(n.user)))
        return Rotated(self.credentials(replace(account, login=new), password), retiring=old)

    def revoke_credential(self, account: Account, retiring: str) -> None:
        n = account.names
        if retiring not in logins(n):
            raise ValueError("only one of the account's own logins is revoked")
        if retiring == current_login(n, account.login):
            raise ValueError("the login the URL names is never revoked")
        with self._admin() as conn:
            if not self._role_exists(conn, retiring):
                return
            conn.execute(
                sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(retiring))
            )
            self._end_sessions(conn, [retiring])

    def usage(self, account: Account) -> Usage:
        n = account.names
        with self._admin() as conn:
            row = conn.execute(
                "SELECT pg_database_size(d.oid),"
                " (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid)"
                " FROM pg_database d WHERE d.datname = %s",
                (n.database,),
            ).fetchone()
        if row is None:
            raise DatabaseNotFound("the database is not on its server")
        return Usage(bytes_used=int(row[0]), connections=int(row[1]))

    def set_write_allowed(self, account: Account, allowed: bool) -> None:
        n = account.names
        owner, db = sql.Identifier(n.owner), sql.Identifier(n.database)
        with self._admin() as conn:
            if not self._role_exists(conn, n.user):
                raise DatabaseNotFound("the database's role is not on its server")
            current = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                (n.database,),
            ).fetchone()
            if current is None:
                raise DatabaseNotFound("the database is not on its server")
            if (current[0] == n.user) == allowed:
                # Already so; a run that died half-way may have left the logins unable to log in.
                set_login(conn, usable_logins(conn, account), True)
                return
            if not allowed and not self._role_exists(conn, n.owner):
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT").format(owner))
            # Nobody of the tenant's is connected while the owner changes.
            locked = lock_logins(conn, account)
            try:
                self._end_sessions(conn, list(logins(n)))
                with self._admin(n.database) as dbconn:
                    if allowed:
                        self._give_back(dbconn, account)
                    else:
                        self._take_writes(dbconn, account)
                conn.execute(
                    sql.SQL(
                        "ALTER DATABASE {} RESET default_transaction_read_only"
                        if allowed
                        else "ALTER DATABASE {} SET default_transaction_read_only = on"
                    ).format(db)
                )
            finally:
                set_login(conn, locked, True)

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _role_exists(conn: psycopg.Connection[Any], name: str) -> bool:
        return (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            is not None
        )

    @staticmethod
    def _end_sessions(conn: psycopg.Connection[Any], roles: list[str]) -> None:
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = ANY(%s)",
            (roles,),
        )

    @staticmethod
    def _take_writes(conn: psycopg.Connection[Any], account: Account) -> None:
        n = account.names
        role, owner = sql.Identifier(n.user), sql.Identifier(n.owner)
        # A session of the pair may have RESET its role and own objects itself.
        tenants = sql.SQL(", ").join(sql.Identifier(r) for r in existing_roles(conn, logins(n)))
        with conn.transaction():
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(tenants, owner))
            # The role's own CONNECT went with its ownership.
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(n.database), role
                )
            )
            schemas = [r[0] for r in conn.execute(_TENANT_SCHEMAS, (n.owner,)).fetchall()]
            for schema in schemas:
                s = sql.Identifier(schema)
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, role))
                conn.execute(
                    sql.SQL("GRANT SELECT, TRUNCATE ON ALL TABLES IN SCHEMA {} TO {}").format(
                        s, role
                    )
                )
                conn.execute(
                    sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, role)
                )
            for (statement,) in conn.execute(
                _SECURITY_DEFINER_ROUTINES.format(verb="REVOKE", direction="FROM")
            ).fetchall():
                conn.execute(statement)
            for fn in _LARGE_OBJECT_CREATORS:
                conn.execute(sql.SQL(f"REVOKE EXECUTE ON FUNCTION {fn} FROM PUBLIC"))

    @staticmethod
    def _give_back(conn: psycopg.Connection[Any], account: Account) -> None:
        n = account.names
        with conn.transaction():
            conn.execute(
                sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                    sql.Identifier(n.owner), sql.Identifier(n.user)
                )
            )
            for (statement,) in conn.execute(
                _SECURITY_DEFINER_ROUTINES.format(verb="GRANT", direction="TO")
            ).fetchall():
                conn.execute(statement)
            for fn in _LARGE_OBJECT_CREATORS:
                conn.execute(sql.SQL(f"GRANT EXECUTE ON FUNCTION {fn} TO PUBLIC"))


# -- the account's login roles, for the quota's and the restore's lock-outs --------------------


def existing_roles(conn: psycopg.Connection[Any], names: Iterable[str]) -> list[str]:
    wanted = list(names)
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (wanted,))
    found = {str(r[0]) for r in rows.fetchall()}
    return [name for name in wanted if name in found]


def set_login(conn: psycopg.Connection[Any], roles: Iterable[str], allowed: bool) -> None:
    verb = "LOGIN" if allowed else "NOLOGIN"
    for role in roles:
        conn.execute(sql.SQL(f"ALTER ROLE {{}} {verb}").format(sql.Identifier(role)))


def usable_logins(conn: psycopg.Connection[Any], account: Account) -> list[str]:
    """The logins that should be able to log in, when nothing says otherwise (after a run that
    died half-way): the pair once there is one (a revoked one has no password), else the first."""
    n = account.names
    pair = existing_roles(conn, logins(n)[1:])
    return pair or [n.user]


def lock_logins(conn: psycopg.Connection[Any], account: Account) -> list[str]:
    """Every login of the account that can log in is made NOLOGIN; returns them, for
    ``set_login(..., True)`` afterwards (a revoked one stays revoked)."""
    rows = conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin",
        (list(logins(account.names)),),
    )
    locked = [str(r[0]) for r in rows.fetchall()]
    set_login(conn, locked, False)
    return locked
