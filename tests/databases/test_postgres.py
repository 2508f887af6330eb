"""PostgreSQL provider against a real PostgreSQL 15 started by the tests: isolation between two
tenants' databases on one server, rotation, drop, hostile names, and the size quota."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from berth.databases.errors import DatabaseExists, DatabaseServerUnsafe, InvalidDatabaseName
from berth.databases.postgres import PostgresProvider
from berth.databases.provider import Account, Credentials
from berth.databases.quota import write_allowed
from tests.databases.conftest import unique_id
from tests.databases.hostile import HOSTILE_NAMES

Made = tuple[Account, Credentials]


@pytest.fixture(scope="module")
def provider(postgres_admin_url: str) -> PostgresProvider:
    p = PostgresProvider(postgres_admin_url)
    p.check()
    p.prepare()
    return p


@pytest.fixture
def make(provider: PostgresProvider) -> Iterator[Callable[..., Made]]:
    made: list[Account] = []

    def _make(name: str = "app-db", connection_limit: int = 5) -> Made:
        account = Account(
            tenant_id=unique_id(), database_id=unique_id(), name=name, engine="postgres",
            connection_limit=connection_limit,
        )  # fmt: skip
        made.append(account)
        return account, provider.create(account)

    yield _make
    for account in made:
        provider.drop(account)


def connect(creds: Credentials, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(creds.url, connect_timeout=5, autocommit=True, **kwargs)


def admin(url: str, dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(url, dbname=dbname, autocommit=True)


def catalog(url: str) -> tuple[set[str], set[str]]:
    with admin(url) as conn:
        dbs = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
    return dbs, roles


def test_a_tenant_works_on_its_own_database(make: Callable[..., Made]) -> None:
    _, creds = make()
    assert creds.env_var == "DATABASE_URL" and creds.url.startswith("postgresql://")
    with connect(creds) as conn:
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes (body) VALUES (%s)", ("hello",))
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.t (x int)")
        assert conn.execute("SELECT body FROM notes").fetchall() == [("hello",)]


def test_the_role_has_no_power_beyond_its_database(
    make: Callable[..., Made], postgres_admin_url: str
) -> None:
    account, creds = make(connection_limit=3)
    with admin(postgres_admin_url) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,"
            " rolconnlimit FROM pg_roles WHERE rolname = %s",
            (account.names.user,),
        ).fetchone()
        assert row == (False, False, False, False, False, 3)
        acl = conn.execute(
            "SELECT datacl::text FROM pg_database WHERE datname = %s", (account.names.database,)
        ).fetchone()
    assert acl is not None and "=Tc/" not in acl[0] and "=c/" not in acl[0]  # nothing for PUBLIC
    with connect(creds) as conn:
        for statement in (
            f"ALTER ROLE {account.names.user} SUPERUSER",
            f"ALTER ROLE {account.names.user} CREATEDB",
            "CREATE ROLE intruder LOGIN",
            "CREATE DATABASE intruder",
            "CREATE EXTENSION dblink",
            "CREATE EXTENSION postgres_fdw",
            "COPY (SELECT 1) TO '/tmp/berth-pg-escape'",
            "SELECT pg_read_file('/etc/passwd')",
            "ALTER SYSTEM SET max_connections = 5",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_a_tenant_cannot_reach_another_tenants_database(
    make: Callable[..., Made], postgres_admin_url: str
) -> None:
    a_account, a = make()
    b_account, b = make()
    with connect(b) as conn:
        conn.execute("CREATE TABLE secrets (v text)")
        conn.execute("INSERT INTO secrets VALUES ('b-only')")
    # A's role on B's database, and on the server's own databases: refused at connect.
    for dbname in (b.database, "postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            connect(a, dbname=dbname)
    # A's password is not B's, and B's role does not take A's password.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(b, password=a.password)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(a, user=b.username)
    with connect(a) as conn:
        # No way from A's session into B's role or data.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SET ROLE {b.username}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"GRANT {b.username} TO {a.username}")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM secrets")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute(f"SELECT * FROM {b.database}.public.secrets")
        # What every role sees: the (opaque) names of databases and roles; other sessions
        # without their query text.
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        assert b.database in names and b_account.name not in names
        with connect(b) as b_session:
            b_session.execute("SELECT 'b-query-text'")
            seen = conn.execute(
                "SELECT query FROM pg_stat_activity WHERE usename = %s", (b.username,)
            ).fetchall()
        assert seen and all(q == "<insufficient privilege>" for (q,) in seen)
        assert a_account.names.user != b_account.names.user


def test_the_connection_limit_holds(make: Callable[..., Made]) -> None:
    _, creds = make(connection_limit=2)
    first, second = connect(creds), connect(creds)
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            connect(creds)
    finally:
        first.close()
        second.close()


def test_rotate_refuses_the_old_password_and_keeps_open_sessions(
    make: Callable[..., Made], provider: PostgresProvider
) -> None:
    account, old = make()
    session = connect(old)
    try:
        new = provider.rotate_password(account)
        assert new.password != old.password and new.username == old.username
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(old)
        with connect(new) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert session.execute("SELECT 2").fetchone() == (2,)
    finally:
        session.close()


def test_drop_removes_the_database_and_role(
    provider: PostgresProvider, postgres_admin_url: str
) -> None:
    account = Account(
        tenant_id=unique_id(), database_id=unique_id(), name="gone", engine="postgres"
    )
    try:
        creds = provider.create(account)
        with pytest.raises(DatabaseExists):
            provider.create(account)
        session = connect(creds)  # a session still open does not stop the drop
        provider.drop(account)
        session.close()
        dbs, roles = catalog(postgres_admin_url)
        assert account.names.database not in dbs
        assert account.names.user not in roles and account.names.owner not in roles
        assert not provider.exists(account)
        with pytest.raises(psycopg.OperationalError):
            connect(creds)
        provider.drop(account)  # a second drop is a no-op
    finally:
        provider.drop(account)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_and_nothing_is_created(
    name: object, provider: PostgresProvider, postgres_admin_url: str
) -> None:
    before = catalog(postgres_admin_url)
    with pytest.raises(InvalidDatabaseName) as caught:
        provider.create(
            Account(tenant_id=unique_id(), database_id=unique_id(), name=name, engine="postgres")  # type: ignore[arg-type]
        )
    assert caught.value.status == 422 and caught.value.code == "invalid_database_name"
    assert catalog(postgres_admin_url) == before


def refused(conn: psycopg.Connection[Any], statement: str) -> None:
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return
    pytest.fail(f"{statement!r} succeeded over quota")


def _fill(conn: psycopg.Connection[Any], rows: int) -> None:
    conn.execute(
        "INSERT INTO blob (body) SELECT (SELECT string_agg(md5(random()::text || i || g), '')"
        " FROM generate_series(1, 32) i) FROM generate_series(1, %s) g",
        (rows,),
    )


def test_over_quota_refuses_writes_the_tenant_cannot_undo_and_reads_go_on(
    make: Callable[..., Made], provider: PostgresProvider
) -> None:
    account, creds = make()
    with connect(creds) as conn:
        conn.execute("CREATE TABLE blob (id serial PRIMARY KEY, body text)")
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.t (x int)")
        conn.execute("INSERT INTO app.t VALUES (7)")
        # A rule runs as the table's owner: were DELETE left to the tenant, this would write.
        conn.execute("CREATE RULE keep AS ON DELETE TO blob DO ALSO INSERT INTO app.t VALUES (0)")
        conn.execute(
            "CREATE FUNCTION sneak() RETURNS void LANGUAGE sql SECURITY DEFINER"
            " AS 'INSERT INTO blob (body) VALUES (''sneaked'')'"
        )
        _fill(conn, 200)
    used = provider.usage(account)
    assert used.bytes_used > 0
    limit = used.bytes_used - 1  # the plan's limit, just under what is stored now
    assert not write_allowed(provider.usage(account).bytes_used, limit, currently_allowed=True)
    session = connect(creds)
    provider.set_write_allowed(account, False)
    provider.set_write_allowed(account, False)  # idempotent
    # The session that was open is ended; new ones read, and cannot write by any route.
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    with connect(creds) as conn:
        assert conn.execute("SELECT count(*) FROM blob").fetchone() == (200,)
        assert conn.execute("SELECT count(*) FROM app.t").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            _fill(conn, 1)
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("SET transaction_read_only = off")
        # Not its table any more: PostgreSQL grants nothing (a warning), so INSERT stays refused.
        conn.execute(f"GRANT INSERT ON blob TO {creds.username}")
        for statement in (
            "INSERT INTO blob (body) VALUES ('x')",
            "UPDATE blob SET body = 'y' WHERE id = 1",
            "INSERT INTO app.t VALUES (1)",
            "CREATE TABLE more (x int)",
            "CREATE SCHEMA more",
            "CREATE TEMP TABLE tmp (x int)",
            "SELECT sneak()",
            "SELECT lo_from_bytea(0, 'large object bytes')",
            "SELECT lo_create(0)",
            "SELECT nextval('blob_id_seq')",
            f"ALTER TABLE blob OWNER TO {creds.username}",
            f"ALTER DATABASE {creds.database} RESET default_transaction_read_only",
            f"ALTER DATABASE {creds.database} OWNER TO {creds.username}",
        ):
            refused(conn, statement)
        refused(conn, "DELETE FROM blob WHERE id > 100")
        refused(conn, "SELECT * INTO copied FROM blob")
        refused(conn, "COPY blob (body) FROM STDIN")
        # It can still free space.
        conn.execute("TRUNCATE app.t")
    # Under quota again: writes, schema changes and its own routines work as before.
    provider.set_write_allowed(account, True)
    provider.set_write_allowed(account, True)
    with connect(creds) as conn:
        _fill(conn, 1)
        conn.execute("SELECT sneak()")
        conn.execute("CREATE TABLE more (x int)")
        conn.execute("INSERT INTO app.t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM blob").fetchone() == (202,)


def test_usage_counts_bytes_and_connections(
    make: Callable[..., Made], provider: PostgresProvider
) -> None:
    account, creds = make()
    empty = provider.usage(account)
    with connect(creds) as conn:
        conn.execute("CREATE TABLE blob (id serial PRIMARY KEY, body text)")
        _fill(conn, 2000)
        grown = provider.usage(account)
        assert grown.connections == 1
    assert grown.bytes_used > empty.bytes_used + 1_000_000  # 2,000 rows of 1 kB


def test_a_server_that_trusts_network_logins_is_refused(postgres_admin_url: str) -> None:
    with admin(postgres_admin_url) as conn:
        row = conn.execute("SHOW hba_file").fetchone()
        assert row is not None
        hba = Path(row[0])
        original = hba.read_text()
        try:
            hba.write_text("host all all 127.0.0.2/32 trust\n" + original)
            conn.execute("SELECT pg_reload_conf()")
            with pytest.raises(DatabaseServerUnsafe):
                PostgresProvider(postgres_admin_url).check()
        finally:
            hba.write_text(original)
            conn.execute("SELECT pg_reload_conf()")
    PostgresProvider(postgres_admin_url).check()
