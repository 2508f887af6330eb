"""What every provider promises (berth.databases.provider.Provider), run against each real
server, and against the fake provider the store and API tests will use."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from berth.databases.errors import (
    DatabaseExists,
    DatabaseNotFound,
    DatabaseServerUnavailable,
    InvalidDatabaseName,
)
from berth.databases.names import Engine
from berth.databases.provider import Account, Provider
from berth.databases.providers import EngineNotShared, provider_for
from tests.databases.conftest import unique_id
from tests.databases.fake_provider import FakeProvider
from tests.databases.servers import free_port

SHARED: list[Engine] = ["postgres", "redis", "mariadb"]
FAKE = "fake-postgres"


@pytest.fixture(params=SHARED)
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def admin_url(engine: Engine, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{engine}_admin_url"))


@pytest.fixture(params=[*SHARED, FAKE])
def subject(request: pytest.FixtureRequest) -> tuple[Engine, Provider]:
    """A provider (real, or the fake) and its engine, as tenants' apps are told to reach it."""
    if request.param == FAKE:
        return "postgres", FakeProvider("postgres", host="db-1.berth.internal", port=4242)
    engine: Engine = request.param
    url = str(request.getfixturevalue(f"{engine}_admin_url"))
    return engine, provider_for(engine, url, tenant_host="db-1.berth.internal", tenant_port=4242)


@pytest.fixture
def provider(subject: tuple[Engine, Provider]) -> Provider:
    p = subject[1]
    p.check()
    p.prepare()
    return p


@pytest.fixture
def engine_of(subject: tuple[Engine, Provider]) -> Engine:
    return subject[0]


@pytest.fixture
def account(engine_of: Engine, provider: Provider) -> Iterator[Account]:
    made = Account(
        tenant_id=unique_id(), database_id=unique_id(), name="contract", engine=engine_of
    )
    yield made
    provider.drop(made)


def test_the_lifecycle(engine_of: Engine, provider: Provider, account: Account) -> None:
    engine = engine_of
    assert provider.engine == engine
    assert not provider.exists(account)
    creds = provider.create(account)
    assert provider.exists(account)
    assert (creds.engine, creds.host, creds.port) == (engine, "db-1.berth.internal", 4242)
    assert creds.username == account.names.user and creds.password
    assert creds.env_var in creds.env() and "db-1.berth.internal:4242" in creds.url
    assert provider.credentials(account, creds.password) == creds
    with pytest.raises(DatabaseExists) as caught:
        provider.create(account)
    assert caught.value.status == 409
    rotated = provider.rotate_password(account)
    assert rotated.password != creds.password and rotated.username == creds.username
    # A lossless rotation: a second credential, then the first set aside is revoked (twice).
    second = provider.add_credential(account)
    assert second.credentials.password != rotated.password and second.retiring
    assert second.credentials.engine == creds.engine and second.credentials.host == creds.host
    if engine_of != "redis":
        account = replace(account, login=second.credentials.username)
    provider.revoke_credential(account, second.retiring)
    provider.revoke_credential(account, second.retiring)
    assert provider.credentials(account, second.credentials.password) == second.credentials
    usage = provider.usage(account)
    assert usage.bytes_used >= 0 and usage.connections == 0
    for allowed in (False, False, True, True):
        provider.set_write_allowed(account, allowed)
    provider.drop(account)
    assert not provider.exists(account)
    provider.drop(account)


def test_a_missing_database_is_not_found(provider: Provider, account: Account) -> None:
    for call in (
        lambda: provider.rotate_password(account),
        lambda: provider.add_credential(account),
        lambda: provider.usage(account),
        lambda: provider.set_write_allowed(account, False),
    ):
        with pytest.raises(DatabaseNotFound) as caught:
            call()
        assert caught.value.status == 404
    assert not provider.exists(account)


def test_an_unreachable_server_is_a_503(engine: Engine, admin_url: str) -> None:
    port = free_port()  # nothing listens there
    scheme = {"postgres": "postgresql", "redis": "redis", "mariadb": "mysql"}[engine]
    p = provider_for(engine, f"{scheme}://berthadmin:wrong@127.0.0.1:{port}/")
    with pytest.raises(DatabaseServerUnavailable) as caught:
        p.check()
    assert caught.value.status == 503


def test_wrong_admin_credentials_are_a_503(engine: Engine, admin_url: str) -> None:
    head, _, tail = admin_url.partition("@")
    wrong = head.rsplit(":", 1)[0] + ":not-the-password@" + tail
    with pytest.raises(DatabaseServerUnavailable):
        provider_for(engine, wrong).check()


def test_a_fake_server_that_is_down_is_a_503() -> None:
    with pytest.raises(DatabaseServerUnavailable):
        FakeProvider("postgres", available=False).check()


def test_memcached_is_never_shared() -> None:
    with pytest.raises(EngineNotShared) as caught:
        provider_for("memcached", "memcached://127.0.0.1:11211")
    assert caught.value.status == 422


def test_a_hostile_name_never_gets_an_account(engine: Engine) -> None:
    with pytest.raises(InvalidDatabaseName):
        Account(tenant_id=unique_id(), database_id=unique_id(), name="x'; --", engine=engine)
