"""The egress planner: rules for app and build bridges, egress-off tenants, blocked ranges."""

from __future__ import annotations

import ipaddress

import pytest

from berth.netpolicy.plan import (
    BridgeNetwork,
    EgressSnapshot,
    NetPolicyError,
    chains_for,
    parse_blocked_ranges,
    render,
)

INST = "0123456789ab"
E, IN = f"BERTH-E-{INST}", f"BERTH-I-{INST}"
REFUSE = "-j REJECT --reject-with icmp-admin-prohibited"
APP = BridgeNetwork("br-aaaaaaaaaaaa", "172.20.0.0/16", "t1", "app", name="berth-t-t1")
BUILD = BridgeNetwork("br-bbbbbbbbbbbb", "172.21.0.0/16", "t1", "build", name="berth-b-t1")
OTHER = BridgeNetwork("br-cccccccccccc", "172.22.0.0/16", "t2", "app", name="berth-t-t2")


def snapshot(**kwargs: object) -> EgressSnapshot:
    return EgressSnapshot(installation=INST, **kwargs)  # type: ignore[arg-type,unused-ignore]


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_empty_snapshot_declares_both_chains_and_lets_replies_through() -> None:
    assert lines(render(snapshot())) == [
        "*filter",
        f":{E} - [0:0]",
        f":{IN} - [0:0]",
        f"-A {E} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {IN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "COMMIT",
    ]


def test_app_network_rules_in_order() -> None:
    rules = lines(render(snapshot(networks=(APP,))))
    br = APP.interface
    assert rules[3:] == [
        f"-A {E} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {E} -i {br} -o {br} -j RETURN",
        f"-A {E} -i {br} ! -s 172.20.0.0/16 -j DROP",
        f"-A {E} -i {br} -m conntrack --ctstate DNAT {REFUSE}",
        f"-A {E} -i {br} -d 169.254.0.0/16 {REFUSE}",
        f"-A {IN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {IN} -i {br} {REFUSE}",
        "COMMIT",
    ]


def test_build_networks_get_the_same_rules_as_app_networks() -> None:
    text = render(snapshot(networks=(BUILD,)))
    assert f"-A {E} -i {BUILD.interface} -d 169.254.0.0/16 {REFUSE}" in text
    assert f"-A {IN} -i {BUILD.interface} {REFUSE}" in text


def test_egress_off_tenant_refuses_everything_new_on_its_bridges_only() -> None:
    rules = lines(render(snapshot(networks=(APP, BUILD, OTHER), internet_off=frozenset({"t1"}))))
    assert f"-A {E} -i {APP.interface} {REFUSE}" in rules
    assert f"-A {E} -i {BUILD.interface} {REFUSE}" in rules
    assert f"-A {E} -i {OTHER.interface} {REFUSE}" not in rules
    # The catch-all comes after the tenant's own network is let through, and replies first.
    assert rules.index(f"-A {E} -i {APP.interface} -o {APP.interface} -j RETURN") < rules.index(
        f"-A {E} -i {APP.interface} {REFUSE}"
    )
    assert rules[3] == f"-A {E} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"


def test_blocked_ranges_are_refused_per_bridge_sorted_and_deduplicated() -> None:
    blocked = parse_blocked_ranges(["198.51.100.0/24", "10.0.0.0/8", "169.254.0.0/16"])
    rules = lines(render(snapshot(networks=(APP,), blocked=blocked)))
    dests = [r.split(" -d ")[1].split()[0] for r in rules if " -d " in r]
    assert dests == ["10.0.0.0/8", "169.254.0.0/16", "198.51.100.0/24"]


def test_output_is_deterministic_whatever_the_input_order() -> None:
    blocked = parse_blocked_ranges(["198.51.100.0/24", "10.0.0.0/8"])
    a = render(snapshot(networks=(APP, BUILD, OTHER), blocked=blocked))
    b = render(snapshot(networks=(OTHER, APP, BUILD), blocked=tuple(reversed(blocked))))
    assert a == b


def test_same_bridge_reported_twice_merges_and_keeps_egress_off() -> None:
    twin = BridgeNetwork(APP.interface, APP.subnet, "t2", "app")
    text = render(snapshot(networks=(APP, twin), internet_off=frozenset({"t2"})))
    assert text.count(f"-A {IN} -i {APP.interface} ") == 1
    assert f"-A {E} -i {APP.interface} {REFUSE}" in text


def test_no_subnet_means_no_spoofing_rule() -> None:
    text = render(snapshot(networks=(BridgeNetwork("br-dddddddddddd", "", "t3"),)))
    assert " ! -s " not in text
    assert f"-A {IN} -i br-dddddddddddd {REFUSE}" in text


@pytest.mark.parametrize(
    "interface",
    [
        "",
        "br-x -j ACCEPT",
        "br+",
        "br-aaaaaaaaaaaaa0",  # 16 chars
        "br-x\n-A INPUT -j ACCEPT",
        "-br",
        "br/x",
        "brä",
        "br x",
    ],
)
def test_hostile_interface_names_never_reach_the_text(interface: str) -> None:
    with pytest.raises(NetPolicyError, match="interface"):
        render(snapshot(networks=(BridgeNetwork(interface, "172.20.0.0/16", "t1"),)))


@pytest.mark.parametrize(
    "subnet", ["172.20.0.0/16 -j ACCEPT", "fd00::/64", "300.1.1.0/24", "x", "172.20.0.0/33"]
)
def test_bad_subnets_are_refused(subnet: str) -> None:
    with pytest.raises(NetPolicyError, match="subnet"):
        render(snapshot(networks=(BridgeNetwork("br-aaaaaaaaaaaa", subnet, "t1"),)))


def test_bad_purpose_is_refused() -> None:
    with pytest.raises(NetPolicyError, match="purpose"):
        render(snapshot(networks=(BridgeNetwork("br-aaaaaaaaaaaa", "", "t1", "debug"),)))


def test_hostile_tenant_and_network_names_are_never_rendered() -> None:
    hostile = BridgeNetwork(
        "br-eeeeeeeeeeee", "172.23.0.0/16", "t\n-A INPUT -j ACCEPT", name="x -j ACCEPT"
    )
    text = render(snapshot(networks=(hostile,), internet_off=frozenset({hostile.tenant})))
    assert "ACCEPT" not in text
    assert f"-A {E} -i br-eeeeeeeeeeee {REFUSE}" in text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.1/8", "network address"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("nonsense", "not a valid CIDR"),
        ("10.0.0.0/8 -j ACCEPT", "not a valid CIDR"),
        ("fd00::/8", "IPv6"),
        ("", "not a CIDR"),
    ],
)
def test_bad_blocked_ranges_fail_with_a_clear_message(value: str, message: str) -> None:
    with pytest.raises(NetPolicyError, match=message) as caught:
        parse_blocked_ranges(["192.0.2.0/24", value])
    assert "BERTH_EGRESS_BLOCKED_RANGES" in caught.value.message


def test_good_blocked_ranges_parse() -> None:
    assert parse_blocked_ranges([" 10.0.0.0/8", "192.0.2.7/32", "192.0.2.7"]) == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv4Network("192.0.2.7/32"),
        ipaddress.IPv4Network("192.0.2.7/32"),
    )


def test_chain_names_are_per_installation_and_fit_iptables() -> None:
    chains = chains_for("abcdef012345")
    assert (chains.egress, chains.input) == ("BERTH-E-abcdef012345", "BERTH-I-abcdef012345")
    assert len(chains_for("a" * 20).egress) <= 28


@pytest.mark.parametrize("installation", ["", "ABC", "a" * 21, "ab-c", "ab c", "a\nb"])
def test_bad_installation_ids_are_refused(installation: str) -> None:
    with pytest.raises(NetPolicyError, match="installation"):
        chains_for(installation)
