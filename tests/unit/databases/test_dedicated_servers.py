"""Dedicated PostgreSQL, MariaDB and Redis, without an engine: the spec (pure), the admin URL's
address, the sizes, and a create that fails at any step (the runner mid-way, the server that
exits or never answers, the image, the account) leaving no row, container or volume behind.
The runner is tests/databases/dedicated_fakes.py's (its contract is the real runner's)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from berth.databases import dedicated_servers as ds
from berth.databases.dedicated import DedicatedNotAvailable, server_name
from berth.databases.errors import DatabaseServerError, DatabaseServerUnavailable
from berth.databases.provider import Account
from berth.errors import BerthError, InvalidInput
from berth.services import databases as svc
from berth.services.databases_access import ServerAddress
from berth.services.databases_dedicated import with_dedicated, with_dedicated_backups
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.store.tables import DbServer, ManagedDatabase, Tenant
from tests.databases.dedicated_fakes import STEPS, FakeDedicatedRunner
from tests.databases.fake_provider import FakeProvider

ENGINES = ("postgres", "mariadb", "redis")
GATEWAY = "10.99.0.1"


def _account(engine: str, size_mb: int | None = None) -> Account:
    return Account(secrets.token_hex(8), secrets.token_hex(8), "main", engine, 20, size_mb)  # type: ignore[arg-type]


# -- the spec, pure -------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_the_spec_is_the_launch_server_on_the_tenants_network(engine: str) -> None:
    account = _account(engine)
    password = secrets.token_hex(16)
    spec = ds.spec_for(account, "img", "berth-t-x", password, GATEWAY)
    assert spec.name == spec.alias == server_name(account.names.database)
    assert (spec.network, spec.port, spec.user) == ("berth-t-x", ds.PORTS[engine], "65534:65534")
    assert spec.volume == f"{spec.name}-data" and spec.data_dir == "/data"
    assert set(spec.tmpfs) == {"/tmp"}
    assert spec.memory_bytes == ds.container_memory_mb(engine, account.size_mb or 64) * 2**20
    # The admin's password is in the volume's files only: never in a command line.
    assert not any(password in word for word in spec.command)
    assert spec.init is None or not any(password in w for w in spec.init.command)
    written = [text for files in spec.files.values() for text in files.values()]
    if spec.init is not None:
        written += list(spec.init.files.values())
    if engine == "postgres":
        assert password in written  # initdb's password file
    elif engine == "mariadb":
        assert any(f"'berthadmin'@'{GATEWAY}'" in text for text in written)  # from the gateway
    else:
        assert any(text.startswith("user default off") for text in written)
    words = " ".join(spec.command)
    assert "0.0.0.0" in words  # the container's own addresses (its network, loopback)


def test_postgres_lets_the_admin_in_from_the_gateway_only() -> None:
    hba = ds.pg_hba(GATEWAY).splitlines()
    admin = [line for line in hba if " berthadmin " in line]
    assert admin == [
        f"host all berthadmin {GATEWAY}/32 scram-sha-256",
        "host all berthadmin 0.0.0.0/0 reject",
        "host all berthadmin ::/0 reject",
    ]
    assert hba.index(admin[0]) < hba.index("host all all 0.0.0.0/0 scram-sha-256")
    assert not [line for line in hba if "trust" in line]
    with pytest.raises(ValueError):
        ds.pg_hba("10.0.0.1/0 trust\nhost all all 0.0.0.0")


def test_redis_size_is_its_memory_and_sql_memory_is_fixed() -> None:
    assert "--maxmemory 48mb" in " ".join(
        ds.spec_for(_account("redis", 48), "i", "n", "p", GATEWAY).command
    )
    assert ds.container_memory_mb("redis", 48) == 48 + 16 + ds.REDIS_OVERHEAD_MB
    assert ds.container_memory_mb("postgres", 100_000) == ds.MEMORY_MB["postgres"]


def test_the_admin_url_names_the_alias_and_each_call_the_containers_address() -> None:
    url = ds.admin_url("postgres", "berth-db-" + "a" * 24, "Pw0rd")
    assert url == f"postgresql://berthadmin:Pw0rd@berth-db-{'a' * 24}:5432/postgres"
    assert ds.admin_password(url) == "Pw0rd"
    assert (
        ds.reachable(url, "172.18.0.5") == "postgresql://berthadmin:Pw0rd@172.18.0.5:5432/postgres"
    )
    redis = ds.admin_url("redis", "berth-db-" + "b" * 24, "x")
    assert ds.reachable(redis, "10.1.2.3") == "redis://berthadmin:x@10.1.2.3:6379/0"
    for bad in ("berth-db-x", "1.2.3.4/8", "::1", ""):
        with pytest.raises(ValueError):
            ds.reachable(url, bad)


@pytest.mark.parametrize(
    ("engine", "size", "ok"),
    [("redis", 16, True), ("redis", 4096, True), ("redis", 15, False), ("redis", 4097, False),
     ("postgres", 16, True), ("postgres", 1024 * 1024, True), ("postgres", 0, False),
     ("mariadb", -1, False), ("postgres", 2**40, False), ("redis", True, False),
     ("mariadb", "1G", False), ("redis", 1.5, False)],
)  # fmt: skip
def test_sizes(engine: str, size: object, ok: bool) -> None:
    if ok:
        assert ds.validate_size_mb(engine, size, shared_range=(16, 1024 * 1024)) == size  # type: ignore[arg-type]
        return
    with pytest.raises(InvalidInput) as caught:
        ds.validate_size_mb(engine, size, shared_range=(16, 1024 * 1024))  # type: ignore[arg-type]
    assert caught.value.code == "invalid_size" and caught.value.status == 422


# -- the provider over a fake runner --------------------------------------------------------


class Shared:
    """The engine's shared provider per admin URL, as the factory builds them: a fake, one
    per address (the container's), that can be told to be down or to fail the account."""

    def __init__(self) -> None:
        self.providers: dict[str, FakeProvider] = {}
        self.down = False
        self.fail_create = False
        self.urls: list[str] = []

    def __call__(self, engine: str, url: str, host: str, port: int) -> FakeProvider:
        self.urls.append(url)
        p = self.providers.setdefault(url, FakeProvider(engine, host=host, port=port))  # type: ignore[arg-type]
        p.available = not self.down
        if self.fail_create:

            def refuse(account: Account) -> None:
                raise DatabaseServerError("the fake refused the account")

            p.create = refuse  # type: ignore[method-assign,assignment]
        return p


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _provider(
    engine: str, runner: FakeDedicatedRunner, shared: Shared, account: Account, **extra: object
) -> ds.DedicatedServerProvider:
    alias = server_name(account.names.database)
    clock = Clock()
    return ds.DedicatedServerProvider(
        engine,  # type: ignore[arg-type]
        ds.admin_url(engine, alias, "secretpw"),  # type: ignore[arg-type]
        alias,
        ds.PORTS[engine],
        runner=runner,
        image=lambda e: f"berth/db-{e}:test",
        shared=shared,  # type: ignore[arg-type]
        clock=clock,
        sleep=clock.sleep,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_create_hands_the_account_to_the_shared_provider_at_the_containers_address(
    engine: str,
) -> None:
    runner, shared, account = FakeDedicatedRunner(), Shared(), _account(engine)
    p = _provider(engine, runner, shared, account)
    creds = p.create(account)
    alias = server_name(account.names.database)
    address = runner.servers[alias].address
    assert shared.urls and all(f"@{address}:" in url for url in shared.urls)
    assert creds.host == alias and creds.port == ds.PORTS[engine]  # the tenant's: the alias
    assert p.exists(account) and p.usage(account).bytes_used > 0
    runner.stop(alias)
    with pytest.raises(DatabaseServerUnavailable):
        p.usage(account)  # a stopped server is unavailable, never another address
    assert p.credentials(account, "pw").host == alias  # pure: no server needed
    p.drop(account)
    assert runner.names() == []


@pytest.mark.parametrize("step", STEPS)
def test_a_runner_failing_mid_way_leaves_nothing(step: str) -> None:
    runner, shared, account = FakeDedicatedRunner(fail_at=step), Shared(), _account("postgres")
    with pytest.raises(DatabaseServerError):
        _provider("postgres", runner, shared, account).create(account)
    assert runner.names() == [] and not runner.volumes


def test_a_server_that_exits_at_start_or_never_answers_is_removed() -> None:
    runner, shared, account = (
        FakeDedicatedRunner(exits_at_start=True),
        Shared(),
        _account("mariadb"),
    )
    shared.down = True
    with pytest.raises(DatabaseServerError) as exited:
        _provider("mariadb", runner, shared, account).create(account)
    assert "exited at its start" in exited.value.message and "last words" in exited.value.message
    assert runner.names() == []
    runner = FakeDedicatedRunner()
    with pytest.raises(DatabaseServerUnavailable) as silent:
        _provider("mariadb", runner, shared, account).create(account)
    assert "did not answer within 60 s" in silent.value.message
    assert runner.names() == [] and runner.runs  # it ran, then went


def test_an_account_the_server_refuses_removes_the_server() -> None:
    runner, shared, account = FakeDedicatedRunner(), Shared(), _account("redis")
    shared.fail_create = True
    with pytest.raises(DatabaseServerError):
        _provider("redis", runner, shared, account).create(account)
    assert runner.names() == []


def test_refused_creates_start_nothing() -> None:
    runner, shared, account = FakeDedicatedRunner(), Shared(), _account("postgres")
    with pytest.raises(DedicatedNotAvailable):
        _provider("postgres", runner, shared, account, refuse_create=lambda: "on a Swarm").create(
            account
        )
    with pytest.raises(ValueError):
        _provider("postgres", runner, shared, _account("postgres")).create(account)  # not its
    assert runner.runs == []


# -- the service: no row, container or volume after a failed create --------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'berth.db'}")
    migrate(engine)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def _tenant(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        tenant = Tenant(id=secrets.token_hex(8), name=f"t{secrets.token_hex(4)}")
        session.add(tenant)
        session.commit()
        return tenant.id


def _rows(session: Session) -> tuple[int, int]:
    return (
        session.scalar(select(func.count()).select_from(ManagedDatabase)) or 0,
        session.scalar(select(func.count()).select_from(DbServer)) or 0,
    )


def _shared_factory(shared: Shared):  # type: ignore[no-untyped-def]
    return lambda a: shared(a.engine, a.admin_url, a.host, a.port)


@pytest.mark.parametrize("step", [*STEPS, "image", "account"])
def test_a_failed_dedicated_create_is_a_409_or_503_and_keeps_nothing(
    sessions: sessionmaker[Session], step: str
) -> None:
    tenant = _tenant(sessions)
    runner, shared = FakeDedicatedRunner(fail_at=step if step in STEPS else ""), Shared()
    shared.fail_create = step == "account"

    def image(engine: str) -> str:
        if step == "image":
            raise DedicatedNotAvailable(f"dedicated {engine} servers are not available here")
        return "berth/db-postgres:test"

    factory = with_dedicated(runner, lambda: "", _shared_factory(shared), server_image=image)  # type: ignore[arg-type]
    spec = svc.NewDatabase("main", "postgres", "dedicated", None, None)
    with sessions() as session, pytest.raises(BerthError) as caught:
        svc.create_database(session, factory, tenant, spec)
    assert caught.value.status in (409, 502, 503)
    if step == "image":
        assert caught.value.status == 409 and caught.value.code == "dedicated_not_available"
    else:  # the tenant reads that it failed, not the server's words
        assert "database server" in caught.value.message and "fake" not in caught.value.message
    with sessions() as session:
        assert _rows(session) == (0, 0)
    assert runner.names() == [] and not runner.volumes
    # The same name once the runner works: created, and the row says so.
    runner.fail_at, shared.fail_create = "", False
    if step != "image":
        with sessions() as session:
            made = svc.create_database(session, factory, tenant, spec)
            assert (made.plan, made.engine) == ("dedicated", "postgres")
            assert _rows(session) == (1, 1) and len(runner.names()) == 1


def test_bad_sizes_and_plans_start_nothing(sessions: sessionmaker[Session]) -> None:
    tenant = _tenant(sessions)
    runner, shared = FakeDedicatedRunner(), Shared()
    factory = with_dedicated(
        runner, lambda: "", _shared_factory(shared), server_image=lambda e: "i"
    )  # type: ignore[arg-type]
    bad = [("postgres", 0), ("postgres", -5), ("mariadb", 2**40), ("redis", 8192), ("redis", True)]
    for engine, size in bad:
        with sessions() as session, pytest.raises(InvalidInput) as caught:
            svc.create_database(session, factory, tenant,
                                svc.NewDatabase("x", engine, "dedicated", size, None))  # type: ignore[arg-type]  # fmt: skip
        assert caught.value.code == "invalid_size"
    with sessions() as session, pytest.raises(InvalidInput) as plan:
        svc.create_database(session, factory, tenant, svc.NewDatabase("x", "postgres", "own"))
    assert plan.value.code == "invalid_plan"
    assert runner.runs == []
    with sessions() as session:
        assert _rows(session) == (0, 0)


def test_no_runner_refuses_dedicated_servers_and_backups_say_why() -> None:
    from berth.databases.backup import BackupFailed

    factory = with_dedicated(None, lambda: "")
    alias = "berth-db-" + "c" * 24
    address = ServerAddress("postgres", ds.admin_url("postgres", alias, "pw"), alias, 5432)
    with pytest.raises(DedicatedNotAvailable):
        factory(address)
    backups = with_dedicated_backups(None, lambda a: pytest.fail("reached the inner factory"))
    with pytest.raises(BackupFailed):
        backups(address)
    runner = FakeDedicatedRunner()
    seen: list[ServerAddress] = []
    with pytest.raises(BackupFailed):
        with_dedicated_backups(runner, seen.append)(address)  # type: ignore[arg-type]  # not running
    shared = ServerAddress(
        "postgres", "postgresql://a:b@db.example:5432/postgres", "db.example", 5432
    )
    with_dedicated_backups(runner, seen.append)(shared)  # type: ignore[arg-type]
    assert seen == [shared]  # a shared server's address as it is


def test_a_dedicated_server_counts_in_the_tenants_memory_quota(
    sessions: sessionmaker[Session],
) -> None:
    from berth.errors import QuotaExceeded
    from berth.services.billing import quota_usage
    from berth.store.tables import PlanRow

    with sessions() as session:
        plan = PlanRow(name=f"small-{secrets.token_hex(3)}", currency="EUR",
                       price_per_gb_hour_minor=0, price_per_cpu_hour_minor=0,
                       max_memory_mb=ds.MEMORY_MB["postgres"] + 100)  # fmt: skip
        session.add(plan)
        session.flush()
        tenant = Tenant(id=secrets.token_hex(8), name=f"t{secrets.token_hex(4)}", plan_id=plan.id)
        session.add(tenant)
        session.commit()
        tenant_id = tenant.id
    runner, shared = FakeDedicatedRunner(), Shared()
    factory = with_dedicated(
        runner, lambda: "", _shared_factory(shared), server_image=lambda e: "i"
    )  # type: ignore[arg-type]
    with sessions() as session:
        svc.create_database(session, factory, tenant_id,
                            svc.NewDatabase("pg", "postgres", "dedicated"))  # fmt: skip
        assert quota_usage(session, tenant_id).memory_mb == ds.MEMORY_MB["postgres"]
        with pytest.raises(QuotaExceeded):  # 64 MB of Redis: 64 + 21 + 32 MB more
            svc.create_database(session, factory, tenant_id,
                                svc.NewDatabase("r", "redis", "dedicated"))  # fmt: skip
    assert len(runner.names()) == 1


def test_the_sweep_removes_a_volume_a_create_cut_short_left(
    sessions: sessionmaker[Session],
) -> None:
    """Berth stopped between making a server's volume and its row: the volume alone is a
    leftover too, removed once past the grace; a database's own server stays."""
    from berth.services.databases_dedicated import sweep_leftovers

    tenant = _tenant(sessions)
    runner, shared = FakeDedicatedRunner(), Shared()
    factory = with_dedicated(
        runner, lambda: "", _shared_factory(shared), server_image=lambda e: "i"
    )  # type: ignore[arg-type]
    with sessions() as session:
        kept = svc.create_database(session, factory, tenant,
                                   svc.NewDatabase("kept", "postgres", "dedicated"))  # fmt: skip
        kept_name = svc.server_of(session, kept).name
    stray = "berth-db-" + "d" * 24
    runner.volumes[f"{stray}-data"] = runner.clock
    assert set(runner.names()) == {kept_name, stray}
    with sessions() as session:
        assert sweep_leftovers(session, runner, runner.clock + 10) == []  # young: in flight?
        assert sweep_leftovers(session, runner, runner.clock + 601) == [stray]
    assert runner.names() == [kept_name]


def test_a_deleted_dedicated_database_keeps_its_name_until_its_purge(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """Its server and volume go at the delete; its row (and so its final backup and name)
    stays for the retention, as a shared one's; the purge forgets it; a cache's name is free
    at once."""
    from berth.settings import Settings

    settings = Settings(home=tmp_path / "home")
    tenant = _tenant(sessions)
    runner, shared = FakeDedicatedRunner(), Shared()
    factory = with_dedicated(
        runner, lambda: "", _shared_factory(shared), server_image=lambda e: "i"
    )  # type: ignore[arg-type]
    spec = svc.NewDatabase("main", "postgres", "dedicated")
    with sessions() as session:
        svc.create_database(session, factory, tenant, spec)
        now = time.time()
        deleted = svc.delete_database(session, settings, factory, tenant, "main", now)
        assert deleted.state == "deleted"
        assert deleted.purge_after == now + settings.database_retention_days * 86400
        assert runner.names() == [] and not runner.volumes
        with pytest.raises(BerthError) as taken:
            svc.create_database(session, factory, tenant, spec)
        assert taken.value.code == "database_deleted"
        assert svc.purge_due(session, factory, now + 3600).purged == []
        assert len(svc.purge_due(session, factory, deleted.purge_after + 1).purged) == 1
        assert _rows(session) == (0, 0)
        again = svc.create_database(session, factory, tenant, spec)
        assert again.state == "active" and len(runner.names()) == 1
