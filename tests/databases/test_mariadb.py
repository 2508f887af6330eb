"""MariaDB provider against a real mariadbd started by the tests: a user per tenant database
with grants on its own database only; isolation, limits, rotation, drop, hostile names and the
write quota."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest

from berth.databases.errors import DatabaseExists, InvalidDatabaseName
from berth.databases.mariadb import MariaDBProvider, quote_ident
from berth.databases.provider import Account, Credentials
from tests.databases.conftest import unique_id
from tests.databases.hostile import HOSTILE_NAMES

Made = tuple[Account, Credentials]
ACCESS_DENIED = (1044, 1045, 1142, 1227, 1410, 1370, 1143, 1211)


@pytest.fixture(scope="module")
def provider(mariadb_admin_url: str) -> MariaDBProvider:
    p = MariaDBProvider(mariadb_admin_url)
    p.prepare()
    return p


@pytest.fixture
def make(provider: MariaDBProvider) -> Iterator[Callable[..., Made]]:
    made: list[Account] = []

    def _make(name: str = "shop", connection_limit: int = 5) -> Made:
        account = Account(
            tenant_id=unique_id(), database_id=unique_id(), name=name, engine="mariadb",
            connection_limit=connection_limit,
        )  # fmt: skip
        made.append(account)
        return account, provider.create(account)

    yield _make
    for account in made:
        provider.drop(account)


def connect(creds: Credentials, **overrides: Any) -> pymysql.connections.Connection[Any]:
    args: dict[str, Any] = {
        "host": creds.host, "port": creds.port, "user": creds.username,
        "password": creds.password, "database": creds.database,
    }  # fmt: skip
    args.update(overrides)
    return pymysql.connect(**args, autocommit=True, connect_timeout=5)


def run(conn: pymysql.connections.Connection[Any], statement: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(statement, args)
        return cur.fetchall()


def refused(conn: pymysql.connections.Connection[Any], statement: str) -> None:
    try:
        run(conn, statement)
    except (pymysql.OperationalError, pymysql.ProgrammingError) as exc:
        assert exc.args[0] in ACCESS_DENIED, exc
        return
    pytest.fail(f"{statement!r} was allowed")


def admin(mariadb_admin_url: str) -> MariaDBProvider:
    return MariaDBProvider(mariadb_admin_url)


def catalog(provider: MariaDBProvider) -> tuple[set[str], set[str]]:
    with provider._admin() as cur:
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
        dbs = {r[0] for r in cur.fetchall()}
        cur.execute("SELECT CONCAT(User, '@', Host) FROM mysql.user")
        users = {r[0] for r in cur.fetchall()}
    return dbs, users


def test_a_tenant_works_on_its_own_database(make: Callable[..., Made]) -> None:
    _, creds = make()
    assert creds.url.startswith("mysql://") and creds.env_var == "DATABASE_URL"
    with connect(creds) as conn:
        run(conn, "CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT)")
        run(conn, "INSERT INTO notes (body) VALUES (%s)", ("hello",))
        run(conn, "CREATE INDEX notes_body ON notes (body(10))")
        run(conn, "CREATE VIEW v AS SELECT body FROM notes")
        run(conn, "CREATE TEMPORARY TABLE scratch (x INT)")
        assert run(conn, "SELECT body FROM v") == (("hello",),)


def test_the_user_has_no_power_beyond_its_database(make: Callable[..., Made]) -> None:
    _, creds = make()
    with connect(creds) as conn:
        shown = {r[0] for r in run(conn, "SHOW DATABASES")}
        assert shown == {"information_schema", creds.database}
        assert run(conn, "SELECT LOAD_FILE('/etc/passwd')") == ((None,),)
        for statement in (
            "SELECT * FROM mysql.user",
            "USE mysql",
            "CREATE DATABASE intruder",
            "CREATE USER intruder IDENTIFIED BY 'x'",
            f"GRANT ALL ON *.* TO '{creds.username}'@'%'",
            f"GRANT SELECT ON {creds.database}.* TO 'someone'@'%'",
            "SET GLOBAL max_connections = 1",
            "SELECT 1 INTO OUTFILE '/tmp/berth-mariadb-escape'",
            "SHUTDOWN",
            "CREATE DATABASE `bdx_y`",
        ):
            refused(conn, statement)
        processes = run(conn, "SELECT USER FROM information_schema.PROCESSLIST")
        assert {r[0] for r in processes} == {creds.username}


def test_a_tenant_cannot_reach_another_tenants_database(make: Callable[..., Made]) -> None:
    _, a = make()
    _, b = make()
    with connect(b) as conn:
        run(conn, "CREATE TABLE secrets (v TEXT)")
        run(conn, "INSERT INTO secrets VALUES ('b-only')")
    # A's user on B's database: refused at connect.
    with pytest.raises(pymysql.OperationalError) as caught:
        connect(a, database=b.database)
    assert caught.value.args[0] == 1044
    with pytest.raises(pymysql.OperationalError) as caught:
        connect(b, password=a.password)
    assert caught.value.args[0] == 1045
    with connect(a) as conn:
        for statement in (
            f"SELECT * FROM {b.database}.secrets",
            f"INSERT INTO {b.database}.secrets VALUES ('a')",
            f"DELETE FROM {b.database}.secrets",
            f"DROP TABLE {b.database}.secrets",
            f"CREATE TABLE {b.database}.planted (x INT)",
            f"RENAME TABLE {b.database}.secrets TO {a.database}.stolen",
            f"CREATE TABLE copied AS SELECT * FROM {b.database}.secrets",
            f"USE {b.database}",
            f"DROP DATABASE {b.database}",
        ):
            refused(conn, statement)
        seen = run(
            conn, "SELECT TABLE_SCHEMA FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
            (b.database,),
        )  # fmt: skip
        assert seen == ()
    with connect(b) as conn:
        assert run(conn, "SELECT v FROM secrets") == (("b-only",),)


def test_the_connection_limit_holds(make: Callable[..., Made]) -> None:
    _, creds = make(connection_limit=2)
    first, second = connect(creds), connect(creds)
    try:
        with pytest.raises(pymysql.OperationalError) as caught:
            connect(creds)
        assert caught.value.args[0] == 1226  # max_user_connections
    finally:
        first.close()
        second.close()


def test_rotate_refuses_the_old_password(
    make: Callable[..., Made], provider: MariaDBProvider
) -> None:
    account, old = make()
    session = connect(old)
    try:
        new = provider.rotate_password(account)
        assert new.password != old.password
        with pytest.raises(pymysql.OperationalError) as caught:
            connect(old)
        assert caught.value.args[0] == 1045
        with connect(new) as conn:
            assert run(conn, "SELECT 1") == ((1,),)
        assert run(session, "SELECT 2") == ((2,),)
    finally:
        session.close()


def test_drop_removes_the_database_and_user(provider: MariaDBProvider) -> None:
    account = Account(tenant_id=unique_id(), database_id=unique_id(), name="gone", engine="mariadb")
    try:
        creds = provider.create(account)
        with pytest.raises(DatabaseExists):
            provider.create(account)
        session = connect(creds)
        run(session, "CREATE TABLE t (x INT)")
        provider.drop(account)
        with pytest.raises(pymysql.OperationalError):
            run(session, "SELECT 1")
        dbs, users = catalog(provider)
        assert account.names.database not in dbs
        assert not any(u.startswith(account.names.user + "@") for u in users)
        assert not provider.exists(account)
        provider.drop(account)
    finally:
        provider.drop(account)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_and_nothing_is_created(
    name: object, provider: MariaDBProvider
) -> None:
    before = catalog(provider)
    with pytest.raises(InvalidDatabaseName):
        provider.create(
            Account(tenant_id=unique_id(), database_id=unique_id(), name=name, engine="mariadb")  # type: ignore[arg-type]
        )
    assert catalog(provider) == before


def test_identifiers_are_only_derived_names() -> None:
    assert quote_ident("bdabc123") == "`bdabc123`"
    for bad in ("a_b", "a%b", "a`b", "A", "", "x" * 65):
        with pytest.raises(ValueError):
            quote_ident(bad)


def test_over_quota_refuses_writes_and_reads_go_on(
    make: Callable[..., Made], provider: MariaDBProvider
) -> None:
    account, creds = make()
    with connect(creds) as conn:
        run(conn, "CREATE TABLE filler (id INT AUTO_INCREMENT PRIMARY KEY, body LONGTEXT)")
        run(
            conn,
            "CREATE PROCEDURE sneak() SQL SECURITY DEFINER INSERT INTO filler (body) VALUES ('s')",
        )
        empty = provider.usage(account).bytes_used
        for _ in range(20):
            run(conn, "INSERT INTO filler (body) VALUES (REPEAT(MD5(RAND()), 4096))")
    used = provider.usage(account)
    assert used.bytes_used > empty and used.bytes_used >= 2_000_000
    session = connect(creds)
    provider.set_write_allowed(account, False)
    provider.set_write_allowed(account, False)  # idempotent
    with pytest.raises(pymysql.OperationalError):
        run(session, "SELECT 1")  # the open session was ended
    session.close()
    with connect(creds) as conn:
        assert run(conn, "SELECT COUNT(*) FROM filler") == ((20,),)
        for statement in (
            "INSERT INTO filler (body) VALUES ('x')",
            "UPDATE filler SET body = 'y'",
            "CREATE TABLE more (x INT)",
            "ALTER TABLE filler ADD COLUMN c INT",
            "CREATE INDEX i ON filler (id)",
            "CREATE TEMPORARY TABLE tmp (x INT)",
            "CALL sneak()",
            "REPLACE INTO filler (id, body) VALUES (1, 'r')",
        ):
            refused(conn, statement)
        run(conn, "DELETE FROM filler WHERE id > 10")  # freeing space is allowed
        assert run(conn, "SELECT COUNT(*) FROM filler") == ((10,),)
    provider.set_write_allowed(account, True)
    provider.set_write_allowed(account, True)
    with connect(creds) as conn:
        run(conn, "INSERT INTO filler (body) VALUES ('back')")
        run(conn, "CALL sneak()")
        run(conn, "CREATE TABLE more (x INT)")
        assert run(conn, "SELECT COUNT(*) FROM filler") == ((12,),)
