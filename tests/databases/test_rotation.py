"""Rotation without a failed login, on the real servers: a client that opens a NEW connection
for every request keeps succeeding through rotations. The old credential logs in until it is
revoked, the new one from the moment ``add_credential`` returns; once revoked, the old one is
refused and its sessions are ended (PostgreSQL, MariaDB). An account made before rotations
overlapped (one login) moves to the pair on its first rotation, and the pair takes turns
(first -> a -> b -> a). Both logins are the account: what one creates the other reads and
writes, the size quota refuses both, and usage counts both."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import redis

from berth.databases.backup_providers import backups_for
from berth.databases.mariadb import MariaDBProvider
from berth.databases.names import Engine
from berth.databases.postgres import PostgresProvider
from berth.databases.provider import Account, Credentials, Provider
from berth.databases.redis_acl import RedisProvider
from berth.databases.rotation import logins
from tests.databases.conftest import unique_id

ENGINES: list[Engine] = ["postgres", "mariadb", "redis"]
PROVIDERS: dict[Engine, Callable[[str], Provider]] = {
    "postgres": PostgresProvider,
    "mariadb": MariaDBProvider,
    "redis": RedisProvider,
}
REQUESTS_PER_PHASE = 25


# -- one request = one new connection, per engine -------------------------------------------


def _pg(creds: Credentials) -> psycopg.Connection[Any]:
    return psycopg.connect(creds.url, connect_timeout=5, autocommit=True)


def _my(creds: Credentials) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=creds.host, port=creds.port, user=creds.username, password=creds.password,
        database=creds.database, autocommit=True, connect_timeout=5,
    )  # fmt: skip


def _rd(creds: Credentials) -> redis.Redis:
    return redis.Redis(
        host=creds.host, port=creds.port, username=creds.username, password=creds.password,
        socket_timeout=5, single_connection_client=True,
    )  # fmt: skip


def request_once(creds: Credentials) -> None:
    """A write and a read on a connection of its own, closed after (as a per-request app)."""
    if creds.engine == "postgres":
        with _pg(creds) as conn:
            conn.execute("INSERT INTO hits VALUES (1)")
            conn.execute("SELECT count(*) FROM hits").fetchone()
    elif creds.engine == "mariadb":
        conn = _my(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO hits VALUES (1)")
                cur.execute("SELECT COUNT(*) FROM hits")
        finally:
            conn.close()
    else:
        client = _rd(creds)
        try:
            client.incr(f"{creds.key_prefix}hits")
        finally:
            client.close()


def refused(creds: Credentials) -> bool:
    try:
        request_once(creds)
    except (psycopg.OperationalError, pymysql.err.OperationalError, redis.AuthenticationError):
        return True
    except redis.ResponseError as exc:  # WRONGPASS on some clients' paths
        return "WRONGPASS" in str(exc)
    return False


def prepare(creds: Credentials) -> None:
    if creds.engine == "postgres":
        with _pg(creds) as conn:
            conn.execute("CREATE TABLE hits (n int)")
    elif creds.engine == "mariadb":
        conn = _my(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE hits (n int)")
        finally:
            conn.close()


@dataclass
class PerRequestClient:
    """A thread doing ``request_once`` with fixed credentials until stopped."""

    creds: Credentials
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> PerRequestClient:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                request_once(self.creds)
                self.ok += 1
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` requests succeeded (a guard against a hang, not a timing check)."""
        deadline = time.monotonic() + timeout
        while self.ok < count and not self.failures and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not self.failures, self.failures[:3]
        assert self.ok >= count, f"only {self.ok} requests before the guard's timeout"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def provider(engine: Engine, request: pytest.FixtureRequest) -> Provider:
    url = str(request.getfixturevalue(f"{engine}_admin_url"))
    return PROVIDERS[engine](url)


@pytest.fixture
def made(engine: Engine, provider: Provider) -> Iterator[tuple[Account, Credentials]]:
    account = Account(unique_id(), unique_id(), "rotating", engine, connection_limit=10)
    creds = provider.create(account)
    try:
        prepare(creds)
        yield account, creds
    finally:
        provider.drop(account)
        assert not provider.exists(account)


def _rotated_account(account: Account, creds: Credentials) -> Account:
    return replace(account, login=creds.username if account.engine != "redis" else "")


# -- the tests ------------------------------------------------------------------------------


def test_per_request_clients_never_fail_across_three_rotations(
    provider: Provider, made: tuple[Account, Credentials]
) -> None:
    account, creds = made
    names = account.names
    first, a, b = logins(names)
    expected = [a, b, a] if account.engine != "redis" else [first] * 3
    old_client = PerRequestClient(creds).start()
    counts = []
    try:
        old_client.wait_for(REQUESTS_PER_PHASE)
        for want in expected:
            rotated = provider.add_credential(account)
            new = rotated.credentials
            assert new.password != creds.password and new.username == want
            # The new one works from the moment the call returns, the old one still does.
            request_once(new)
            new_client = PerRequestClient(new).start()
            try:
                new_client.wait_for(REQUESTS_PER_PHASE)
                old_client.wait_for(old_client.ok + REQUESTS_PER_PHASE)
            finally:
                old_client.stop()
            assert old_client.failures == [], old_client.failures[:3]
            counts.append(old_client.ok)
            account = _rotated_account(account, new)
            provider.revoke_credential(account, rotated.retiring)
            provider.revoke_credential(account, rotated.retiring)  # idempotent
            assert refused(creds), f"the credential before the rotation to {want} still logs in"
            request_once(new)
            old_client, creds = new_client, new
        old_client.wait_for(old_client.ok + REQUESTS_PER_PHASE)
    finally:
        old_client.stop()
    assert old_client.failures == [], old_client.failures[:3]
    counts.append(old_client.ok)
    print(f"{account.engine}: per-request successes per credential {counts}, 0 failed")
    # The credentials handed out for the stored password are the current login's.
    assert provider.credentials(account, creds.password).url == creds.url


@pytest.mark.parametrize("paired", ["postgres", "mariadb"])
def test_revocation_ends_the_old_logins_sessions(
    paired: Engine, request: pytest.FixtureRequest
) -> None:
    provider = PROVIDERS[paired](str(request.getfixturevalue(f"{paired}_admin_url")))
    account = Account(unique_id(), unique_id(), "rotating", paired)
    creds = provider.create(account)
    try:
        rotated = provider.add_credential(account)
        after = _rotated_account(account, rotated.credentials)
        if paired == "postgres":
            with _pg(creds) as old_session, _pg(rotated.credentials) as new_session:
                provider.revoke_credential(after, rotated.retiring)
                with pytest.raises(psycopg.OperationalError):
                    old_session.execute("SELECT 1")
                assert new_session.execute("SELECT 1").fetchone() == (1,)
        else:
            old_my, new_my = _my(creds), _my(rotated.credentials)
            try:
                provider.revoke_credential(after, rotated.retiring)
                with pytest.raises(pymysql.err.OperationalError), old_my.cursor() as cur:
                    cur.execute("SELECT 1")
                with new_my.cursor() as cur:
                    cur.execute("SELECT 1")
                    assert cur.fetchone() == (1,)
            finally:
                new_my.close()
        assert refused(creds)
    finally:
        provider.drop(account)
    assert not provider.exists(account)


def _write(creds: Credentials, table: str) -> None:
    if creds.engine == "postgres":
        with _pg(creds) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1)")
    elif creds.engine == "mariadb":
        conn = _my(creds)
        try:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (1)")
        finally:
            conn.close()
    else:
        client = _rd(creds)
        try:
            client.set(f"{creds.key_prefix}{table}", "x")
        finally:
            client.close()


def _write_refused(creds: Credentials, table: str) -> bool:
    try:
        _write(creds, table)
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction):
        return True
    except pymysql.err.OperationalError as exc:
        return exc.args[0] == 1142  # INSERT command denied
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_both_logins_are_the_account_for_objects_quota_and_usage(
    provider: Provider, made: tuple[Account, Credentials], request: pytest.FixtureRequest
) -> None:
    account, old = made
    rotated = provider.add_credential(account)
    new = rotated.credentials
    after = _rotated_account(account, new)
    # What the new login creates, the old one uses (and the reverse), and the account owns it.
    if account.engine == "postgres":
        with _pg(new) as conn:
            conn.execute("CREATE TABLE made_by_new (n int)")
            row = conn.execute(
                "SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_new'"
            ).fetchone()
            assert row == (account.names.user,)
    elif account.engine == "mariadb":
        conn = _my(new)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE made_by_new (n int)")
        finally:
            conn.close()
    for creds in (old, new):
        _write(creds, "made_by_new" if account.engine != "redis" else "k")
        _write(creds, "hits" if account.engine != "redis" else "k2")
    # Over quota, neither login writes; under quota again, both do.
    provider.set_write_allowed(after, False)
    for creds in (old, new):
        assert _write_refused(creds, "made_by_new" if account.engine != "redis" else "k3")
        request_once_read(creds)
    provider.set_write_allowed(after, True)
    for creds in (old, new):
        _write(creds, "made_by_new" if account.engine != "redis" else "k4")
    # Usage counts the sessions of both logins.
    if account.engine == "postgres":
        with _pg(old), _pg(new):
            assert provider.usage(after).connections >= 2
    elif account.engine == "mariadb":
        first, second = _my(old), _my(new)
        try:
            assert provider.usage(after).connections >= 2
        finally:
            first.close()
            second.close()
    else:
        with _rd(old) as first, _rd(new) as second:
            first.ping()
            second.ping()
            assert provider.usage(after).connections >= 2
    provider.revoke_credential(after, rotated.retiring)
    assert refused(old)
    _write(new, "made_by_new" if account.engine != "redis" else "k5")


def request_once_read(creds: Credentials) -> None:
    """A read still works over quota."""
    if creds.engine == "postgres":
        with _pg(creds) as conn:
            conn.execute("SELECT count(*) FROM hits").fetchone()
    elif creds.engine == "mariadb":
        conn = _my(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM hits")
        finally:
            conn.close()
    else:
        client = _rd(creds)
        try:
            client.get(f"{creds.key_prefix}k")
        finally:
            client.close()


@pytest.mark.parametrize("paired", ["postgres", "mariadb"])
def test_a_restore_keeps_both_logins_out_meanwhile_and_working_after(
    paired: Engine, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A backup restored into an account in the middle of a rotation: both logins work after
    it, on the restored content (the restore locks and unlocks every login, not only the first)."""
    url = str(request.getfixturevalue(f"{paired}_admin_url"))
    provider, backups = PROVIDERS[paired](url), backups_for(paired, url)
    account = Account(unique_id(), unique_id(), "restored", paired)
    old = provider.create(account)
    try:
        prepare(old)
        rotated = provider.add_credential(account)
        after = _rotated_account(account, rotated.credentials)
        for creds in (old, rotated.credentials):
            request_once(creds)
        path = tmp_path / "backup.dump"
        backups.dump(after, path)
        request_once(rotated.credentials)  # a third row, gone with the restore
        backups.restore(after, after, path)
        for creds in (old, rotated.credentials):
            request_once(creds)  # both log in, write and read again
        if paired == "postgres":
            with _pg(rotated.credentials) as conn:
                assert conn.execute("SELECT count(*) FROM hits").fetchone() == (4,)
                owner = conn.execute(
                    "SELECT tableowner FROM pg_tables WHERE tablename = 'hits'"
                ).fetchone()
                assert owner == (account.names.user,)
        provider.revoke_credential(after, rotated.retiring)
        assert refused(old)
        request_once(rotated.credentials)
    finally:
        provider.drop(account)
    assert not provider.exists(account)
