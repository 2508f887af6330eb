"""Egress filtering with the real Docker Engine and the host's real iptables.

Stand-ins owned by this test play the forbidden destinations: an HTTP listener on the tenant
bridge's gateway (the host itself), and a network namespace behind a veth pair holding a
link-local address, an address in an operator-blocked range and an "internet" address. A control
container on a plain Docker network proves each stand-in answers; containers on the tenant's app
and build networks must not reach them. Traffic goes only to addresses this test created (each
route is checked to point at the test's own veth before anything is sent).
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from berth.netpolicy.controller import EgressController
from berth.netpolicy.events import NetworkCreations
from berth.netpolicy.iptables import IptablesFirewall
from berth.netpolicy.observe import DockerNetworks
from berth.netpolicy.plan import DatabaseEndpoint, parse_blocked_ranges
from tests.harness import free_port, wait_until

pytestmark = pytest.mark.docker

IMAGE = "berth/busybox:latest"
DB_PASSWORD = secrets.token_hex(12)
REMOTE_DB_PORT = 6379  # in the test's own namespace: nothing else listens there
SERVE = "mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 8080 -h /www"


def sh(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


@dataclass
class Site:
    """Everything the module set up; ``cleanups`` undo it in reverse order."""

    installation: str
    tenant: str
    controller: EgressController
    firewall: IptablesFirewall
    internet_off: set[str]
    app_net: Any = None
    build_net: Any = None
    control: Any = None  # container on a plain Docker network
    app: Any = None  # container on the tenant's app network
    builder: Any = None  # container on the tenant's build network
    gateway: str = ""
    gateway_port: int = 0
    port: int = 0  # the namespace listener's port
    link_local: str = ""
    blocked: str = ""
    internet: str = ""
    db_port: int = 0
    other: Any = None  # container on another tenant's app network
    databases: list[DatabaseEndpoint] = field(default_factory=list)  # what the store would say
    db_remote: str = ""  # a real redis-server on "another machine" (the namespace)
    db_host_port: int = 0  # a real redis-server on the host, on the tenant's gateway
    cleanups: list[Any] = field(default_factory=list)


def fetch(container: Any, url: str) -> str | None:
    """What a container's wget gets from ``url`` (None when it cannot connect)."""
    # busybox's own timeout, not wget -T (which crashes this static busybox build).
    result = container.exec_run(["timeout", "5", "wget", "-q", "-O", "-", url])
    return result.output.decode().strip() if result.exit_code == 0 else None


def serve(argv: list[str], directory: Path, text: str) -> subprocess.Popen[bytes]:
    (directory / "index.html").write_text(text + "\n")
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(10)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    client = docker.from_env(version="auto")
    yield client
    client.close()


@pytest.fixture(scope="module")
def site(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    installation, tenant, tag = secrets.token_hex(6), secrets.token_hex(8), secrets.token_hex(3)
    octet = random.randrange(1, 250)
    stand_ins = (f"169.254.{octet}.1", f"198.51.100.{octet}", f"203.0.113.{octet}")
    firewall = IptablesFirewall(installation)
    internet_off: set[str] = set()
    controller = EgressController(
        installation,
        DockerNetworks(client.api, installation),
        lambda: frozenset(internet_off),
        firewall,
        parse_blocked_ranges([f"{stand_ins[1]}/32"]),
        interval=3600,
    )
    s = Site(installation, tenant, controller, firewall, internet_off)
    controller._databases = lambda: tuple(s.databases)
    s.link_local, s.blocked, s.internet = stand_ins
    s.db_remote = f"192.0.2.{octet}"
    try:
        _set_up(s, client, tmp_path_factory.mktemp("egress"), tag)
        yield s
    finally:
        for undo in reversed(s.cleanups):
            try:
                undo()
            except Exception as exc:  # every other cleanup must still run
                print(f"egress test cleanup failed: {exc!r}", file=sys.stderr)
        firewall.remove()
        assert firewall.rules(firewall.chains.egress) is None


def _set_up(s: Site, client: Any, tmp: Path, tag: str) -> None:
    labels = {
        "berth.managed": "true",
        "berth.installation": s.installation,
        "berth.tenant": s.tenant,
    }
    s.app_net = client.networks.create(f"berth-t-{s.tenant}", driver="bridge", labels=labels)
    s.cleanups.append(s.app_net.remove)
    s.build_net = client.networks.create(
        f"berth-b-{s.tenant}", driver="bridge", labels={**labels, "berth.purpose": "build"}
    )
    s.cleanups.append(s.build_net.remove)
    control_net = client.networks.create(f"berth-egress-control-{tag}", driver="bridge")
    s.cleanups.append(control_net.remove)
    other_tenant = secrets.token_hex(8)
    other_net = client.networks.create(
        f"berth-t-{other_tenant}",
        driver="bridge",
        labels={**labels, "berth.tenant": other_tenant},
    )
    s.cleanups.append(other_net.remove)
    # Filtered before any container runs on them, as the reconciler and the builder do.
    s.controller.ensure_filtered(s.app_net.name)
    s.controller.ensure_filtered(s.build_net.name)
    s.controller.ensure_filtered(other_net.name)

    containers = (
        ("control", control_net), ("app", s.app_net), ("builder", s.build_net),
        ("other", other_net),
    )  # fmt: skip
    for attr, network in containers:
        container = client.containers.run(
            IMAGE,
            ["sh", "-c", SERVE.format(text=attr)],
            name=f"berth-egress-{attr}-{tag}",
            network=network.name,
            detach=True,
        )
        s.cleanups.append(lambda c=container: c.remove(force=True))
        setattr(s, attr, container)

    # (a) the host itself: a listener on the tenant bridge's gateway address.
    s.app_net.reload()
    s.gateway = s.app_net.attrs["IPAM"]["Config"][0]["Gateway"]
    s.gateway_port = free_port()
    host_dir = tmp / "host"
    host_dir.mkdir()
    host_http = [sys.executable, "-m", "http.server", str(s.gateway_port), "--bind", s.gateway]
    proc = serve([*host_http, "--directory", str(host_dir)], host_dir, "host")
    s.cleanups.append(lambda: stop(proc))

    # (b, c) a namespace behind a veth: link-local, blocked and "internet" stand-ins.
    netns, host_end, ns_end = f"berth-egress-{tag}", f"beh{tag}", f"ben{tag}"
    link = random.randrange(0, 64) * 4
    host_ip, ns_ip = (
        f"198.18.{link // 256}.{link % 256 + 1}",
        f"198.18.{link // 256}.{link % 256 + 2}",
    )
    sh("ip", "netns", "add", netns)
    s.cleanups.append(lambda: sh("ip", "netns", "del", netns))  # takes the veth and routes along
    sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
    s.cleanups.append(lambda: subprocess.run(["ip", "link", "del", host_end], check=False))
    sh("ip", "link", "set", ns_end, "netns", netns)
    sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_end)
    sh("ip", "link", "set", host_end, "up")
    in_ns = ["ip", "-n", netns]
    sh(*in_ns, "addr", "add", f"{ns_ip}/30", "dev", ns_end)
    for address in (s.link_local, s.blocked, s.internet, s.db_remote):
        sh(*in_ns, "addr", "add", f"{address}/32", "dev", ns_end)
    sh(*in_ns, "link", "set", ns_end, "up")
    sh(*in_ns, "link", "set", "lo", "up")
    for address in (s.link_local, s.blocked, s.internet, s.db_remote):
        sh("ip", "route", "add", f"{address}/32", "via", ns_ip, "dev", host_end)
        # Never send anything anywhere else: the route must be the test's own veth.
        assert f"dev {host_end} " in sh("ip", "route", "get", address), address
    s.port = free_port()
    ns_dir = tmp / "ns"
    ns_dir.mkdir()
    ns_http = [sys.executable, "-m", "http.server", str(s.port), "--directory", str(ns_dir)]
    ns_proc = serve(["nsenter", f"--net=/var/run/netns/{netns}", *ns_http], ns_dir, "stand-in")
    s.cleanups.insert(1, lambda: stop(ns_proc))  # before the namespace goes

    def answers(url: str) -> bool:
        return httpx.get(url, timeout=2, trust_env=False).text.strip() != ""

    for url in [f"http://{a}:{s.port}/" for a in (s.link_local, s.blocked, s.internet)]:
        wait_until(partial(answers, url), 20, f"{url} answers")
    wait_until(partial(answers, f"http://{s.gateway}:{s.gateway_port}/"), 20, "the host answers")
    for container in (s.control, s.app, s.builder, s.other):
        wait_until(partial(fetch, container, "http://127.0.0.1:8080/"), 20, "httpd is up")

    # Real database servers (the distro's redis-server, a password of its own): one on
    # "another machine" (the namespace, through FORWARD), one on the host itself, on the
    # tenant bridge's gateway (through INPUT).
    redis = shutil.which("redis-server")
    assert redis, "redis-server is missing: scripts/ensure-system.sh --with-postgres installs it"
    common = ["--save", "", "--appendonly", "no", "--requirepass", DB_PASSWORD]
    remote = subprocess.Popen(
        ["nsenter", f"--net=/var/run/netns/{netns}", redis, "--bind", s.db_remote,
         "--port", str(REMOTE_DB_PORT), *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    s.db_port = REMOTE_DB_PORT
    s.cleanups.insert(1, lambda: stop(remote))  # before the namespace goes
    s.db_host_port = free_port()
    local = subprocess.Popen(
        [redis, "--bind", s.gateway, "--port", str(s.db_host_port), *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    s.cleanups.append(lambda: stop(local))
    wait_until(lambda: redis_ping(s.db_remote, s.db_port), 20, "the remote redis answers")
    wait_until(lambda: redis_ping(s.gateway, s.db_host_port), 20, "the host's redis answers")


def redis_ping(address: str, port: int) -> bool:
    """From the host: the server answers (the stand-in works)."""
    try:
        with socket.create_connection((address, port), timeout=2) as conn:
            conn.sendall(f"AUTH {DB_PASSWORD}\r\nPING\r\nQUIT\r\n".encode())
            return b"+PONG" in conn.recv(256)
    except OSError:
        return False


def container_ping(container: Any, address: str, port: int) -> bool:
    """Whether a container gets PONG from the redis at ``address:port`` (bounded: 5 s)."""
    script = (
        f"printf 'AUTH {DB_PASSWORD}\\r\\nPING\\r\\nQUIT\\r\\n' | timeout 5 nc {address} {port}"
    )
    result = container.exec_run(["sh", "-c", script])
    return b"+PONG" in result.output


def has_rule(rules: list[str], *parts: str) -> bool:
    """A rule with all of ``parts`` (``iptables -S`` orders matches its own way)."""
    return any(all(part in rule for part in parts) for rule in rules)


def test_rules_and_jumps_are_in_place_for_the_tenant_networks(site: Site) -> None:
    fw = site.firewall
    egress, inbound = fw.rules(fw.chains.egress), fw.rules(fw.chains.input)
    assert egress is not None and inbound is not None
    for network in (site.app_net, site.build_net):
        bridge = f"br-{network.id[:12]}"
        assert has_rule(egress, f"-i {bridge}", "-d 169.254.0.0/16", "-j REJECT"), egress
        assert has_rule(egress, f"-i {bridge}", f"-d {site.blocked}/32", "-j REJECT"), egress
        assert has_rule(inbound, f"-i {bridge}", "-j REJECT"), inbound
    assert (fw.rules("DOCKER-USER") or []).count(f"-A DOCKER-USER -j {fw.chains.egress}") == 1
    assert (fw.rules("INPUT") or []).count(f"-A INPUT -j {fw.chains.input}") == 1
    assert site.controller.sync() is False  # nothing changed: nothing rewritten


def test_another_installation_never_rewrites_these_chains(site: Site) -> None:
    before = site.firewall.rules(site.firewall.chains.egress)
    other = IptablesFirewall(secrets.token_hex(6))
    try:
        other.apply(
            f"*filter\n:{other.chains.egress} - [0:0]\n:{other.chains.input} - [0:0]\nCOMMIT\n"
        )
        other.ensure_jumps()
        assert site.firewall.rules(site.firewall.chains.egress) == before
        assert site.firewall.jumps_present()
    finally:
        other.remove()
    assert site.firewall.rules(site.firewall.chains.egress) == before
    assert site.firewall.jumps_present()


def test_the_host_itself_is_not_reachable_from_tenant_networks(site: Site) -> None:
    url = f"http://{site.gateway}:{site.gateway_port}/"
    assert fetch(site.control, url) == "host"  # the stand-in works
    assert fetch(site.app, url) is None
    assert fetch(site.builder, url) is None


def test_link_local_is_not_reachable_from_app_or_build_networks(site: Site) -> None:
    url = f"http://{site.link_local}:{site.port}/"
    assert fetch(site.control, url) == "stand-in"
    assert fetch(site.app, url) is None
    assert fetch(site.builder, url) is None


def test_operator_blocked_range_is_not_reachable(site: Site) -> None:
    url = f"http://{site.blocked}:{site.port}/"
    assert fetch(site.control, url) == "stand-in"
    assert fetch(site.app, url) is None
    assert fetch(site.builder, url) is None


def test_internet_is_open_by_default_and_closed_when_the_plan_says_so(site: Site) -> None:
    url = f"http://{site.internet}:{site.port}/"
    assert fetch(site.app, url) == "stand-in"
    assert fetch(site.builder, url) == "stand-in"
    site.internet_off.add(site.tenant)
    try:
        assert site.controller.sync() is True
        assert fetch(site.control, url) == "stand-in"
        assert fetch(site.app, url) is None
        assert fetch(site.builder, url) is None
        # Replies still flow: the host reaches the tenant's container (nginx, health checks).
        address = _address(site.app, site.app_net.name)
        answer = httpx.get(f"http://{address}:8080/", timeout=5, trust_env=False)
        assert answer.text.strip() == "app"
    finally:
        site.internet_off.discard(site.tenant)
        site.controller.sync()
    assert fetch(site.app, url) == "stand-in"


def _address(container: Any, network: str) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def test_containers_in_one_tenant_network_still_reach_each_other(site: Site, client: Any) -> None:
    peer = client.containers.run(
        IMAGE,
        ["sh", "-c", SERVE.format(text="peer")],
        name=f"berth-egress-peer-{secrets.token_hex(3)}",
        network=site.app_net.name,
        detach=True,
    )
    try:
        address = _address(peer, site.app_net.name)
        wait_until(lambda: fetch(site.app, f"http://{address}:8080/") == "peer", 20, "peer answers")
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            peer.remove(force=True)


def test_the_remove_command_takes_one_installation_away(site: Site) -> None:
    other = IptablesFirewall(secrets.token_hex(6))
    try:
        other.apply(
            f"*filter\n:{other.chains.egress} - [0:0]\n:{other.chains.input} - [0:0]\nCOMMIT\n"
        )
        other.ensure_jumps()
        command = [sys.executable, "-m", "berth.netpolicy", "remove"]
        done = subprocess.run([*command, other.chains.egress[8:]], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert other.rules(other.chains.egress) is None
        assert other.rules(other.chains.input) is None
        assert site.firewall.jumps_present()  # this module's installation is untouched
        bad = subprocess.run([*command, "x; rm -rf /"], capture_output=True, text=True)
        assert bad.returncode == 1 and "installation id" in bad.stderr
        assert "Traceback" not in bad.stderr
        usage = subprocess.run(command, capture_output=True, text=True)
        assert usage.returncode == 2 and "usage:" in usage.stderr
    finally:
        other.remove()


def test_a_new_network_is_filtered_as_soon_as_the_engine_creates_it(client: Any) -> None:
    installation = secrets.token_hex(6)
    firewall = IptablesFirewall(installation)
    controller = EgressController(
        installation, DockerNetworks(client.api, installation), frozenset, firewall
    )
    watcher = NetworkCreations(client.api, controller.sync)
    labels = {"berth.managed": "true", "berth.installation": installation, "berth.tenant": "t"}
    network = None
    watcher.start()  # no periodic loop: only the engine's events make it sync
    try:
        wait_until(lambda: firewall.rules(firewall.chains.egress), 20, "the first sync")
        network = client.networks.create(f"berth-t-{installation}", driver="bridge", labels=labels)
        bridge = f"br-{network.id[:12]}"
        wait_until(
            lambda: has_rule(firewall.rules(firewall.chains.input) or [], f"-i {bridge}"),
            20,
            "the new bridge is in the rules",
        )
    finally:
        watcher.stop()
        if network is not None:
            network.remove()
        firewall.remove()
    assert firewall.rules(firewall.chains.egress) is None
    assert not any(t.name == "berth-egress-events" for t in threading.enumerate())


def test_a_database_server_answers_only_its_tenants_app_network(site: Site) -> None:
    """From a container of another tenant, the database is unreachable at the network level
    (as from the tenant's own builds); from the tenant's app network it works, on another
    machine and on the host itself, whatever its plan's internet."""
    remote = DatabaseEndpoint(ipaddress.IPv4Address(site.db_remote), site.db_port)
    on_host = DatabaseEndpoint(ipaddress.IPv4Address(site.gateway), site.db_host_port)
    servers = ((site.db_remote, site.db_port), (site.gateway, site.db_host_port))
    try:
        # No database of anyone there: refused to every tenant network.
        site.databases[:] = [remote, on_host]
        site.controller.sync()
        assert container_ping(site.control, site.db_remote, site.db_port)  # the server works
        for container in (site.app, site.builder, site.other):
            for address, port in servers:
                assert not container_ping(container, address, port), (container.name, address)

        # The tenant has a database on both: its app network reaches them, nothing else does.
        mine = frozenset({site.tenant})
        site.databases[:] = [
            DatabaseEndpoint(remote.address, remote.port, mine),
            DatabaseEndpoint(on_host.address, on_host.port, mine),
        ]
        site.internet_off.add(site.tenant)  # a plan without internet still reaches them
        assert site.controller.sync() is True
        for address, port in servers:
            assert container_ping(site.app, address, port), address
            assert not container_ping(site.other, address, port), address
            assert not container_ping(site.builder, address, port), address

        # Its last database there deleted: refused again.
        site.databases[:] = [remote, on_host]
        site.controller.sync()
        for address, port in servers:
            assert not container_ping(site.app, address, port), address
    finally:
        site.internet_off.discard(site.tenant)
        site.databases.clear()
        site.controller.sync()
