"""Database servers in the egress plan: a server's port answers the app networks of the
tenants with a database there (through the host or beyond, whatever their internet), and is
refused to everyone else: other tenants, the same tenant's builds."""

from __future__ import annotations

import ipaddress

import pytest

from berth.netpolicy.plan import (
    BridgeNetwork,
    DatabaseEndpoint,
    EgressSnapshot,
    NetPolicyError,
    render,
)

INST = "0123456789ab"
E, IN = f"BERTH-E-{INST}", f"BERTH-I-{INST}"
REFUSE = "-j REJECT --reject-with icmp-admin-prohibited"
A_APP = BridgeNetwork("br-aaaaaaaaaaaa", "172.20.0.0/16", "ta", "app")
A_BUILD = BridgeNetwork("br-bbbbbbbbbbbb", "172.21.0.0/16", "ta", "build")
B_APP = BridgeNetwork("br-cccccccccccc", "172.22.0.0/16", "tb", "app")
PG = DatabaseEndpoint(ipaddress.IPv4Address("10.9.0.5"), 5432, frozenset({"ta"}))
TARGET = "-d 10.9.0.5/32 -p tcp -m tcp --dport 5432"


def rules(*databases: DatabaseEndpoint, **kwargs: object) -> list[str]:
    snap = EgressSnapshot(
        INST,
        (A_APP, A_BUILD, B_APP),
        databases=databases,
        **kwargs,  # type: ignore[arg-type]
    )
    return render(snap).splitlines()


def test_only_the_tenants_app_network_reaches_its_server() -> None:
    out = rules(PG, internet_off=frozenset({"ta"}), blocked=(ipaddress.IPv4Network("10.0.0.0/8"),))
    a = f"-A {E} -i {A_APP.interface}"
    assert f"{a} {TARGET} -j RETURN" in out
    assert f"-A {E} -i {A_BUILD.interface} {TARGET} {REFUSE}" in out
    assert f"-A {E} -i {B_APP.interface} {TARGET} {REFUSE}" in out
    # Before the blocked range and the no-internet refusal of A's plan, after the spoof check.
    allow = out.index(f"{a} {TARGET} -j RETURN")
    assert out.index(f"{a} ! -s 172.20.0.0/16 -j DROP") < allow
    assert allow < out.index(f"{a} -d 10.0.0.0/8 {REFUSE}") < out.index(f"{a} {REFUSE}")
    # A server on the host itself: A's app network through INPUT, before the refusal.
    i = f"-A {IN} -i {A_APP.interface}"
    assert out.index(f"{i} {TARGET} -j RETURN") < out.index(f"{i} {REFUSE}")
    assert not any(A_BUILD.interface in r and "RETURN" in r and TARGET in r for r in out)
    assert not any(B_APP.interface in r and "RETURN" in r and TARGET in r for r in out)


def test_a_server_with_no_database_of_anyone_is_refused_to_all() -> None:
    out = rules(DatabaseEndpoint(PG.address, 5432))
    for net in (A_APP, A_BUILD, B_APP):
        assert f"-A {E} -i {net.interface} {TARGET} {REFUSE}" in out


def test_one_address_and_port_merges_its_tenants() -> None:
    out = rules(PG, DatabaseEndpoint(PG.address, 5432, frozenset({"tb"})))
    assert f"-A {E} -i {B_APP.interface} {TARGET} -j RETURN" in out
    assert sum(TARGET in r and A_APP.interface in r and IN not in r for r in out) == 1


def test_a_bridge_reported_as_two_tenants_is_nobodys_app_network() -> None:
    twice = BridgeNetwork(A_APP.interface, A_APP.subnet, "tb", "app")
    out = render(EgressSnapshot(INST, (A_APP, twice), databases=(PG,))).splitlines()
    assert f"-A {E} -i {A_APP.interface} {TARGET} {REFUSE}" in out


@pytest.mark.parametrize(
    "endpoint",
    [
        DatabaseEndpoint(ipaddress.IPv4Address("0.0.0.0"), 5432),
        DatabaseEndpoint(ipaddress.IPv4Address("224.0.0.1"), 5432),
        DatabaseEndpoint(PG.address, 0),
        DatabaseEndpoint(PG.address, 70000),
        DatabaseEndpoint(PG.address, True),  # type: ignore[arg-type]
        DatabaseEndpoint("10.9.0.5; -j ACCEPT", 5432),  # type: ignore[arg-type]
    ],
)
def test_bad_endpoints_render_nothing(endpoint: DatabaseEndpoint) -> None:
    with pytest.raises(NetPolicyError):
        rules(endpoint)
