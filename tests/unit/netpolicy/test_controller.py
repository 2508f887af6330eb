"""The egress controller with a fake firewall and fake networks; IptablesFirewall's commands."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence

import pytest

from berth.netpolicy.controller import EgressController
from berth.netpolicy.iptables import IptablesFirewall
from berth.netpolicy.observe import bridge_of
from berth.netpolicy.plan import BridgeNetwork, NetPolicyError, parse_blocked_ranges
from tests.harness import wait_until

INST = "0123456789ab"


class FakeFirewall:
    def __init__(self) -> None:
        self.applied: list[str] = []
        self.jumps = False
        self.removed = 0

    def apply(self, rules: str) -> None:
        self.applied.append(rules)

    def jumps_present(self) -> bool:
        return self.jumps

    def ensure_jumps(self) -> None:
        assert self.applied, "jumps before the chains exist"
        self.jumps = True

    def remove(self) -> None:
        self.removed += 1
        self.jumps = False


class FakeNetworks:
    def __init__(self) -> None:
        self.bridges: dict[str, BridgeNetwork] = {}
        self.unfilterable: dict[str, str] = {}  # name -> id (exists, but left out of managed())

    def add(self, name: str, network_id: str, tenant: str = "t1") -> None:
        self.bridges[name] = BridgeNetwork(
            f"br-{network_id[:12]}", "172.20.0.0/16", tenant, name=name, id=network_id
        )

    def managed(self) -> list[BridgeNetwork]:
        return list(self.bridges.values())

    def network_id(self, name: str) -> str | None:
        if name in self.bridges:
            return self.bridges[name].id
        found: str | None = self.unfilterable.get(name)
        return found


@pytest.fixture
def parts() -> tuple[EgressController, FakeFirewall, FakeNetworks, set[str]]:
    firewall, networks, off = FakeFirewall(), FakeNetworks(), set[str]()
    controller = EgressController(
        INST, networks, lambda: frozenset(off), firewall, parse_blocked_ranges(["10.0.0.0/8"])
    )
    return controller, firewall, networks, off


def test_sync_applies_then_only_on_change_or_missing_jumps(
    parts: tuple[EgressController, FakeFirewall, FakeNetworks, set[str]],
) -> None:
    controller, firewall, networks, off = parts
    networks.add("berth-t-t1", "a" * 64)
    assert controller.sync() is True
    assert firewall.jumps and len(firewall.applied) == 1
    assert "-i br-aaaaaaaaaaaa -d 10.0.0.0/8" in firewall.applied[0]
    assert controller.sync() is False  # nothing changed: nothing written
    off.add("t1")  # the tenant's plan switches internet off
    assert controller.sync() is True
    assert "-A BERTH-E-0123456789ab -i br-aaaaaaaaaaaa -j REJECT" in firewall.applied[-1]
    firewall.jumps = False  # someone flushed the table, or dockerd restarted
    assert controller.sync() is True
    assert firewall.jumps and len(firewall.applied) == 3


def test_ensure_filtered_syncs_a_new_network_before_returning(
    parts: tuple[EgressController, FakeFirewall, FakeNetworks, set[str]],
) -> None:
    controller, firewall, networks, _ = parts
    controller.sync()
    networks.add("berth-t-t1", "b" * 64)
    controller.ensure_filtered("berth-t-t1")
    assert "br-bbbbbbbbbbbb" in firewall.applied[-1]
    writes = len(firewall.applied)
    controller.ensure_filtered("berth-t-t1")  # already in place: no sync, no write
    assert len(firewall.applied) == writes


def test_a_recreated_network_with_a_new_bridge_is_filtered_again(
    parts: tuple[EgressController, FakeFirewall, FakeNetworks, set[str]],
) -> None:
    controller, firewall, networks, _ = parts
    networks.add("berth-t-t1", "c" * 64)
    controller.ensure_filtered("berth-t-t1")
    networks.add("berth-t-t1", "d" * 64)  # removed and created again: new id, new bridge
    controller.ensure_filtered("berth-t-t1")
    assert "br-dddddddddddd" in firewall.applied[-1]
    assert "br-cccccccccccc" not in firewall.applied[-1]


def test_ensure_filtered_refuses_a_network_that_cannot_be_filtered(
    parts: tuple[EgressController, FakeFirewall, FakeNetworks, set[str]],
) -> None:
    controller, _, networks, _ = parts
    networks.unfilterable["berth-t-odd"] = "e" * 64
    with pytest.raises(NetPolicyError, match="refusing to run"):
        controller.ensure_filtered("berth-t-odd")
    with pytest.raises(NetPolicyError, match="does not exist"):
        controller.ensure_filtered("berth-t-none")


def test_a_failing_firewall_propagates_and_the_next_sync_retries(
    parts: tuple[EgressController, FakeFirewall, FakeNetworks, set[str]],
) -> None:
    controller, firewall, networks, _ = parts
    networks.add("berth-t-t1", "f" * 64)

    def broken(rules: str) -> None:
        raise NetPolicyError("iptables-restore failed: boom")

    firewall.apply = broken  # type: ignore[method-assign]
    with pytest.raises(NetPolicyError):
        controller.ensure_filtered("berth-t-t1")
    del firewall.apply  # back to the class's method
    controller.ensure_filtered("berth-t-t1")
    assert firewall.jumps


def test_remove_takes_the_rules_away_and_forgets_them(
    parts: tuple[EgressController, FakeFirewall, FakeNetworks, set[str]],
) -> None:
    controller, firewall, networks, _ = parts
    networks.add("berth-t-t1", "a" * 64)
    controller.sync()
    controller.remove()
    assert firewall.removed == 1
    assert controller.sync() is True  # applied again from scratch


def test_start_survives_a_failing_first_sync_and_stop_ends_the_loop() -> None:
    class Broken(FakeNetworks):
        def managed(self) -> list[BridgeNetwork]:
            raise ConnectionError("engine down")  # what docker-py raises is no NetPolicyError

    controller = EgressController(INST, Broken(), frozenset, FakeFirewall(), interval=3600)
    controller.start()
    try:
        wait_until(lambda: "engine down" in controller.last_error, 10, "the loop records the error")
    finally:
        controller.stop()
    assert not any(t.name == "berth-egress" for t in threading.enumerate())


def test_bridge_of_reads_the_option_or_the_id_and_the_ipam_subnet() -> None:
    attrs = {
        "Name": "berth-b-t1",
        "Id": "0123456789abcdef" * 4,
        "Driver": "bridge",
        "Options": {},
        "IPAM": {"Config": [{"Subnet": "172.25.0.0/16", "Gateway": "172.25.0.1"}]},
        "Labels": {"berth.tenant": "t1", "berth.purpose": "build"},
    }
    bridge = bridge_of(attrs)
    assert (bridge.interface, bridge.subnet, bridge.tenant, bridge.purpose) == (
        "br-0123456789ab",
        "172.25.0.0/16",
        "t1",
        "build",
    )
    named = bridge_of({**attrs, "Options": {"com.docker.network.bridge.name": "berth0"}})
    assert named.interface == "berth0"
    with pytest.raises(NetPolicyError, match="interface"):
        bridge_of({**attrs, "Options": {"com.docker.network.bridge.name": "x -j ACCEPT"}})
    with pytest.raises(NetPolicyError, match="not a bridge"):
        bridge_of({**attrs, "Driver": "overlay"})


class RecordingRunner:
    """Stands in for subprocess.run: records argument lists, answers -S from a fake table."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def __call__(
        self, args: Sequence[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        args = list(args)
        self.calls.append(args)
        op, chain = args[3], args[4] if len(args) > 4 else ""
        if args[0] == "iptables-restore":
            return subprocess.CompletedProcess(args, 0, "", "")
        if op == "-S":
            if chain not in self.table:
                return subprocess.CompletedProcess(args, 1, "", "no chain")
            return subprocess.CompletedProcess(args, 0, "\n".join(self.table[chain]) + "\n", "")
        rule = f"-A {chain} " + " ".join(args[5:])
        if op == "-I":
            self.table[chain].insert(1, rule)
        elif op == "-D":
            self.table[chain].remove(rule)
        elif op == "-X":
            del self.table[chain]
        return subprocess.CompletedProcess(args, 0, "", "")


def test_iptables_firewall_keeps_exactly_one_jump_and_removes_only_its_own() -> None:
    e, i = f"BERTH-E-{INST}", f"BERTH-I-{INST}"
    foreign = "-A INPUT -j BERTH-I-ffffffffffff"
    runner = RecordingRunner(
        {
            "INPUT": ["-P INPUT ACCEPT", foreign],
            "DOCKER-USER": ["-N DOCKER-USER", f"-A DOCKER-USER -j {e}", f"-A DOCKER-USER -j {e}"],
            e: [f"-N {e}"],
            i: [f"-N {i}"],
        }
    )
    firewall = IptablesFirewall(INST, runner=runner)
    assert not firewall.jumps_present()  # two in DOCKER-USER, none in INPUT
    firewall.apply("*filter\nCOMMIT\n")
    assert runner.calls[-1] == ["iptables-restore", "-w", "10", "--noflush"]
    firewall.ensure_jumps()
    assert firewall.jumps_present()
    assert runner.table["DOCKER-USER"].count(f"-A DOCKER-USER -j {e}") == 1
    firewall.remove()
    assert runner.table == {
        "INPUT": ["-P INPUT ACCEPT", foreign],
        "DOCKER-USER": ["-N DOCKER-USER"],
    }
    assert all(isinstance(arg, str) for call in runner.calls for arg in call)


def test_iptables_firewall_explains_a_missing_docker_user_chain() -> None:
    firewall = IptablesFirewall(INST, runner=RecordingRunner({"INPUT": []}))
    with pytest.raises(NetPolicyError, match="DOCKER-USER is missing"):
        firewall.ensure_jumps()


def test_wake_syncs_without_waiting_for_the_period() -> None:
    firewall, networks = FakeFirewall(), FakeNetworks()
    controller = EgressController(INST, networks, frozenset, firewall, interval=3600)
    controller.start()
    try:
        networks.add("berth-t-t1", "9" * 64)
        controller.wake()
        wait_until(
            lambda: firewall.applied and "br-999999999999" in firewall.applied[-1], 10, "a sync"
        )
    finally:
        controller.stop()


def test_the_watcher_starts_and_stops_with_the_controller() -> None:
    calls: list[str] = []

    class Watcher:
        def start(self) -> None:
            calls.append("start")

        def stop(self) -> None:
            calls.append("stop")

    controller = EgressController(INST, FakeNetworks(), frozenset, FakeFirewall(), interval=3600)
    controller.set_watcher(Watcher())
    controller.start()
    controller.stop()
    assert calls == ["start", "stop"]
