"""The node guard: its rules (pure), applying and removing them through an iptables runner
(here a fake filter table), and the operator's command. Real traffic through the real rules:
tests/cluster/test_isolation_matrix.py."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from berth.netpolicy import node_guard_apply
from berth.netpolicy.node_guard import (
    CHAINS,
    NodeGuard,
    build_guard,
    parse_networks,
    parse_port_range,
    restore_text,
    rules,
)
from berth.netpolicy.node_guard_apply import NodeGuardFirewall, main
from berth.netpolicy.plan import NetPolicyError

REFUSE = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]


def guard() -> NodeGuard:
    return build_guard(
        ingress=["10.0.0.254"],
        nodes=["10.0.0.11", "10.0.0.12"],
        protected=["10.0.0.254", "10.215.0.0/16"],
        published_ports="32768-60999",
    )


def of_chain(chain: str) -> list[list[str]]:
    return [rule[2:] for rule in rules(guard()) if rule[1] == chain]


class FakeTable:
    """A filter table behind an iptables runner: what `iptables -S/-I/-D/-F/-X` and
    `iptables-restore --noflush` do to it. Records every command."""

    def __init__(self, hooks: Sequence[str] = ("DOCKER-USER", "INPUT")) -> None:
        self.chains: dict[str, list[str]] = {hook: [] for hook in hooks}
        if "DOCKER-USER" in self.chains:  # as dockerd makes it
            self.chains["DOCKER-USER"].append("-j RETURN")
        self.commands: list[list[str]] = []

    def __call__(
        self, args: Sequence[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        self.commands.append(argv)
        while argv[0] == "nsenter" or argv[0].startswith("--net="):
            argv = argv[1:]
        ok = subprocess.CompletedProcess(argv, 0, "", "")
        fail = subprocess.CompletedProcess(argv, 1, "", "No chain/target/match by that name.")
        if argv[0] == "cat":
            return subprocess.CompletedProcess(argv, 0, "40000\t50000\n", "")
        if argv[0] == "iptables-restore":
            assert "--noflush" in argv and stdin is not None
            for line in stdin.splitlines():
                if line.startswith(":"):
                    self.chains[line[1:].split()[0]] = []
                elif line.startswith("-A "):
                    _, chain, rest = line.split(" ", 2)
                    self.chains[chain].append(rest)
            return ok
        assert argv[0] == "iptables" and argv[1:3] == ["-w", "10"]
        op, chain, rest = argv[3], argv[4], argv[5:]
        if chain not in self.chains:
            return fail
        if op == "-S":
            lines = [f"-N {chain}"] + [f"-A {chain} {r}" for r in self.chains[chain]]
            return subprocess.CompletedProcess(argv, 0, "\n".join(lines) + "\n", "")
        if op == "-I":
            self.chains[chain].insert(int(rest[0]) - 1, " ".join(rest[1:]))
        elif op == "-D":
            self.chains[chain].remove(" ".join(rest))
        elif op == "-F":
            self.chains[chain] = []
        elif op == "-X":
            del self.chains[chain]
        else:
            raise AssertionError(f"unexpected iptables {argv}")
        return ok


# ---------------------------------------------------------------- the rules (pure)


def test_replies_pass_first_in_both_hooks_chains() -> None:
    assert of_chain("BERTH-NG-FORWARD")[0] == [
        "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"
    ]  # fmt: skip
    assert of_chain("BERTH-NG-INPUT")[0] == of_chain("BERTH-NG-FORWARD")[0]


def test_every_container_interface_goes_through_the_container_chain() -> None:
    forward = of_chain("BERTH-NG-FORWARD")
    for iface in ("docker_gwbridge", "docker0", "br-+"):
        assert ["-i", iface, "-j", "BERTH-NG-CONTAINER"] in forward


def test_containers_are_refused_every_node_ingress_and_protected_destination() -> None:
    container = of_chain("BERTH-NG-CONTAINER")
    targets = ["10.0.0.11/32", "10.0.0.12/32", "10.0.0.254/32", "10.215.0.0/16", "169.254.0.0/16"]
    # By the ORIGINAL destination, each once (the host is both ingress and protected).
    assert container[:-1] == [["-m", "conntrack", "--ctorigdst", t, *REFUSE] for t in targets]
    assert container[-1] == ["-o", "docker_gwbridge", *REFUSE]


def test_published_ports_answer_the_ingress_only() -> None:
    forward = of_chain("BERTH-NG-FORWARD")
    for proto in ("tcp", "udp"):
        assert [
            "-p", proto, "-m", "conntrack", "--ctstate", "DNAT",
            "--ctorigdstport", "32768:60999", "-j", "BERTH-NG-PUBLISHED",
        ] in forward  # fmt: skip
    # The container rules come first: an ingress on a node must not lend its address to the
    # node's containers.
    assert forward.index(["-i", "docker_gwbridge", "-j", "BERTH-NG-CONTAINER"]) < len(forward) - 2
    assert of_chain("BERTH-NG-PUBLISHED") == [
        ["-s", "10.0.0.254/32", "-j", "RETURN"],
        ["-j", "DROP"],
    ]


def test_the_node_itself_refuses_containers_and_swarm_ports_answer_nodes_only() -> None:
    node_input = of_chain("BERTH-NG-INPUT")
    for iface in ("docker_gwbridge", "docker0", "br-+"):
        assert ["-i", iface, *REFUSE] in node_input
    assert ["-p", "tcp", "-m", "multiport", "--dports", "2377,7946", "-j", "BERTH-NG-SWARM"] in (
        node_input
    )
    assert ["-p", "udp", "-m", "multiport", "--dports", "7946,4789", "-j", "BERTH-NG-SWARM"] in (
        node_input
    )
    assert of_chain("BERTH-NG-SWARM") == [
        ["-s", "10.0.0.11/32", "-j", "RETURN"],
        ["-s", "10.0.0.12/32", "-j", "RETURN"],
        ["-j", "DROP"],
    ]


def test_restore_text_declares_every_chain_and_commits() -> None:
    text = restore_text(guard()).splitlines()
    assert text[0] == "*filter" and text[-1] == "COMMIT"
    assert text[1 : 1 + len(CHAINS)] == [f":{c} - [0:0]" for c in CHAINS]
    assert text[1 + len(CHAINS) :][:-1] == [" ".join(r) for r in rules(guard())]


def test_link_local_is_always_protected_and_networks_are_kept_in_order() -> None:
    plain = build_guard(["192.0.2.1"], ["192.0.2.0/24"])
    assert plain.protected == (ipaddress.IPv4Network("169.254.0.0/16"),)
    assert plain.published_ports == (32768, 60999)
    assert parse_networks(["10.0.0.2", "10.0.0.1", "10.0.0.2"], "x") == (
        ipaddress.IPv4Network("10.0.0.2/32"),
        ipaddress.IPv4Network("10.0.0.1/32"),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ingress": []}, "ingress address"),
        ({"nodes": []}, "nodes"),
        ({"ingress": ["10.0.0.1/8"]}, "host bits"),
        ({"nodes": ["10.0.0.1 -j ACCEPT"]}, "not an IPv4"),
        ({"protected": ["fe80::1"]}, "not an IPv4"),
        ({"published_ports": "1-99999"}, "1-65535"),
        ({"published_ports": "60000-50000"}, "1-65535"),
        ({"published_ports": "all"}, "range like"),
        ({"container_interfaces": ["eth0 -j ACCEPT"]}, "interface name"),
        ({"container_interfaces": ["a-very-long-interface"]}, "interface name"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"ingress": ["10.0.0.254"], "nodes": ["10.0.0.0/24"], **kwargs}
    with pytest.raises(NetPolicyError, match=message):
        build_guard(**args)  # type: ignore[arg-type]


def test_port_range_reads_ip_local_port_range() -> None:
    assert parse_port_range("32768\t60999\n") == (32768, 60999)
    assert parse_port_range("30000:32767") == (30000, 32767)


# ---------------------------------------------------------------- applying


def test_apply_installs_chains_and_one_jump_each_and_twice_is_once() -> None:
    table = FakeTable()
    firewall = NodeGuardFirewall(runner=table)
    firewall.apply(guard())
    first = {chain: list(lines) for chain, lines in table.chains.items()}
    assert table.chains["DOCKER-USER"] == ["-j BERTH-NG-FORWARD", "-j RETURN"]
    assert table.chains["INPUT"] == ["-j BERTH-NG-INPUT"]
    assert table.chains["BERTH-NG-SWARM"][-1] == "-j DROP"
    assert firewall.installed()
    firewall.apply(guard())
    assert table.chains == first


def test_apply_refreshes_the_rules_when_the_cluster_changes() -> None:
    table = FakeTable()
    firewall = NodeGuardFirewall(runner=table)
    firewall.apply(guard())
    bigger = build_guard(["10.0.0.254"], ["10.0.0.11", "10.0.0.12", "10.0.0.13"])
    firewall.apply(bigger)
    assert table.chains["BERTH-NG-SWARM"] == [
        "-s 10.0.0.11/32 -j RETURN",
        "-s 10.0.0.12/32 -j RETURN",
        "-s 10.0.0.13/32 -j RETURN",
        "-j DROP",
    ]
    assert table.chains["DOCKER-USER"].count("-j BERTH-NG-FORWARD") == 1


def test_a_duplicate_jump_is_taken_away() -> None:
    table = FakeTable()
    firewall = NodeGuardFirewall(runner=table)
    firewall.apply(guard())
    table.chains["INPUT"].append("-j BERTH-NG-INPUT")
    assert not firewall.installed()
    firewall.apply(guard())
    assert table.chains["INPUT"] == ["-j BERTH-NG-INPUT"]


def test_remove_leaves_every_other_rule_and_is_safe_twice() -> None:
    table = FakeTable()
    table.chains["INPUT"].append("-p tcp --dport 22 -j ACCEPT")
    firewall = NodeGuardFirewall(runner=table)
    firewall.apply(guard())
    firewall.remove()
    assert table.chains == {"DOCKER-USER": ["-j RETURN"], "INPUT": ["-p tcp --dport 22 -j ACCEPT"]}
    firewall.remove()
    assert not firewall.installed()


def test_without_dockers_chain_apply_says_to_start_dockerd_and_changes_nothing() -> None:
    table = FakeTable(hooks=("INPUT",))
    with pytest.raises(NetPolicyError, match="start dockerd"):
        NodeGuardFirewall(runner=table).apply(guard())
    assert table.chains == {"INPUT": []}


def test_a_namespace_runs_every_command_under_nsenter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bt00000-w1").touch()
    monkeypatch.setattr(node_guard_apply, "NETNS_DIR", tmp_path)
    table = FakeTable()
    firewall = NodeGuardFirewall("bt00000-w1", runner=table)
    firewall.apply(guard())
    assert firewall.port_range() == (40000, 50000)
    assert table.commands
    assert all(c[:2] == ["nsenter", f"--net={tmp_path}/bt00000-w1"] for c in table.commands)
    with pytest.raises(NetPolicyError, match="no network namespace"):
        NodeGuardFirewall("bt00000-w9", runner=table)
    with pytest.raises(NetPolicyError, match="not a network namespace name"):
        NodeGuardFirewall("../etc", runner=table)


# ---------------------------------------------------------------- the command


def test_print_shows_the_rules_with_the_nodes_port_range(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = FakeTable()
    code = main(["print", "--ingress", "10.0.0.254", "--nodes", "10.0.0.0/24"], runner=table)
    out = capsys.readouterr().out
    assert code == 0
    assert "-A BERTH-NG-PUBLISHED -s 10.0.0.254/32 -j RETURN" in out
    assert "--ctorigdstport 40000:50000" in out  # read from ip_local_port_range
    assert all(c[0] == "cat" for c in table.commands)  # print changes nothing


def test_apply_status_remove(capsys: pytest.CaptureFixture[str]) -> None:
    table = FakeTable()
    options = ["--ingress", "10.0.0.254", "--nodes", "10.0.0.0/24", "--published-ports", "1-9"]
    assert main(["status"], runner=table) == 1
    assert main(["apply", *options], runner=table) == 0
    assert "--ctorigdstport 1:9" in " ".join(table.chains["BERTH-NG-FORWARD"])
    assert main(["status"], runner=table) == 0
    assert main(["remove"], runner=table) == 0
    assert "installed\n" in capsys.readouterr().out
    assert set(table.chains) == {"DOCKER-USER", "INPUT"}


def test_bad_input_is_a_clear_error_and_touches_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = FakeTable()
    code = main(["apply", "--ingress", "10.0.0.254/8", "--nodes", "10.0.0.0/24"], runner=table)
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ingress:") and "Traceback" not in err
    assert all(c[0] == "cat" for c in table.commands)
    with pytest.raises(SystemExit) as usage:
        main(["open-everything"], runner=table)
    assert usage.value.code == 2
