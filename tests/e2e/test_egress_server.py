"""A real ``berth server`` filters the tenant network of a deployed app, and its cleanup takes
its own chains away. A bad blocked range stops the server at start with a clear message."""

from __future__ import annotations

import contextlib
import json

import pytest

from berth.netpolicy.iptables import IptablesFirewall
from tests.harness import BUSYBOX_APP, BerthServer, docker_client, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.nginx]

BLOCKED = "198.51.100.0/24"
BERTH_SERVER_OPTIONS = {"extra_env": {"BERTH_EGRESS_BLOCKED_RANGES": json.dumps([BLOCKED])}}


def has_rule(rules: list[str], *parts: str) -> bool:
    return any(all(part in rule for part in parts) for rule in rules)


def test_deployed_app_network_is_filtered_and_cleanup_removes_the_chains(
    fresh_berth: BerthServer,
) -> None:
    fresh_berth.create_app("walled", "--health-path", "/healthz")
    fresh_berth.deploy_dir("walled", BUSYBOX_APP)
    fresh_berth.wait_converged("walled", 1)
    assert fresh_berth.installation is not None
    firewall = IptablesFirewall(fresh_berth.installation)
    [network] = [n for n in fresh_berth.networks() if n.startswith("berth-t-")]
    with contextlib.closing(docker_client()) as client:
        bridge = f"br-{client.networks.get(network).id[:12]}"
    egress = wait_until(lambda: firewall.rules(firewall.chains.egress), 20, "the chain exists")
    assert has_rule(egress, f"-i {bridge}", "-d 169.254.0.0/16", "-j REJECT"), egress
    assert has_rule(egress, f"-i {bridge}", f"-d {BLOCKED}", "-j REJECT"), egress
    assert has_rule(firewall.rules(firewall.chains.input) or [], f"-i {bridge}", "-j REJECT")
    assert firewall.jumps_present()
    assert fresh_berth.ingress_get(fresh_berth.host_of("walled")).status_code == 200

    fresh_berth.cleanup()
    assert firewall.rules(firewall.chains.egress) is None
    assert firewall.rules(firewall.chains.input) is None
    assert f"-j {firewall.chains.input}" not in "\n".join(firewall.rules("INPUT") or [])


def test_a_bad_blocked_range_stops_the_server_with_a_clear_message() -> None:
    server = BerthServer(extra_env={"BERTH_EGRESS_BLOCKED_RANGES": '["10.0.0.1/8"]'})
    try:
        with pytest.raises(RuntimeError, match="exited") as caught:
            server.start(timeout=30)
        said = " ".join(str(caught.value).split())  # the CLI wraps long lines
        assert "BERTH_EGRESS_BLOCKED_RANGES: '10.0.0.1/8' is not a valid CIDR" in said
        assert "Traceback" not in said
    finally:
        server.cleanup()
