"""Custom domains route only after proof of control, end to end: a real ``berth server`` whose
DNS resolver setting points at a real DNS server (dnsmasq, started here on loopback with the
TXT records of each step), the real nginx ingress, the CLI.

Before the proof the ingress answers the unknown-host 404 for the domain; a wrong or missing
record is a clear CLI error and changes nothing; after ``berth domains verify`` the domain
serves the app. The resolver itself is also checked against dnsmasq and a silent server.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from berth.services.dns_txt import DnsTxtResolver
from berth.services.domains import TxtLookupError
from tests.harness import BUSYBOX_APP, BerthServer, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
TAG = uuid.uuid4().hex[:8]
ZONE = f"d{TAG}.example.test"  # answered by dnsmasq alone: unknown names are NXDOMAIN
APP = "proofed"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


DNS_PORT = free_udp_port()
BERTH_SERVER_OPTIONS = {"extra_env": {"BERTH_DNS_RESOLVER": f"127.0.0.1:{DNS_PORT}"}}


@dataclass
class DnsServer:
    """dnsmasq on 127.0.0.1:port, authoritative for ZONE, restarted with each record set."""

    port: int
    workdir: Path
    records: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def publish(self, records: dict[str, str]) -> None:
        self.stop()
        self.records = dict(records)
        args = [
            DNSMASQ,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--local=/{ZONE}/",
            f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            f"--log-facility={self.workdir / 'dnsmasq.log'}",
            *(f"--txt-record={name},{value}" for name, value in self.records.items()),
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        probe = DnsTxtResolver(f"127.0.0.1:{self.port}", timeout=0.5)

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "dnsmasq exited"
            try:
                probe.txt_records(f"_probe.{ZONE}")
            except TxtLookupError as exc:
                return "NXDOMAIN" in str(exc)
            return True

        wait_until(answers, 10, "dnsmasq answers")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture(scope="module")
def dns(request: pytest.FixtureRequest) -> Iterator[DnsServer]:
    workdir = Path(tempfile.mkdtemp(prefix="berth-dns-"))
    server = DnsServer(DNS_PORT, workdir)

    def cleanup() -> None:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    request.addfinalizer(cleanup)
    server.publish({})
    yield server


@pytest.fixture(scope="module")
def app(berth: BerthServer, dns: DnsServer) -> str:
    berth.create_app(APP)
    result = berth.deploy_dir(APP, BUSYBOX_APP)
    assert result["deployment"]["status"] == "succeeded", result
    berth.wait_converged(APP, 1)
    wait_until(lambda: berth.app_body(APP) is not None, 30, "the platform hostname routes")
    return APP


def unknown_host(berth: BerthServer, host: str) -> bool:
    return berth.ingress_get(host).status_code == 404


def serves_app(berth: BerthServer, host: str) -> bool:
    resp = berth.ingress_get(host)
    return resp.status_code == 200 and resp.text == berth.ingress_get(berth.host_of(APP)).text


def add(berth: BerthServer, hostname: str) -> dict[str, Any]:
    added: dict[str, Any] = berth.cli_json("domains", "add", APP, hostname)
    assert added["status"] == "pending", added
    return added


def test_a_domain_routes_only_after_its_txt_record_is_verified(
    berth: BerthServer, dns: DnsServer, app: str
) -> None:
    domain = f"www.{ZONE}"
    # The human output says exactly what to publish.
    shown = berth.cli_ok("domains", "add", APP, domain).stdout
    listed = berth.cli_json("domains", "list", APP)
    challenge = next(d for d in listed if d["hostname"] == domain)["challenge"]
    assert challenge["name"] == f"_berth-challenge.{domain}"
    assert challenge["name"] in shown and challenge["value"] in shown
    assert f"berth domains verify {APP} {domain}" in shown

    # Pending: another domain approved after this one routes (so the routes were rebuilt
    # since), and this one is still the ingress's unknown host.
    witness = f"witness.{ZONE}"
    add(berth, witness)
    berth.cli_ok("admin", "approve-domain", witness)
    wait_until(lambda: serves_app(berth, witness), 30, "the approved domain routes")
    assert unknown_host(berth, domain)
    info = berth.cli_json("apps", "info", APP)
    assert not any(domain in url for url in info["urls"])

    # A wrong token: refused, says what it found, and nothing changes.
    dns.publish({challenge["name"]: "berth-verify=" + "0" * 32})
    refused = berth.cli("domains", "verify", APP, domain)
    assert refused.returncode != 0
    assert "0" * 32 in refused.stderr + refused.stdout
    assert challenge["value"] in refused.stderr + refused.stdout
    assert (
        next(d for d in berth.cli_json("domains", "list", APP) if d["hostname"] == domain)["status"]
        == "pending"
    )
    assert unknown_host(berth, domain)

    # The right record: verified, and the domain serves the app.
    dns.publish({challenge["name"]: challenge["value"]})
    verified = berth.cli_json("domains", "verify", APP, domain)
    assert verified["status"] == "verified" and verified["verified_by"] == "dns"
    wait_until(lambda: serves_app(berth, domain), 30, "the verified domain routes")
    info = berth.cli_json("apps", "info", APP)
    assert any(domain in url for url in info["urls"])

    # Removing it stops the routing again.
    berth.cli_ok("domains", "remove", APP, domain)
    wait_until(lambda: unknown_host(berth, domain), 30, "the removed domain is gone")


def test_a_missing_record_is_a_clear_error(berth: BerthServer, dns: DnsServer, app: str) -> None:
    domain = f"shop.{ZONE}"
    add(berth, domain)
    dns.publish({})
    refused = berth.cli("domains", "verify", APP, domain)
    assert refused.returncode != 0
    text = refused.stderr + refused.stdout
    assert "NXDOMAIN" in text and f"_berth-challenge.{domain}" in text
    assert "Traceback" not in text
    assert unknown_host(berth, domain)
    berth.cli_ok("domains", "remove", APP, domain)


def test_ip_addresses_are_refused_as_domains(berth: BerthServer, app: str) -> None:
    for hostname in ("127.0.0.1", "127.1", "::1"):
        refused = berth.cli("domains", "add", APP, hostname)
        assert refused.returncode != 0
        assert "IP address" in refused.stderr + refused.stdout
    assert all(d["hostname"] != "127.0.0.1" for d in berth.cli_json("domains", "list", APP))


# -- the resolver itself, against dnsmasq and against a server that never answers ------------


def test_the_resolver_reads_records_and_names_what_it_found(dns: DnsServer) -> None:
    name = f"_berth-challenge.api.{ZONE}"
    dns.publish({name: "berth-verify=abc"})
    resolver = DnsTxtResolver(f"127.0.0.1:{dns.port}", timeout=2)
    assert resolver.txt_records(name) == ["berth-verify=abc"]
    with pytest.raises(TxtLookupError, match="NXDOMAIN"):
        resolver.txt_records(f"_berth-challenge.none.{ZONE}")
    with pytest.raises(TxtLookupError, match="no TXT record"):
        resolver.txt_records(f"api.{ZONE}")  # exists (it has a child), holds no TXT


def test_a_silent_resolver_is_a_timeout_not_a_hang() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = DnsTxtResolver(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        with pytest.raises(TxtLookupError, match="no answer"):
            resolver.txt_records(f"_berth-challenge.x.{ZONE}")
