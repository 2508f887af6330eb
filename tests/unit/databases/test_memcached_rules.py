"""Dedicated Memcached's pure rules: the plan an engine gets, the size bounds, the container's
name, command and limits, its URL, the stats it reads; and the local backend keeps a tenant
network a dedicated server holds."""

from __future__ import annotations

import pytest

from berth.databases import memcached_dedicated as memcached
from berth.databases.dedicated import is_server_name, server_name
from berth.databases.names import server_names
from berth.databases.provider import Account
from berth.errors import InvalidInput
from berth.runtime.fake import FakeRuntime
from berth.services import databases as svc
from berth.workloads.local import NETWORK_IDLE_SECONDS, LocalWorkloads, tenant_network

MB = 1024 * 1024


def account(size_mb: int | None = 64, connections: int = 20) -> Account:
    return Account("t0a1", "d0b2", "cache", "memcached", connections, size_mb)


@pytest.mark.parametrize(
    ("plan", "engine", "chosen"),
    [
        (None, "memcached", "dedicated"),
        ("dedicated", "memcached", "dedicated"),
        (None, "postgres", "shared"),
        ("shared", "redis", "shared"),
        ("dedicated", "postgres", "dedicated"),
        ("dedicated", "mariadb", "dedicated"),
        ("dedicated", "redis", "dedicated"),
    ],
)
def test_each_engine_gets_its_plan(plan: str | None, engine: str, chosen: str) -> None:
    assert svc._plan(plan, engine) == chosen  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("plan", "engine", "code"),
    [
        ("shared", "memcached", "plan_not_available"),
        ("gold", "memcached", "invalid_plan"),
        ("", "memcached", "invalid_plan"),
        (1, "redis", "invalid_plan"),
    ],
)
def test_a_plan_the_engine_cannot_have_is_refused(plan: object, engine: str, code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        svc._plan(plan, engine)  # type: ignore[arg-type]
    assert caught.value.code == code and caught.value.status == 422


@pytest.mark.parametrize("size", [0, -1, 15, 4097, 2**40, True, 1.5, "64"])
def test_a_size_out_of_bounds_is_refused(size: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        memcached.validate_size_mb(size)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_size"


def test_the_spec_holds_nothing_of_the_tenants_text_and_its_limits_come_from_the_plan() -> None:
    spec = memcached.spec_for(account(size_mb=128, connections=5), "berth/memcached:abc")
    digest = server_names("t0a1", "d0b2").database.removeprefix("bd")
    assert spec.name == spec.alias == f"berth-db-{digest}" and "cache" not in spec.name
    assert spec.network == tenant_network("t0a1") and spec.port == 11211
    assert spec.user == "65534:65534" and spec.image == "berth/memcached:abc"
    assert spec.command == (
        "-p", "11211", "-U", "0", "-l", "0.0.0.0", "-m", "128", "-c", "15", "-t", "2",
    )  # fmt: skip
    # Above -m by a quarter and 32 MB: the hash table, threads and buffers fit beside it.
    assert spec.memory_bytes == (128 + 32 + 32) * MB
    assert memcached.spec_for(account(size_mb=None), "i").command[7] == "64"  # the default


def test_container_names_are_checked() -> None:
    name = server_name(server_names("t", "d").database)
    assert is_server_name(name)
    for bad in ("berth-db-", "berth-db-XYZ", "nginx", f"{name}x", f"/{name}"):
        assert not is_server_name(bad)
    with pytest.raises(ValueError):
        server_name("bd../../etc")


def test_its_url_is_host_and_port_with_no_secret() -> None:
    creds = memcached.credentials_for(account())
    assert creds.url == f"{creds.host}:11211" and creds.password == creds.username == ""
    assert creds.env() == {"MEMCACHED_SERVERS": creds.url}


def test_stats_are_parsed_and_a_garbled_line_ignored() -> None:
    answer = b"STAT pid 1\r\nSTAT bytes 1234\r\nSTAT version 1.6.18\r\ngarbage\r\nEND\r\n"
    assert memcached.parse_stats(answer) == {"pid": "1", "bytes": "1234", "version": "1.6.18"}


def test_the_local_backend_keeps_a_network_a_dedicated_server_holds() -> None:
    now = [1000.0]
    runtime = FakeRuntime("inst-held", clock=lambda: now[0])
    held = {"berth-t-t1"}
    workloads = LocalWorkloads(runtime, clock=lambda: now[0], held_networks=lambda: set(held))
    try:
        runtime.ensure_network("berth-t-t1", {"berth.tenant": "t1"})
        runtime.ensure_network("berth-t-t2", {"berth.tenant": "t2"})
        workloads.apply([])
        now[0] += NETWORK_IDLE_SECONDS + 1
        workloads.apply([])
        assert runtime.list_networks() == ["berth-t-t1"]  # t2's went; t1's is held
        held.clear()  # its memcached was deleted
        workloads.apply([])
        now[0] += NETWORK_IDLE_SECONDS + 1
        workloads.apply([])
        assert runtime.list_networks() == []
    finally:
        workloads.close()


def test_a_backend_that_cannot_tell_what_is_held_removes_nothing() -> None:
    now = [1000.0]
    runtime = FakeRuntime("inst-held-unknown", clock=lambda: now[0])

    def unknown() -> set[str]:
        raise RuntimeError("the engine does not answer")

    workloads = LocalWorkloads(runtime, clock=lambda: now[0], held_networks=unknown)
    try:
        runtime.ensure_network("berth-t-t1", {"berth.tenant": "t1"})
        workloads.apply([])
        now[0] += NETWORK_IDLE_SECONDS + 1
        workloads.apply([])
        assert runtime.list_networks() == ["berth-t-t1"]
    finally:
        workloads.close()


def test_an_operators_server_cannot_take_a_dedicated_servers_name() -> None:
    from berth.services.databases_servers import validate_server_name

    assert validate_server_name("berth-dbx") == "berth-dbx"
    with pytest.raises(InvalidInput) as caught:
        validate_server_name(server_name(server_names("t", "d").database))
    assert caught.value.code == "invalid_name"
