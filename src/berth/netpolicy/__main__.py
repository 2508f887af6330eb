"""``python -m berth.netpolicy remove INSTALLATION``: take one installation's egress chains and
jumps away (uninstall, or tidying up after a test); every other rule stays."""

from __future__ import annotations

import sys

from berth.netpolicy.iptables import IptablesFirewall
from berth.netpolicy.plan import NetPolicyError

USAGE = "usage: python -m berth.netpolicy remove INSTALLATION"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "remove":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        firewall = IptablesFirewall(argv[1])
        firewall.check_available()
        firewall.remove()
    except NetPolicyError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"removed {firewall.chains.egress} and {firewall.chains.input}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
