"""MariaDB/MySQL: a user per tenant database with grants on that database only.

The user (``'<names.user>'@'%'``, ``MAX_USER_CONNECTIONS`` from the plan) gets the privileges an
app and its migrations need on ```<names.database>`.*`` and nothing global: no FILE, PROCESS,
SUPER, SHOW DATABASES, CREATE USER or GRANT OPTION. Identifiers are quoted with backticks (a
backtick doubled), user names and password hashes travel as parameters. A database-level grant
reads ``_`` and ``%`` as wildcards; the derived names contain neither (letters and digits only),
so nothing needs escaping and ``quote_ident`` refuses a name that would.

What a tenant can still see: ``SHOW DATABASES`` and ``information_schema`` list only what it has
privileges on (its database), ``PROCESSLIST`` only its own sessions; the server's version and
global variables. Not ``mysql.*``, no other user's names.

The size quota: measured from InnoDB's tablespace files (``INNODB_SYS_TABLESPACES``) plus the
data and index length of tables of other engines. Over quota the user loses INSERT, UPDATE,
CREATE, ALTER, INDEX, CREATE VIEW, CREATE ROUTINE, ALTER ROUTINE, EVENT, TRIGGER and CREATE
TEMPORARY TABLES; it keeps SELECT, DELETE and DROP (to free space), EXECUTE and LOCK TABLES.
Routines, triggers and events run with their definer's current privileges (the tenant's), so
they cannot write either. Database-level privileges reach an open session only at its next
``USE``, so the user's sessions are ended. A write then fails with ``INSERT command denied``
(1142). DELETE does not shrink an InnoDB tablespace file: ``TRUNCATE TABLE`` (which needs
DROP, kept) or DROP TABLE frees the space the quota measures.

Rotation without a failed login (``berth.databases.rotation``): a user has one password, so the
first rotation adds a user ``<user>a`` (then ``<user>b``, taking turns) with the same grants
and ``MAX_USER_CONNECTIONS``; the new password is on the other user of the pair before any app
has it, and the old user keeps its own until it is revoked (``ACCOUNT LOCK``, its sessions
ended). Every quota change applies to all of the account's users. While two credentials
overlap the account may hold up to twice its connection limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.cursors

from berth.databases.errors import (
    DatabaseExists,
    DatabaseNotFound,
    DatabaseServerError,
    DatabaseServerUnavailable,
    DatabaseServerUnsafe,
)
from berth.databases.names import Engine, new_password
from berth.databases.password_hashes import mysql_native_password_hash
from berth.databases.provider import Account, Credentials, Rotated, Usage
from berth.databases.rotation import current_login, logins, next_login

_SAFE_NAME = re.compile(r"[a-z0-9]{1,64}")
_ALWAYS = ("SELECT", "DELETE", "DROP", "EXECUTE", "LOCK TABLES", "SHOW VIEW", "REFERENCES")
_WRITES = (
    "INSERT",
    "UPDATE",
    "CREATE",
    "ALTER",
    "INDEX",
    "CREATE VIEW",
    "CREATE ROUTINE",
    "ALTER ROUTINE",
    "EVENT",
    "TRIGGER",
    "CREATE TEMPORARY TABLES",
)
# The server's own connection errors (access denied, too many connections, unknown host).
_UNREACHABLE = (2003, 2006, 2013, 1045)


def quote_ident(name: str) -> str:
    """A backtick-quoted identifier; only Berth's derived names (no ``_``/``%`` wildcards)."""
    if _SAFE_NAME.fullmatch(name) is None:
        raise ValueError("a server-side name is lowercase letters and digits")
    return "`" + name.replace("`", "``") + "`"


class MariaDBProvider:
    engine: Engine = "mariadb"

    def __init__(
        self, admin_url: str, *, tenant_host: str | None = None, tenant_port: int | None = None
    ) -> None:
        parts = urlsplit(admin_url)
        self._connect_args: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
        }
        self._tenant_host = tenant_host or str(self._connect_args["host"])
        self._tenant_port = tenant_port or int(self._connect_args["port"])

    @contextmanager
    def _admin(self) -> Iterator[pymysql.cursors.Cursor]:
        try:
            conn = pymysql.connect(
                **self._connect_args, autocommit=True, connect_timeout=10, charset="utf8mb4"
            )
        except pymysql.MySQLError as exc:
            raise DatabaseServerUnavailable(f"MariaDB admin connection failed: {exc}") from exc
        try:
            with conn.cursor() as cur:
                yield cur
        except pymysql.OperationalError as exc:
            if exc.args and exc.args[0] in _UNREACHABLE:
                raise DatabaseServerUnavailable(f"MariaDB failed: {exc}") from exc
            raise DatabaseServerError(f"MariaDB refused a statement: {exc}") from exc
        except pymysql.MySQLError as exc:
            raise DatabaseServerError(f"MariaDB refused a statement: {exc}") from exc
        finally:
            conn.close()

    @staticmethod
    def _one(cur: pymysql.cursors.Cursor, statement: str, args: Any = None) -> Any:
        cur.execute(statement, args)
        row = cur.fetchone()
        return row[0] if row else None

    # -- the interface -----------------------------------------------------------------------

    def check(self) -> None:
        with self._admin() as cur:
            if self._one(cur, "SELECT COUNT(*) FROM mysql.user WHERE User = ''"):
                raise DatabaseServerUnsafe(
                    "the MariaDB server has anonymous users: anyone could log in; drop them"
                )

    def prepare(self) -> None:
        """Nothing to prepare beyond ``check``: a MariaDB user sees nothing it has no grant on."""
        self.check()

    def exists(self, account: Account) -> bool:
        n = account.names
        with self._admin() as cur:
            count = self._one(
                cur,
                "SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s)"
                " + (SELECT COUNT(*) FROM mysql.user WHERE User IN %s)",
                (n.database, logins(n)),
            )
        return bool(count)

    def credentials(self, account: Account, password: str) -> Credentials:
        return Credentials(
            engine="mariadb",
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
        db = quote_ident(n.database)
        limit = int(account.connection_limit)
        try:
            with self._admin() as cur:
                cur.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
                cur.execute(
                    "CREATE USER %s@'%%' IDENTIFIED BY PASSWORD %s"
                    f" WITH MAX_USER_CONNECTIONS {limit}",
                    (n.user, mysql_native_password_hash(password)),
                )
                cur.execute(f"GRANT {', '.join(_ALWAYS + _WRITES)} ON {db}.* TO %s@'%%'", (n.user,))
        except BaseException:
            self.drop(account)
            raise
        return self.credentials(account, password)

    def _end_sessions(self, cur: pymysql.cursors.Cursor, users: tuple[str, ...]) -> None:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER IN %s", (users,))
        for (session_id,) in cur.fetchall():
            try:
                cur.execute("KILL CONNECTION %s", (int(session_id),))
            except pymysql.OperationalError as exc:
                if exc.args and exc.args[0] == 1094:  # unknown thread: it ended meanwhile
                    continue
                raise

    def drop(self, account: Account) -> None:
        n = account.names
        with self._admin() as cur:
            for user in logins(n):
                cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
            self._end_sessions(cur, logins(n))
            cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(n.database)}")

    def _users(self, cur: pymysql.cursors.Cursor, account: Account) -> list[str]:
        """The account's users on the server, its first one first."""
        cur.execute(
            "SELECT DISTINCT User FROM mysql.user WHERE User IN %s", (logins(account.names),)
        )
        found = {str(r[0]) for r in cur.fetchall()}
        return [user for user in logins(account.names) if user in found]

    def _held(self, cur: pymysql.cursors.Cursor, user: str, database: str) -> set[str]:
        cur.execute(
            "SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES"
            " WHERE GRANTEE = %s AND TABLE_SCHEMA = %s",
            (f"'{user}'@'%'", database),
        )
        return {str(row[0]) for row in cur.fetchall()}

    def rotate_password(self, account: Account) -> Credentials:
        password = new_password()
        login = current_login(account.names, account.login)
        with self._admin() as cur:
            users = self._users(cur, account)
            if account.names.user not in users or login not in users:
                raise DatabaseNotFound("the database's user is not on its server")
            cur.execute(
                "ALTER USER %s@'%%' IDENTIFIED BY PASSWORD %s ACCOUNT UNLOCK",
                (login, mysql_native_password_hash(password)),
            )
            for other in users:
                if other != login:
                    cur.execute("ALTER USER %s@'%%' ACCOUNT LOCK", (other,))
        return self.credentials(account, password)

    def add_credential(self, account: Account) -> Rotated:
        n = account.names
        old, new = current_login(n, account.login), next_login(n, account.login)
        password = new_password()
        digest = mysql_native_password_hash(password)
        db = quote_ident(n.database)
        limit = int(account.connection_limit)
        with self._admin() as cur:
            users = self._users(cur, account)
            if n.user not in users or old not in users:
                raise DatabaseNotFound("the database's user is not on its server")
            if new in users:
                cur.execute(
                    "ALTER USER %s@'%%' IDENTIFIED BY PASSWORD %s"
                    f" WITH MAX_USER_CONNECTIONS {limit} ACCOUNT UNLOCK",
                    (new, digest),
                )
            else:
                cur.execute(
                    "CREATE USER %s@'%%' IDENTIFIED BY PASSWORD %s"
                    f" WITH MAX_USER_CONNECTIONS {limit}",
                    (new, digest),
                )
            # The same rights as the login it takes over from (writes may be refused now).
            wanted = self._held(cur, old, n.database) & set(_ALWAYS + _WRITES)
            extra = self._held(cur, new, n.database) - wanted
            if wanted:
                cur.execute(f"GRANT {', '.join(sorted(wanted))} ON {db}.* TO %s@'%%'", (new,))
            if extra:
                cur.execute(f"REVOKE {', '.join(sorted(extra))} ON {db}.* FROM %s@'%%'", (new,))
        return Rotated(self.credentials(replace(account, login=new), password), retiring=old)

    def revoke_credential(self, account: Account, retiring: str) -> None:
        n = account.names
        if retiring not in logins(n):
            raise ValueError("only one of the account's own users is revoked")
        if retiring == current_login(n, account.login):
            raise ValueError("the user the URL names is never revoked")
        with self._admin() as cur:
            if retiring not in self._users(cur, account):
                return
            cur.execute("ALTER USER %s@'%%' ACCOUNT LOCK", (retiring,))
            self._end_sessions(cur, (retiring,))

    def usage(self, account: Account) -> Usage:
        n = account.names
        with self._admin() as cur:
            if not self._one(
                cur,
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (n.database,),
            ):
                raise DatabaseNotFound("the database is not on its server")
            innodb = self._one(
                cur,
                "SELECT COALESCE(SUM(FILE_SIZE), 0) FROM information_schema.INNODB_SYS_TABLESPACES"
                " WHERE SUBSTRING_INDEX(NAME, '/', 1) = %s",
                (n.database,),
            )
            others = self._one(
                cur,
                "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = %s AND ENGINE <> 'InnoDB'",
                (n.database,),
            )
            connections = self._one(
                cur,
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER IN %s",
                (logins(n),),
            )
        return Usage(bytes_used=int(innodb) + int(others), connections=int(connections))

    def set_write_allowed(self, account: Account, allowed: bool) -> None:
        n = account.names
        db = quote_ident(n.database)
        with self._admin() as cur:
            users = self._users(cur, account)
            if n.user not in users:
                raise DatabaseNotFound("the database's user is not on its server")
            privileges = ", ".join(_WRITES)
            for user in users:  # every login of the account: the quota is the account's
                if allowed:
                    cur.execute(f"GRANT {privileges} ON {db}.* TO %s@'%%'", (user,))
                    continue
                # REVOKE of a privilege the user no longer has is an error: revoke what is held.
                held = self._held(cur, user, n.database) & set(_WRITES)
                if held:
                    cur.execute(f"REVOKE {', '.join(sorted(held))} ON {db}.* FROM %s@'%%'", (user,))
            if not allowed:
                self._end_sessions(cur, tuple(users))
