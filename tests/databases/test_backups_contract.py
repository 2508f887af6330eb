"""What every engine's backups promise (berth.databases.backup.Backups), on each real server and
on the fake the API tests use: a dump's fingerprint is the source's, its verification (restored
into a scratch database) gives the same, a restore into another database gives the same
content, a damaged file or a failing dump tool is a BackupFailed, and the scratch database is
gone afterwards whatever happened."""

from __future__ import annotations

import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from berth.databases.backup import BackupFailed, Backups, Tools, scratch_names
from berth.databases.backup_providers import backups_for
from berth.databases.names import Engine
from berth.databases.provider import Account, Credentials, Provider
from berth.databases.providers import provider_for
from tests.databases.backup_data import fill, snapshot
from tests.databases.conftest import unique_id
from tests.databases.fake_provider import FakeProvider

SHARED: list[Engine] = ["postgres", "mariadb", "redis"]
FAKE = "fake"


class Subject:
    def __init__(self, engine: Engine, provider: Provider, backups: Backups, url: str) -> None:
        self.engine, self.provider, self.backups, self.url = engine, provider, backups, url
        self.made: list[Account] = []

    def account(self) -> tuple[Account, Credentials]:
        made = Account(
            tenant_id=unique_id(), database_id=unique_id(), name="backup", engine=self.engine
        )
        self.made.append(made)
        return made, self.provider.create(made)

    def fill(self, account: Account, creds: Credentials, rows: int, tag: str = "a") -> None:
        if isinstance(self.provider, FakeProvider):
            self.provider.databases[account.names.database].tables = {
                "items": [f"{tag}-{i}" for i in range(rows)], "odd": ["", "ü"],
            }  # fmt: skip
        else:
            fill(self.engine, creds, rows, tag)

    def content(self, account: Account, creds: Credentials) -> object:
        if isinstance(self.provider, FakeProvider):
            return self.provider.databases[account.names.database].tables
        return snapshot(self.engine, creds)


@pytest.fixture(params=[*SHARED, FAKE])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == FAKE:
        fake = FakeProvider("postgres")
        made = Subject("postgres", fake, fake, "")
    else:
        engine: Engine = request.param
        url = str(request.getfixturevalue(f"{engine}_admin_url"))
        made = Subject(engine, provider_for(engine, url), backups_for(engine, url), url)
    yield made
    for account in made.made:
        made.provider.drop(account)


def _no_scratch(subject: Subject, account: Account) -> None:
    """Nothing of the scratch database is left on the server."""
    scratch = scratch_names(account)
    if subject.engine == "postgres" and subject.url:
        with psycopg.connect(subject.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM pg_database WHERE datname = %s)"
                " + (SELECT count(*) FROM pg_roles WHERE rolname = %s)",
                (scratch.database, scratch.user),
            ).fetchone()
            assert row == (0,)
    elif subject.engine == "mariadb":
        from berth.databases.mariadb import MariaDBProvider

        with MariaDBProvider(subject.url)._admin() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (scratch.database,),
            )
            assert cur.fetchone() == (0,)
    elif subject.engine == "redis":
        r = redis.Redis.from_url(subject.url)
        try:
            assert list(r.scan_iter(match=f"{scratch.key_prefix}*")) == []
        finally:
            r.close()


def test_round_trip_equal(subject: Subject, tmp_path: Path) -> None:
    source, creds = subject.account()
    subject.fill(source, creds, 300)
    before = subject.content(source, creds)
    path = tmp_path / "one.dump"
    dumped = subject.backups.dump(source, path)
    assert dumped and all(v[0] for v in dumped.values())  # every table has rows
    assert subject.backups.verify(source, path) == dumped
    _no_scratch(subject, source)

    # into another database (the tenant's new one): the same content, the same fingerprint
    target, target_creds = subject.account()
    subject.backups.restore(source, target, path)
    assert subject.content(target, target_creds) == before
    assert subject.backups.dump(target, tmp_path / "two.dump") == dumped

    # into the same database, after it changed: back to what the backup holds
    subject.fill(source, creds, 20, tag="b")
    assert subject.backups.dump(source, tmp_path / "changed.dump") != dumped
    subject.backups.restore(source, source, path)
    assert subject.content(source, creds) == before
    assert subject.backups.dump(source, tmp_path / "again.dump") == dumped


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_file_fails_verification(subject: Subject, tmp_path: Path, damage: str) -> None:
    source, creds = subject.account()
    subject.fill(source, creds, 200)
    path = tmp_path / "one.dump"
    subject.backups.dump(source, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(BackupFailed) as caught:
        subject.backups.verify(source, path)
    assert caught.value.status == 502 and caught.value.message
    _no_scratch(subject, source)
    # and a restore of it changes nothing it could not finish (the staging copy goes first)
    if subject.engine == "postgres":
        before = subject.content(source, creds)
        with pytest.raises(BackupFailed):
            subject.backups.restore(source, source, path)
        assert subject.content(source, creds) == before


@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
def test_a_failing_dump_tool_fails_the_backup(
    engine: Engine, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue(f"{engine}_admin_url"))
    broken = tmp_path / "broken-dump"
    broken.write_text("#!/bin/sh\necho 'disk on fire' >&2\nexit 3\n")
    broken.chmod(stat.S_IRWXU)
    tool = {"postgres": "pg_dump", "mariadb": "mariadb_dump"}[engine]
    backups = backups_for(engine, url, Tools(**{tool: str(broken)}))
    provider = provider_for(engine, url)
    account = Account(tenant_id=unique_id(), database_id=unique_id(), name="b", engine=engine)
    provider.create(account)
    try:
        with pytest.raises(BackupFailed) as caught:
            backups.dump(account, tmp_path / "out.dump")
        assert "exited with 3" in caught.value.message and "disk on fire" in caught.value.message
        password = url.split(":")[2].split("@")[0]
        assert password not in caught.value.message
    finally:
        provider.drop(account)


def test_a_missing_tool_is_a_clear_failure(postgres_admin_url: str, tmp_path: Path) -> None:
    assert shutil.which("no-such-pg-dump") is None
    backups = backups_for("postgres", postgres_admin_url, Tools(pg_dump="no-such-pg-dump"))
    account = Account(tenant_id=unique_id(), database_id=unique_id(), name="b", engine="postgres")
    provider = provider_for("postgres", postgres_admin_url)
    provider.create(account)
    try:
        with pytest.raises(BackupFailed, match="not installed"):
            backups.dump(account, tmp_path / "out.dump")
    finally:
        provider.drop(account)


def _writer(
    engine: Engine, creds: Credentials, stop: threading.Event, going: threading.Event,
    wrote: list[int],
) -> None:  # fmt: skip
    """The tenant's app, writing as fast as it can until told to stop (``going`` once it has
    written a few)."""
    import pymysql

    i = 0
    if engine == "postgres":
        with psycopg.connect(creds.url, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO items (name) VALUES (%s)", (f"live-{i}",))
                i += 1
                if i == 20:
                    going.set()
    elif engine == "mariadb":
        conn = pymysql.connect(
            host=creds.host, port=creds.port, user=creds.username, password=creds.password,
            database=creds.database, autocommit=True,
        )  # fmt: skip
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("INSERT INTO items (name) VALUES (%s)", (f"live-{i}",))
                    i += 1
                    if i == 20:
                        going.set()
        finally:
            conn.close()
    else:
        r = redis.Redis.from_url(creds.url)
        try:
            while not stop.is_set():
                r.set(f"{creds.key_prefix}live:{i % 50}", i)  # rewrites as well as adds
                r.sadd(f"{creds.key_prefix}set", i)
                i += 1
                if i == 20:
                    going.set()
        finally:
            r.close()
    wrote.append(i)


@pytest.mark.parametrize("engine", SHARED)
def test_writes_during_the_dump_still_verify(
    engine: Engine, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL: the dump and the fingerprint share one snapshot; MariaDB: the tenant's writes
    wait while both are taken; Redis: each key is read atomically and the fingerprint is of
    what the file holds. Either way the verification finds the same content."""
    url = str(request.getfixturevalue(f"{engine}_admin_url"))
    provider, backups = provider_for(engine, url), backups_for(engine, url)
    account = Account(tenant_id=unique_id(), database_id=unique_id(), name="live", engine=engine)
    creds = provider.create(account)
    stop, going, wrote = threading.Event(), threading.Event(), []
    try:
        fill(engine, creds, 2000)
        thread = threading.Thread(target=_writer, args=(engine, creds, stop, going, wrote))
        thread.start()
        try:
            assert going.wait(timeout=60), "the writer did not get going"
            dumped = backups.dump(account, tmp_path / "live.dump")
        finally:
            stop.set()
            thread.join(timeout=60)
        assert wrote and wrote[0] > 0
        assert backups.verify(account, tmp_path / "live.dump") == dumped
    finally:
        provider.drop(account)
