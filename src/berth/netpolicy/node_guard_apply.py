"""Install or remove a node's guard (berth.netpolicy.node_guard) with iptables; the operator's
command on each node, or a node agent's (Berth itself reaches a worker only through its Docker
Engine, which cannot set a firewall).

``iptables-restore --noflush`` replaces the contents of the guard's own chains (BERTH-NG-*)
atomically and leaves every other rule alone; ``DOCKER-USER`` and ``INPUT`` each jump to the
guard exactly once. Applying twice is the same as once. In a network namespace of its own
(a test node, ``--netns NAME``) every command runs under ``nsenter --net=``. Argument lists
only, never a shell.

    python -m berth.netpolicy.node_guard print  --ingress ADDR --nodes CIDR [--protect CIDR]
    python -m berth.netpolicy.node_guard apply  (the same options) [--netns NAME]
    python -m berth.netpolicy.node_guard status [--netns NAME]
    python -m berth.netpolicy.node_guard remove [--netns NAME]
    python -m berth.netpolicy.node_guard run    (apply's options) [--interval 10]

``run`` is what Berth's own guard service runs on every node (berth.swarm.guard_service): it
applies the guard, then checks it every ``--interval`` seconds and applies it again if someone
or something took it away. On SIGTERM (Swarm replacing it with a guard of newer facts) it
exits and leaves the rules in place: the next guard replaces them in one transaction, so
there is never a moment without them.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from berth.netpolicy.iptables import Runner, run_command
from berth.netpolicy.node_guard import (
    CHAINS,
    HOOKS,
    MANAGER_PORT,
    NodeGuard,
    build_guard,
    describe,
    parse_port_range,
    restore_text,
    rules,
)
from berth.netpolicy.plan import NetPolicyError

NETNS_DIR = Path("/run/netns")
PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"  # per network namespace
_LOCK_WAIT = ["-w", "10"]
DEFAULT_CHECK_SECONDS = 10.0
_NETNS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def netns_prefix(netns: str | None) -> list[str]:
    """The command prefix that runs a command in a named network namespace (none: here)."""
    if netns is None:
        return []
    if not _NETNS_NAME.fullmatch(netns):
        raise NetPolicyError(f"{netns!r} is not a network namespace name")
    path = NETNS_DIR / netns
    if not path.exists():
        raise NetPolicyError(f"no network namespace {netns!r} (no {path})")
    return ["nsenter", f"--net={path}"]


class NodeGuardFirewall:
    """The guard's chains in one network namespace's filter table."""

    def __init__(self, netns: str | None = None, runner: Runner = run_command) -> None:
        self._prefix = netns_prefix(netns)
        self._run = runner

    def apply(self, guard: NodeGuard) -> None:
        for hook, _ in HOOKS:
            if self.rules(hook) is None:
                raise NetPolicyError(
                    f"iptables chain {hook} is missing: start dockerd (with its iptables "
                    "integration) before the guard"
                )
        result = self._run([*self._prefix, "iptables-restore", *_LOCK_WAIT, "--noflush"],
                           restore_text(guard))  # fmt: skip
        if result.returncode != 0:
            raise NetPolicyError(f"iptables-restore failed: {_why(result)}")
        for hook, chain in HOOKS:
            count = self._jump_count(hook, chain)
            if count == 0:  # first: nothing Docker or anyone else accepts comes before it
                self._iptables_ok("-I", hook, "1", "-j", chain)
            for _ in range(count - 1):  # a race left a second one
                self._iptables_ok("-D", hook, "-j", chain)

    def matches(self, guard: NodeGuard) -> bool:
        """Installed, and each chain holds as many rules as ``guard`` puts there (someone
        flushing or editing a chain is seen; iptables rewrites a rule's text, so the count
        is what is compared)."""
        if not self.installed():
            return False
        wanted: dict[str, int] = dict.fromkeys(CHAINS, 0)
        for rule in rules(guard):
            wanted[rule[1]] += 1
        for chain, count in wanted.items():
            lines = self.rules(chain) or []
            if sum(1 for line in lines if line.startswith("-A ")) != count:
                return False
        return True

    def installed(self) -> bool:
        """Every chain exists and each hook jumps to the guard exactly once."""
        return all(self.rules(chain) is not None for chain in CHAINS) and all(
            self._jump_count(hook, chain) == 1 for hook, chain in HOOKS
        )

    def remove(self) -> None:
        """The jumps and the guard's chains go; nothing else is touched. Safe when absent."""
        for hook, chain in HOOKS:
            for _ in range(self._jump_count(hook, chain)):
                self._iptables_ok("-D", hook, "-j", chain)
        present = [chain for chain in CHAINS if self.rules(chain) is not None]
        for chain in present:  # flushed first: the chains jump to each other
            self._iptables_ok("-F", chain)
        for chain in present:
            self._iptables_ok("-X", chain)

    def port_range(self) -> tuple[int, int]:
        """Docker's dynamic port range here: the namespace's ip_local_port_range."""
        result = self._run([*self._prefix, "cat", PORT_RANGE_FILE], None)
        if result.returncode != 0:
            raise NetPolicyError(f"cannot read {PORT_RANGE_FILE}: {_why(result)}")
        return parse_port_range(result.stdout)

    def rules(self, chain: str) -> list[str] | None:
        """``iptables -S CHAIN`` lines; None when the chain does not exist."""
        result = self._run([*self._prefix, "iptables", *_LOCK_WAIT, "-S", chain], None)
        if result.returncode != 0:
            return None
        return [line for line in result.stdout.splitlines() if line.strip()]

    def _jump_count(self, hook: str, chain: str) -> int:
        lines = self.rules(hook) or []
        return sum(1 for line in lines if line.split() == ["-A", hook, "-j", chain])

    def _iptables_ok(self, *args: str) -> None:
        result = self._run([*self._prefix, "iptables", *_LOCK_WAIT, *args], None)
        if result.returncode != 0:
            raise NetPolicyError(f"iptables {' '.join(args)} failed: {_why(result)}")


def keep_applied(
    firewall: NodeGuardFirewall, guard: NodeGuard, interval: float, stop: threading.Event
) -> int:
    """Check every ``interval`` seconds; apply again whatever went missing. Returns 0 once
    ``stop`` is set, the rules left as they are. A failed check is reported and retried."""
    interval = max(interval, 0.5)
    while not stop.wait(interval):
        try:
            if not firewall.matches(guard):
                firewall.apply(guard)
                print("the guard was changed or removed: applied again", flush=True)
        except NetPolicyError as exc:
            print(f"error: {exc.message} (retrying in {interval:g}s)", file=sys.stderr, flush=True)
    print("stopping; the rules stay until the next guard replaces them", flush=True)
    return 0


def _stop_on_sigterm() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def _why(result: object) -> str:
    stderr = str(getattr(result, "stderr", "") or "")
    stdout = str(getattr(result, "stdout", "") or "")
    code = getattr(result, "returncode", "?")
    return (stderr or stdout or f"exit code {code}").strip()[:500]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m berth.netpolicy.node_guard",
        description="Tenant isolation on a Swarm node: print, apply, check or remove the guard.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("print", "print the rules"),
        ("apply", "install or refresh them"),
        ("run", "apply, then keep them applied until SIGTERM (Berth's guard service)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--ingress",
            action="append",
            default=[],
            metavar="ADDR|CIDR",
            help="may reach published ports (the ingress nodes); repeatable",
        )
        sub.add_argument(
            "--nodes",
            action="append",
            default=[],
            metavar="ADDR|CIDR",
            help="the cluster's nodes (Swarm peers); repeatable",
        )
        sub.add_argument(
            "--protect",
            action="append",
            default=[],
            metavar="ADDR|CIDR",
            help="more that containers must not reach (the Berth host, the "
            "registry, the overlay pool, private ranges); repeatable",
        )
        sub.add_argument(
            "--join-from",
            action="append",
            default=[],
            metavar="ADDR|CIDR",
            help=f"may reach the managers' port {MANAGER_PORT} (machines joining); repeatable",
        )
        sub.add_argument(
            "--published-ports",
            metavar="LOW-HIGH",
            help="Docker's dynamic port range (default: this node's ip_local_port_range)",
        )
        sub.add_argument("--netns", help="a network namespace (/run/netns/NAME)")  # fmt: skip
        if name == "run":
            sub.add_argument(
                "--interval",
                type=float,
                default=DEFAULT_CHECK_SECONDS,
                help="seconds between checks that the guard is still in place",
            )
    for name, text in (("status", "say whether it is installed"), ("remove", "take it away")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--netns", help="a network namespace (/run/netns/NAME)")
    return parser


def main(argv: Sequence[str], runner: Runner = run_command) -> int:
    args = _parser().parse_args(list(argv))
    try:
        firewall = NodeGuardFirewall(args.netns, runner)
        if args.command in ("print", "apply", "run"):
            ports = args.published_ports
            if ports is None:
                low, high = firewall.port_range()
                ports = f"{low}-{high}"
            guard = build_guard(
                args.ingress, args.nodes, args.protect, ports, join_from=args.join_from
            )
            if args.command == "print":
                print(describe(guard))
                print(restore_text(guard), end="")
                return 0
            firewall.apply(guard)
            print(describe(guard))
            print("applied: DOCKER-USER and INPUT jump to BERTH-NG-FORWARD / BERTH-NG-INPUT")
            if args.command == "run":
                return keep_applied(firewall, guard, args.interval, _stop_on_sigterm())
            return 0
        if args.command == "status":
            ok = firewall.installed()
            print("installed" if ok else "not installed")
            return 0 if ok else 1
        firewall.remove()
        print("removed the BERTH-NG-* chains and their jumps")
        return 0
    except NetPolicyError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
