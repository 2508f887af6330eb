"""Request bodies limited per plan end to end: a real `berth server` (real Docker Engine, the
real nginx ingress), the CLI as an operator runs it. The admin tenant of this module's own
server is put on a plan with 1 MiB: a 2 MiB POST to its app is nginx's 413; on a plan with
3 MiB the same POST reaches the app within a routing pass; a bad limit is a CLI error."""

from __future__ import annotations

import httpx
import pytest

from tests.harness import BUSYBOX_APP, BerthServer, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

APP = "uploads"
MIB = 1024 * 1024


def _post(berth: BerthServer, size: int) -> httpx.Response:
    return httpx.post(
        f"http://{berth.host}:{berth.ingress_port}/index.html",
        headers={"Host": berth.host_of(APP)},
        content=b"x" * size,
        timeout=30,
        trust_env=False,
    )


def test_an_app_on_a_1_mib_plan_gets_413_for_2_mib_until_its_plan_allows_more(
    berth: BerthServer,
) -> None:
    berth.cli_ok("admin", "plan-create", "tiny-bodies", "--max-request-body-mb", "1")
    berth.cli_ok("admin", "plan-create", "bigger-bodies", "--max-request-body-mb", "3")
    plans = {p["name"]: p for p in berth.cli_json("admin", "plans")}
    assert plans["tiny-bodies"]["max_request_body_mb"] == 1
    refused = berth.cli("admin", "plan-create", "zero-bodies", "--max-request-body-mb", "0")
    assert refused.returncode == 1 and refused.stderr.startswith("error: "), refused.stderr
    assert "Traceback" not in refused.stderr
    assert "zero-bodies" not in {p["name"] for p in berth.cli_json("admin", "plans")}

    berth.cli_ok("admin", "set-plan", "admin", "tiny-bodies")
    berth.create_app(APP)
    result = berth.deploy_dir(APP, BUSYBOX_APP)
    assert result["deployment"]["status"] == "succeeded", result
    berth.wait_converged(APP, 1)

    wait_until(lambda: _post(berth, 2 * MIB).status_code == 413, 20, "2 MiB is refused")
    too_big = _post(berth, 2 * MIB)
    assert "413 Request Entity Too Large" in too_big.text  # nginx's page: the app saw nothing
    assert _post(berth, 100 * 1024).status_code != 413  # a small body reaches the app

    berth.cli_ok("admin", "set-plan", "admin", "bigger-bodies")
    wait_until(lambda: _post(berth, 2 * MIB).status_code != 413, 20, "the new plan is live")
    assert _post(berth, 4 * MIB).status_code == 413
