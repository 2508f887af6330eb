"""Dedicated Memcached on the real engine: the API creates a tenant's memcached as a container
of the offline ``berth/memcached`` image on the tenant's own network. Tenant A's app container
(run by Berth's Docker runtime on A's network, with the URL its release's config got from
``db attach``) stores and reads a key; tenant B's container on B's network reaches it neither by
name nor by address; nothing of it is published on the host. Writing past its size evicts and
never takes the container past its memory limit (the cgroup's own figures). Rotate and backup
are refused, delete removes the container, and hostile input starts nothing."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from sqlalchemy import select

from berth.databases import memcached_dedicated as memcached
from berth.databases.dedicated import LABEL_DATABASE_SERVER
from berth.databases.dedicated_local import LocalDedicatedRunner
from berth.databases.memcached_dedicated import container_memory_bytes, parse_stats
from berth.databases.provider import Account
from berth.images.memcached_image import ensure_memcached_image
from berth.runtime.docker_driver import DockerRuntime
from berth.runtime.protocol import LABEL_INSTALLATION, LABEL_TENANT, ContainerSpec
from berth.services.databases_dedicated import sweep_leftovers, with_dedicated
from berth.store.tables import App, DbServer, ManagedDatabase, Release, new_id
from berth.workloads.local import tenant_network
from tests.api.conftest import Env, assert_error, build_env
from tests.databases.hostile import HOSTILE_NAMES

MB = 1024 * 1024
APP_SECONDS = 60.0  # an app container's whole run, bounded
PROBE_TIMEOUT = 3.0  # B's connect attempt: refused or timed out within this

pytestmark = [pytest.mark.docker, pytest.mark.store]


@dataclass
class World:
    env: Env
    runtime: DockerRuntime
    runner: LocalDedicatedRunner
    docker: docker.DockerClient
    image: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from berth.api.routes_databases import database_providers

    client = docker.from_env()
    cache = Path(os.environ.get("BERTH_CACHE_DIR", "/var/cache/berth"))
    image = ensure_memcached_image(client, cache).tag
    env = build_env(tmp_path_factory.mktemp("berth-memcached"))
    runtime = DockerRuntime(env.platform.installation)
    runner = LocalDedicatedRunner(runtime)
    env.app.dependency_overrides[database_providers] = lambda: with_dedicated(runner, lambda: image)
    try:
        yield World(env, runtime, runner, client, image)
    finally:
        # Everything this installation made on the engine, whatever a test left.
        for found in client.api.containers(
            all=True, filters={"label": f"{LABEL_INSTALLATION}={env.platform.installation}"}
        ):
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_container(found["Id"], force=True, v=True)
        for name in runtime.list_networks():
            with contextlib.suppress(Exception):
                runtime.remove_network(name)
        for c in env._clients.values():
            c.close()
        env.engine.dispose()
        client.close()


def _tenant_id(world: World, db_name: str, token: str) -> str:
    """The tenant id of the caller's database (its server's row is named by its alias)."""
    host = world.env.ok("GET", f"/databases/{db_name}", token)["host"]
    with world.env.db() as session:
        found = session.scalar(
            select(ManagedDatabase.tenant_id)
            .join(DbServer, DbServer.id == ManagedDatabase.server_id)
            .where(DbServer.name == host, ManagedDatabase.name == db_name)
        )
    assert found is not None, f"no row for {db_name}"
    return str(found)


def _release_config(world: World, app: str) -> dict[str, str]:
    with world.env.db() as session:
        found = session.scalar(select(App).where(App.name == app))
        assert found is not None and found.target_release_id
        release = session.get(Release, found.target_release_id)
        assert release is not None
        return dict(json.loads(release.config_json))


def _our_containers(world: World) -> list[str]:
    inst = world.env.platform.installation
    found = world.docker.api.containers(
        all=True, filters={"label": [f"{LABEL_INSTALLATION}={inst}", LABEL_DATABASE_SERVER]}
    )
    return sorted(n.lstrip("/") for c in found for n in c["Names"])


APP_SCRIPT = """
import json, os, socket
host, port = os.environ["MEMCACHED_SERVERS"].split(":")
out = {}
with socket.create_connection((host, int(port)), timeout=5) as s:
    s.sendall(b"set greeting 0 60 5\\r\\nhello\\r\\n")
    out["set"] = s.recv(100).decode()
    s.sendall(b"get greeting\\r\\n")
    answer = b""
    while not answer.endswith(b"END\\r\\n"):
        answer += s.recv(100)
    out["get"] = answer.decode()
print(json.dumps(out))
"""

INTRUDER_SCRIPT = """
import json, os, socket, time
out = {}
try:
    out["resolved"] = socket.getaddrinfo(os.environ["ALIAS"], 11211)[0][4][0]
except socket.gaierror as exc:
    out["resolved"] = None
    out["resolve_error"] = str(exc)
started = time.monotonic()
try:
    with socket.create_connection((os.environ["ADDRESS"], 11211), timeout=%(timeout)s) as s:
        s.sendall(b"get greeting\\r\\n")
        out["connect"] = "connected: " + s.recv(100).decode()
except OSError as exc:
    out["connect"] = type(exc).__name__
out["seconds"] = time.monotonic() - started
print(json.dumps(out))
"""


def _run_app(world: World, tenant_id: str, env: dict[str, str], script: str) -> dict[str, Any]:
    """A container as Berth runs an app's instance (its runtime, hardening and network), run
    to completion; what it printed."""
    network = tenant_network(tenant_id)
    world.runtime.ensure_network(network, {LABEL_TENANT: tenant_id})
    spec = ContainerSpec(
        name=f"berth-j3-app-{secrets.token_hex(4)}",
        image="berth/python:3",
        port=8080,
        memory_bytes=64 * MB,
        nano_cpus=500_000_000,
        pids_limit=64,
        network=network,
        labels={LABEL_TENANT: tenant_id},
        env=env,
        command=("python3", "-c", script),
    )
    info = world.runtime.run(spec)
    try:
        deadline = time.monotonic() + APP_SECONDS
        while True:
            now = world.runtime.inspect(info.id)
            if now is None or now.state in ("exited", "dead"):
                break
            assert time.monotonic() < deadline, "the app container did not finish"
            time.sleep(0.1)
        logs = world.runtime.logs(info.id).strip().splitlines()
        assert logs, "the app container printed nothing"
        result: dict[str, Any] = json.loads(logs[-1])
        return result
    finally:
        world.runtime.remove(info.id, stop_timeout=1)


def _create(world: World, token: str, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "engine": "memcached", **extra}
    made: dict[str, Any] = world.env.ok("POST", "/databases", token, json=body, status=201)
    return made


def test_reachable_from_its_tenant_only(world: World) -> None:
    env = world.env
    alice, bob = env.signup("mc-alice"), env.signup("mc-bob")
    made = _create(world, alice.session, "cache")
    assert (made["plan"], made["engine"], made["port"]) == ("dedicated", "memcached", 11211)
    alias = made["host"]
    assert alias.startswith("berth-db-") and "cache" not in alias
    tenant_a = _tenant_id(world, "cache", alice.session)
    # Bob's tenant exists on the engine as Berth makes it: his own network.
    bob_db = _create(world, bob.session, "other")
    tenant_b = _tenant_id(world, "other", bob.session)
    assert bob_db["host"] != alias

    creds = env.ok("GET", "/databases/cache/credentials", alice.session)
    assert creds["url"] == f"{alias}:11211" and creds["password"] == ""
    assert "only protection is your own network" in creds["note"]
    env.create_app(alice.session, "web")
    env.deploy(alice.session, "web")
    env.ok("POST", "/databases/cache/attachments", alice.session, json={"app": "web"})
    config = _release_config(world, "web")
    assert config["MEMCACHED_SERVERS"] == f"{alias}:11211"

    stored = _run_app(world, tenant_a, {"MEMCACHED_SERVERS": config["MEMCACHED_SERVERS"]},
                      APP_SCRIPT)  # fmt: skip
    assert stored == {"set": "STORED\r\n", "get": "VALUE greeting 0 5\r\nhello\r\nEND\r\n"}

    running = world.runner.find(alias)
    assert running is not None
    probe = INTRUDER_SCRIPT % {"timeout": PROBE_TIMEOUT}
    intruder = _run_app(world, tenant_b, {"ALIAS": alias, "ADDRESS": running.address}, probe)
    assert intruder["resolved"] is None, intruder  # the alias exists on A's network only
    assert intruder["connect"] in ("TimeoutError", "ConnectionRefusedError", "OSError"), intruder
    assert intruder["seconds"] <= PROBE_TIMEOUT + 1.0

    # Nothing published on the host: the public ingress (nginx) only routes to app instances'
    # published ports, and this container has none; it is on A's network and no other.
    attrs = world.docker.api.inspect_container(alias)
    assert not attrs["HostConfig"].get("PortBindings")
    assert not attrs["NetworkSettings"].get("Ports")
    assert set(attrs["NetworkSettings"]["Networks"]) == {tenant_network(tenant_a)}
    assert attrs["NetworkSettings"]["Networks"][tenant_network(tenant_a)]["Aliases"][0] == alias
    # Nor does the host forward to it: no NAT rule (a published port) names its address, and
    # no docker-proxy process does.
    nat = subprocess.run(
        ["iptables-save", "-t", "nat"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert running.address not in nat
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            words = cmdline.read_bytes().split(b"\0")
            if words and words[0].endswith(b"docker-proxy"):
                assert running.address.encode() not in words

    env.ok("DELETE", "/databases/cache/attachments/web", alice.session)
    env.ok("DELETE", "/databases/cache", alice.session)
    env.ok("DELETE", "/databases/other", bob.session)
    assert alias not in _our_containers(world)


def test_the_container_is_hardened(world: World) -> None:
    user = world.env.signup("mc-hard")
    made = _create(world, user.session, "hard", size_mb=32, connections=7)
    attrs = world.docker.api.inspect_container(made["host"])
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "65534:65534"
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["PidsLimit"] == memcached.PIDS_LIMIT
    assert host["Memory"] == host["MemorySwap"] == container_memory_bytes(32)
    assert not host.get("Binds") and not host.get("Mounts") and not attrs.get("Mounts")
    command = attrs["Config"]["Cmd"]
    assert command[command.index("-U") + 1] == "0"  # no UDP
    assert command[command.index("-m") + 1] == "32"
    assert command[command.index("-c") + 1] == "17"  # the plan's 7 and memcached's own 10
    labels = attrs["Config"]["Labels"]
    assert labels[LABEL_DATABASE_SERVER] == "memcached" and "berth.managed" not in labels
    assert labels[LABEL_INSTALLATION] == world.env.platform.installation
    # Every process of it (docker-init and memcached) runs as nobody, with no capability.
    pid = attrs["State"]["Pid"]
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert children, "memcached is not running under the container's init"
    for process in [pid, *map(int, children)]:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{process}/status").read_text().splitlines()
        )
        assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
        assert status["NoNewPrivs"].strip() == "1"
    world.env.ok("DELETE", "/databases/hard", user.session)


def _cgroup_memory(container_id: str) -> tuple[int, int, int]:
    """(limit, peak usage, OOM kills) of the container's memory cgroup, v2 or v1."""
    v2 = [
        Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope"),
        Path(f"/sys/fs/cgroup/docker/{container_id}"),
    ]
    for base in v2:
        if (base / "memory.max").exists():
            events = dict(
                line.split() for line in (base / "memory.events").read_text().splitlines()
            )
            peak_file = base / "memory.peak"
            peak = (
                int(peak_file.read_text())
                if peak_file.exists()
                else int((base / "memory.current").read_text())
            )
            return int((base / "memory.max").read_text()), peak, int(events.get("oom_kill", 0))
    v1 = Path(f"/sys/fs/cgroup/memory/docker/{container_id}")
    oom = dict(line.split() for line in (v1 / "memory.oom_control").read_text().splitlines())
    return (
        int((v1 / "memory.limit_in_bytes").read_text()),
        int((v1 / "memory.max_usage_in_bytes").read_text()),
        int(oom.get("oom_kill", 0)),
    )


def test_writing_past_its_size_evicts_within_the_limit(world: World) -> None:
    user = world.env.signup("mc-full")
    made = _create(world, user.session, "full", size_mb=16)
    running = world.runner.find(made["host"])
    assert running is not None
    value = secrets.token_bytes(100 * 1024)
    with socket.create_connection((running.address, 11211), timeout=10) as conn:
        reader = conn.makefile("rb")
        for i in range(640):  # 64 MB into a 16 MB cache
            conn.sendall(b"set k%d 0 0 %d\r\n" % (i, len(value)) + value + b"\r\n")
            assert reader.readline() == b"STORED\r\n"
        conn.sendall(b"get k639\r\n")
        assert reader.readline() == b"VALUE k639 0 %d\r\n" % len(value)
        assert reader.read(len(value) + 2) == value + b"\r\n"
        assert reader.readline() == b"END\r\n"
        conn.sendall(b"get k0\r\n")  # the oldest went first (LRU)
        assert reader.readline() == b"END\r\n"
        # Then 48 MB of tiny items: the most items, so the largest hash table, beside -m.
        tiny = b"t" * 200
        batch = b"".join(
            b"set t%d 0 0 %d noreply\r\n" % (i, len(tiny)) + tiny + b"\r\n" for i in range(1000)
        )
        for n in range(240):
            conn.sendall(batch.replace(b"set t", b"set %d-t" % n))
        conn.sendall(b"version\r\n")  # answered once every set before it is done
        assert reader.readline().startswith(b"VERSION ")
    stats = parse_stats(memcached.ask(running.address, b"stats\r\n"))
    assert int(stats["limit_maxbytes"]) == 16 * MB
    # Its items stay within -m (within a page of slack: memcached counts item bytes, not pages).
    assert int(stats["evictions"]) > 0 and int(stats["bytes"]) <= 17 * MB
    attrs = world.docker.api.inspect_container(made["host"])
    limit, peak, oom_kills = _cgroup_memory(attrs["Id"])
    assert limit == container_memory_bytes(16)
    assert peak < limit and oom_kills == 0
    assert attrs["State"]["Running"] and not attrs["State"]["OOMKilled"]
    usage = world.env.ok("GET", "/databases/full", user.session)
    assert usage["size_mb"] == 16
    world.env.ok("DELETE", "/databases/full", user.session)


def test_rotate_backup_and_plan_shared_are_refused_and_delete_frees_the_name(
    world: World,
) -> None:
    env = world.env
    user = env.signup("mc-refuse")
    made = _create(world, user.session, "sess")
    rotate = env.call("POST", "/databases/sess/rotate", user.session)
    assert "no password to rotate" in assert_error(rotate, 400, "nothing_to_rotate")["message"]
    backup = env.call("POST", "/databases/sess/backups", user.session)
    assert "no backups" in assert_error(backup, 400, "no_backups")["message"]
    shared = env.call(
        "POST", "/databases", user.session,
        json={"name": "s2", "engine": "memcached", "plan": "shared"},
    )  # fmt: skip
    assert "never on a shared server" in assert_error(shared, 422, "plan_not_available")["message"]
    assert made["host"] in _our_containers(world)
    deleted = env.ok("DELETE", "/databases/sess", user.session)
    assert deleted["state"] == "deleted"
    assert made["host"] not in _our_containers(world)
    # A cache keeps nothing after its delete: the name is free again at once.
    again = _create(world, user.session, "sess")
    assert again["host"] != made["host"] and again["host"] in _our_containers(world)
    env.ok("DELETE", "/databases/sess", user.session)
    assert again["host"] not in _our_containers(world)
    assert env.ok("GET", "/admin/db-servers", env.admin) == []  # not the operator's servers


def test_hostile_input_starts_nothing(world: World) -> None:
    env = world.env
    alice, mallory = env.signup("mc-owner"), env.signup("mc-mallory")
    before = _our_containers(world)
    for name in [*HOSTILE_NAMES, "a'b", "x;y", "caché"]:
        resp = env.call("POST", "/databases", mallory.session,
                        json={"name": name, "engine": "memcached"})  # fmt: skip
        assert_error(resp, 422)
    for size in (0, -1, 15, 4097, 2**40, True):
        resp = env.call("POST", "/databases", mallory.session,
                        json={"name": "sized", "engine": "memcached", "size_mb": size})  # fmt: skip
        assert_error(resp, 422, "invalid_size")
    assert _our_containers(world) == before
    assert env.ok("GET", "/databases", mallory.session) == []
    _create(world, alice.session, "private")
    env.create_app(mallory.session, "thief")
    stolen = env.call(
        "POST", "/databases/private/attachments", mallory.session, json={"app": "thief"}
    )
    assert_error(stolen, 404, "database_not_found")
    peek = env.call("GET", "/databases/private/credentials", mallory.session)
    assert_error(peek, 404, "database_not_found")
    env.ok("DELETE", "/databases/private", alice.session)
    assert _our_containers(world) == before


def test_leftovers_are_swept_and_the_network_a_server_holds_is_known(world: World) -> None:
    """A container with no row (Berth stopped between its start and its row's commit) goes
    with the sweep at start; a database's own stays, and its network is held."""
    user = world.env.signup("mc-sweep")
    kept = _create(world, user.session, "kept")
    tenant = _tenant_id(world, "kept", user.session)
    stray = memcached.spec_for(Account(tenant, new_id(), "stray", "memcached", 5, 16), world.image)
    world.runner.run(stray)
    assert {kept["host"], stray.name} <= set(world.runner.names())
    assert tenant_network(tenant) in world.runner.held_networks()
    created = world.runner.created_at(stray.name)
    assert created is not None and abs(created - time.time()) < 600
    with world.env.db() as session:
        # Young, it may be a create in flight: kept; past the grace, removed.
        assert sweep_leftovers(session, world.runner, time.time()) == []
        assert stray.name in world.runner.names()
        later = time.time() + 601
        assert sweep_leftovers(session, world.runner, later) == [stray.name]
    assert kept["host"] in _our_containers(world) and stray.name not in _our_containers(world)
    world.env.ok("DELETE", "/databases/kept", user.session)
    assert tenant_network(tenant) not in world.runner.held_networks()


def test_the_cli(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """`berth db create --engine memcached`, its credentials with the note, the refusals."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from berth.cli import db_cmd
    from berth.cli import main as cli_main
    from berth.cli.client import ApiClient, CliConfig, CliError

    user = world.env.signup("mc-cli")

    def api_client() -> ApiClient:
        api = ApiClient(CliConfig(api_url="http://testserver", token=user.session))
        api.http = TestClient(
            world.env.app,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {user.session}"},
            raise_server_exceptions=False,
        )
        return api

    monkeypatch.setattr(db_cmd, "client", api_client)

    def cli(*args: str) -> Any:
        return CliRunner().invoke(cli_main.app, list(args), env={"COLUMNS": "250"})

    before = _our_containers(world)
    made = cli("db", "create", "cli-cache", "--engine", "memcached", "--size", "32M")
    assert made.exit_code == 0, made.output
    assert "Created memcached database cli-cache (32M" in made.output
    creds = cli("db", "credentials", "cli-cache")
    assert creds.exit_code == 0 and ":11211" in creds.output
    assert "only protection is your own network" in creds.output
    for args, words in [
        (("db", "rotate", "cli-cache"), "no password to rotate"),
        (("db", "backup", "cli-cache"), "no backups"),
        (("db", "create", "x", "--engine", "memcached", "--plan", "shared"), "never on a shared"),
        (("db", "create", "x", "--engine", "memcached", "--size", "8G"), "between 16 MB and"),
    ]:
        refused = cli(*args)
        assert refused.exit_code == 1 and isinstance(refused.exception, CliError), refused.output
        assert words in refused.exception.message
    assert len(_our_containers(world)) == len(before) + 1
    deleted = cli("db", "delete", "cli-cache", "--yes")
    assert deleted.exit_code == 0 and "(nothing kept)" in deleted.output
    assert _our_containers(world) == before
    assert "deleted (nothing kept)" in cli("db", "info", "cli-cache").output


def test_a_backend_that_cannot_run_it_says_so_and_keeps_nothing(world: World) -> None:
    from berth.api.routes_databases import database_providers

    env = world.env
    user = env.signup("mc-swarm")
    before = _our_containers(world)
    overrides = env.app.dependency_overrides
    kept = overrides[database_providers]
    overrides[database_providers] = lambda: with_dedicated(None, lambda: "")
    try:
        resp = env.call(
            "POST", "/databases", user.session, json={"name": "c", "engine": "memcached"}
        )
        err = assert_error(resp, 409, "dedicated_not_available")
        assert "single-machine backend only" in err["message"]
    finally:
        overrides[database_providers] = kept
    assert env.ok("GET", "/databases", user.session) == []
    assert _our_containers(world) == before
    made = _create(world, user.session, "c")  # the same name, once it can run
    # Moved onto a Swarm: no new one starts, the one there still answers and can be deleted.
    overrides[database_providers] = lambda: with_dedicated(
        world.runner, lambda: world.image, refuse_create=lambda: "on a Swarm now"
    )
    try:
        resp = env.call(
            "POST", "/databases", user.session, json={"name": "d", "engine": "memcached"}
        )
        assert assert_error(resp, 409, "dedicated_not_available")["message"] == "on a Swarm now"
        assert env.ok("GET", "/databases/c/credentials", user.session)["url"].endswith(":11211")
        env.ok("DELETE", "/databases/c", user.session)
    finally:
        overrides[database_providers] = kept
    assert _our_containers(world) == before
    assert made["host"] not in _our_containers(world)


def test_the_platforms_factory_runs_it_on_its_own_engine_only(world: World) -> None:
    """What the API uses outside tests: the local runner on a platform of this machine's
    engine; a platform on any other runtime (the tests' fake) runs no dedicated server."""
    from berth.api.routes_databases import database_providers
    from berth.platform import Platform
    from berth.services.databases_access import ServerAddress

    env = world.env
    address = ServerAddress("memcached", "memcached://berth-db-x:11211", "berth-db-x", 11211)
    real = Platform(env.settings, env.engine, env.platform.sessions, env.platform.installation,
                    runtime=world.runtime)  # fmt: skip
    provider = database_providers(real)(address)
    assert isinstance(provider, memcached.MemcachedProvider)
    assert isinstance(provider.runner, LocalDedicatedRunner)
    assert provider.runner.runtime is world.runtime
    assert database_providers(real)(address).runner is provider.runner  # one per runtime
    with pytest.raises(Exception) as caught:
        database_providers(env.platform)(address)
    assert getattr(caught.value, "code", "") == "dedicated_not_available"


def test_its_memory_counts_against_the_plans_memory_quota(world: World) -> None:
    """A cache holds the machine's memory as an instance does: the container's limit counts
    in the plan's memory quota, for the next cache and for the tenant's apps."""
    env = world.env
    plan = env.plan(max_memory_mb=3072)
    user = env.signup("mc-quota")
    env.assign(user.tenant, plan)
    before = _our_containers(world)
    made = _create(world, user.session, "big", size_mb=2048)  # a 2592 MB container
    second = env.call("POST", "/databases", user.session,
                      json={"name": "more", "engine": "memcached", "size_mb": 512})  # fmt: skip
    assert "memory 2592M/3072M" in assert_error(second, 403, "quota_exceeded")["message"]
    env.create_app(user.session, "heavy", memory="512M")  # 2592 + 512 > 3072
    env.runtime.add_image("registry.example/heavy:v1")
    refused = env.call("POST", "/apps/heavy/releases", user.session,
                       json={"image": "registry.example/heavy:v1"})  # fmt: skip
    assert_error(refused, 403, "quota_exceeded")
    assert set(_our_containers(world)) == {*before, made["host"]}
    env.ok("DELETE", "/databases/big", user.session)
    env.deploy(user.session, "heavy")  # the memory is free again
