"""The guard Berth's service runs on every node (``node_guard run``): it applies, keeps the
rules applied when something takes them away, and on SIGTERM exits leaving them (the next guard
replaces them in one transaction: no window). And ``--join-from``: who may reach the managers'
port besides the nodes. Over the fake filter table of test_node_guard."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from berth.netpolicy import node_guard_apply
from berth.netpolicy.node_guard import build_guard, rules
from berth.netpolicy.node_guard_apply import NodeGuardFirewall, keep_applied, main
from berth.netpolicy.plan import NetPolicyError
from tests.unit.netpolicy.test_node_guard import FakeTable, guard


class StopAfter(threading.Event):
    """A stop event whose wait() runs ``between`` each time, and is set after ``rounds``."""

    def __init__(self, rounds: int, between: Iterator[None] | None = None) -> None:
        super().__init__()
        self.rounds = rounds
        self.between = between

    def wait(self, timeout: float | None = None) -> bool:
        if self.rounds <= 0:
            self.set()
            return True
        self.rounds -= 1
        if self.between is not None:
            next(self.between, None)
        return False


def test_join_from_opens_only_the_managers_port_before_the_nodes() -> None:
    joining = build_guard(["10.0.0.254"], ["10.0.0.11"], join_from=["10.0.0.0/25"])
    swarm = [r[2:] for r in rules(joining) if r[1] == "BERTH-NG-SWARM"]
    assert swarm == [
        ["-p", "tcp", "--dport", "2377", "-s", "10.0.0.0/25", "-j", "RETURN"],
        ["-s", "10.0.0.11/32", "-j", "RETURN"],
        ["-j", "DROP"],
    ]
    with pytest.raises(NetPolicyError, match="join from"):
        build_guard(["10.0.0.254"], ["10.0.0.11"], join_from=["10.0.0.1/8"])


def test_matches_sees_a_flushed_or_edited_chain() -> None:
    table = FakeTable()
    firewall = NodeGuardFirewall(runner=table)
    assert not firewall.matches(guard())
    firewall.apply(guard())
    assert firewall.matches(guard())
    table.chains["BERTH-NG-PUBLISHED"] = []
    assert not firewall.matches(guard())
    firewall.apply(guard())
    table.chains["BERTH-NG-SWARM"].insert(0, "-j ACCEPT")
    assert not firewall.matches(guard())


def test_run_applies_again_what_was_taken_away_and_exits_leaving_the_rules(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = FakeTable()
    firewall = NodeGuardFirewall(runner=table)
    firewall.apply(guard())
    applied = {chain: list(lines) for chain, lines in table.chains.items()}

    def vandal() -> Iterator[None]:
        yield None  # first round: nothing changed
        firewall.remove()  # second: someone removes the guard
        yield None

    restores = sum(1 for c in table.commands if c[0] == "iptables-restore")
    assert keep_applied(firewall, guard(), 0.5, StopAfter(3, vandal())) == 0
    assert table.chains == applied  # back, and left in place at the exit
    assert sum(1 for c in table.commands if c[0] == "iptables-restore") == restores + 1
    assert "applied again" in capsys.readouterr().out


def test_a_failing_check_is_reported_and_retried(capsys: pytest.CaptureFixture[str]) -> None:
    table = FakeTable(hooks=("INPUT",))  # no DOCKER-USER: every apply fails
    firewall = NodeGuardFirewall(runner=table)
    assert keep_applied(firewall, guard(), 0.5, StopAfter(2)) == 0
    err = capsys.readouterr().err
    assert err.count("start dockerd") == 2 and "Traceback" not in err


def test_the_run_command_applies_then_keeps_it_until_told_to_stop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    table = FakeTable()
    monkeypatch.setattr(node_guard_apply, "_stop_on_sigterm", lambda: StopAfter(1))
    code = main(
        ["run", "--ingress", "10.0.0.254", "--nodes", "10.0.0.0/24", "--join-from",
         "10.0.0.0/24", "--interval", "1"],
        runner=table,
    )  # fmt: skip
    assert code == 0
    assert NodeGuardFirewall(runner=table).installed()
    assert "-p tcp --dport 2377 -s 10.0.0.0/24 -j RETURN" in table.chains["BERTH-NG-SWARM"]
    assert "the rules stay" in capsys.readouterr().out


def test_run_with_bad_facts_fails_at_once_and_touches_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = FakeTable()
    code = main(["run", "--ingress", "nowhere", "--nodes", "10.0.0.0/24"], runner=table)
    assert code == 1
    assert "error: ingress:" in capsys.readouterr().err
    assert set(table.chains) == {"DOCKER-USER", "INPUT"}
