"""Apply an installation's egress chains with iptables (the I/O half of berth.netpolicy).

Like kube-proxy: ``iptables-restore --noflush`` replaces the contents of this installation's
own chains atomically and leaves every other rule and chain alone; the jumps into them
(``DOCKER-USER`` and ``INPUT``) are kept at exactly one each. Argument lists only, no shell.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Protocol

from berth.netpolicy.plan import Chains, NetPolicyError, chains_for

FORWARD_HOOK = "DOCKER-USER"  # dockerd's chain for user rules, first in FORWARD
INPUT_HOOK = "INPUT"
_LOCK_WAIT = ["-w", "10"]  # several installations may hold the xtables lock at once
_TIMEOUT_SECONDS = 30.0

Runner = Callable[[Sequence[str], str | None], "subprocess.CompletedProcess[str]"]


class Firewall(Protocol):
    """What the controller needs from a firewall; a fake implements it in unit tests."""

    def apply(self, rules: str) -> None:
        """Replace the contents of this installation's chains with ``rules``."""

    def jumps_present(self) -> bool:
        """True when each hook jumps to its chain exactly once."""

    def ensure_jumps(self) -> None:
        """Make each hook jump to its chain exactly once (the chains must exist)."""

    def remove(self) -> None:
        """Take the jumps and chains of this installation away; nothing else."""


def run_command(args: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetPolicyError(f"cannot run {args[0]}: {exc}") from None


class IptablesFirewall:
    """This installation's chains in the host's filter table (iptables-nft or legacy)."""

    def __init__(
        self,
        installation: str,
        iptables: str = "iptables",
        iptables_restore: str = "iptables-restore",
        runner: Runner = run_command,
    ) -> None:
        self.chains: Chains = chains_for(installation)
        self._iptables = iptables
        self._restore = iptables_restore
        self._run = runner

    @property
    def hooks(self) -> tuple[tuple[str, str], ...]:
        return ((FORWARD_HOOK, self.chains.egress), (INPUT_HOOK, self.chains.input))

    def check_available(self) -> None:
        """Fail with a clear message when the binaries are missing (checked at server start)."""
        for binary in (self._iptables, self._restore):
            if shutil.which(binary) is None:
                raise NetPolicyError(
                    f"egress filtering needs {binary!r} (apt-get install iptables), "
                    "or set BERTH_EGRESS_FILTER=false on a development machine"
                )

    def apply(self, rules: str) -> None:
        result = self._run([self._restore, *_LOCK_WAIT, "--noflush"], rules)
        if result.returncode != 0:
            raise NetPolicyError(f"iptables-restore failed: {_why(result)}")

    def jumps_present(self) -> bool:
        return all(self._jump_count(hook, chain) == 1 for hook, chain in self.hooks)

    def ensure_jumps(self) -> None:
        for hook, chain in self.hooks:
            count = self._jump_count(hook, chain)
            if count == 0:
                self._iptables_ok("-I", hook, "-j", chain)
            for _ in range(count - 1):  # a lost race left a second one
                self._iptables_ok("-D", hook, "-j", chain)

    def remove(self) -> None:
        for hook, chain in self.hooks:
            for _ in range(self._jump_count(hook, chain)):
                self._iptables_ok("-D", hook, "-j", chain)
        for chain in (self.chains.egress, self.chains.input):
            if self.rules(chain) is not None:
                self._iptables_ok("-F", chain)
                self._iptables_ok("-X", chain)

    def rules(self, chain: str) -> list[str] | None:
        """``iptables -S CHAIN`` lines; None when the chain does not exist."""
        result = self._run([self._iptables, *_LOCK_WAIT, "-S", chain], None)
        if result.returncode != 0:
            return None
        return [line for line in result.stdout.splitlines() if line.strip()]

    def _jump_count(self, hook: str, chain: str) -> int:
        lines = self.rules(hook)
        if lines is None:
            raise NetPolicyError(
                f"iptables chain {hook} is missing (is dockerd running with its iptables "
                "integration on?)"
            )
        return sum(1 for line in lines if line.split() == ["-A", hook, "-j", chain])

    def _iptables_ok(self, *args: str) -> None:
        result = self._run([self._iptables, *_LOCK_WAIT, *args], None)
        if result.returncode != 0:
            raise NetPolicyError(f"iptables {' '.join(args)} failed: {_why(result)}")


def _why(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stderr or result.stdout or f"exit code {result.returncode}").strip()[:500]
