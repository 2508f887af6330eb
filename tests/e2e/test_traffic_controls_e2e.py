"""Traffic controls end to end: a real `berth server` (real Docker Engine, the real nginx
ingress), the CLI as a user runs it. Each control set with `berth apps update` changes what
the ingress answers within a routing pass, with no rollout; bad input is a clear CLI error and
the ingress keeps serving the previous controls."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.harness import BUSYBOX_APP, BerthServer, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

APP = "guarded"
PAGE = "hello from berth"


@pytest.fixture(scope="module")
def app(berth: BerthServer) -> dict[str, Any]:
    berth.create_app(APP)
    result = berth.deploy_dir(APP, BUSYBOX_APP)
    assert result["deployment"]["status"] == "succeeded", result
    berth.wait_converged(APP, 1)
    return result


def _update(berth: BerthServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`berth apps update APP ...`, a password (if any) on stdin as a script would give it."""
    return subprocess.run(
        [sys.executable, "-m", "berth.cli.main", "apps", "update", APP, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=berth.cli_env(),
        cwd=berth.root,
        timeout=120,
        check=False,
    )


def _get(berth: BerthServer, host: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(
        f"http://{berth.host}:{berth.ingress_port}/page?x=1",
        headers={"Host": host},
        timeout=10,
        trust_env=False,
        **kwargs,
    )


def test_each_control_reaches_the_ingress_and_bad_input_changes_nothing(
    berth: BerthServer, app: dict[str, Any]
) -> None:
    host = berth.host_of(APP)
    www = f"www.{APP}-traffic.test"
    assert _get(berth, host).status_code in (200, 404)  # the app's own answer for /page

    # Basic auth: the password from stdin, never argv.
    done = _update(berth, "--basic-auth", "alice", stdin="correct horse\n")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: _get(berth, host).status_code == 401, 20, "basic auth is on")
    authed = _get(berth, host, auth=("alice", "correct horse"))
    assert authed.status_code != 401
    assert _get(berth, host, auth=("alice", "wrong")).status_code == 401

    # Bad input: a clear error, no traceback, and the ingress serves what it served.
    for args in (
        ("--rate-limit", "0/s"),
        ("--rate-limit", "99999999/s"),
        ("--allow", "10.0.0.0/33"),
        ("--redirect", f"{host}={host}"),
        ("--maintenance", "on", "--deny", "not-a-cidr"),
    ):
        refused = _update(berth, *args)
        assert refused.returncode == 1, (args, refused.stdout, refused.stderr)
        assert refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr
    refused = _update(berth, "--basic-auth", "eve\nroot", stdin="pw\n")
    assert refused.returncode == 1 and "basic auth user" in refused.stderr
    assert _get(berth, host).status_code == 401
    assert _get(berth, host, auth=("alice", "correct horse")).status_code == authed.status_code
    assert berth.cli_json("apps", "info", APP)["traffic"]["maintenance"] is False

    assert _update(berth, "--no-basic-auth").returncode == 0
    wait_until(lambda: _get(berth, host).status_code != 401, 20, "basic auth is off")

    # Maintenance: the 503 page with the message; off again serves the app.
    assert (
        _update(berth, "--maintenance", "on", "--maintenance-message", "Back <soon>").returncode
        == 0
    )
    wait_until(lambda: _get(berth, host).status_code == 503, 20, "the maintenance page")
    page = _get(berth, host).text
    assert "Back &lt;soon&gt;" in page and PAGE not in page
    assert _update(berth, "--maintenance", "off").returncode == 0
    wait_until(lambda: PAGE in (berth.app_body(APP) or ""), 20, "the app serves again")

    # A redirect from a verified domain of the app to its platform hostname.
    berth.cli_ok("domains", "add", APP, www)
    berth.cli_ok("admin", "approve-domain", www)
    assert _update(berth, "--redirect", f"{www}={host}").returncode == 0
    wait_until(lambda: _get(berth, www).status_code == 301, 20, "the redirect")
    assert _get(berth, www).headers["location"] == f"http://{host}/page?x=1"

    # Deny the address the test calls from (the ingress listens on loopback).
    assert _update(berth, "--deny", "127.0.0.1").returncode == 0
    wait_until(lambda: _get(berth, host).status_code == 403, 20, "the address is denied")
    assert _update(berth, "--no-deny", "--allow", "127.0.0.0/8").returncode == 0
    wait_until(lambda: PAGE in (berth.app_body(APP) or ""), 20, "allowed again")

    # A rate limit: 1/s with a burst of 3, then 429.
    assert _update(berth, "--rate-limit", "1/s", "--burst", "3").returncode == 0
    wait_until(lambda: _get(berth, host).status_code == 429, 20, "the rate limit")

    info = berth.cli("apps", "info", APP)
    assert "1/s per client address, burst 3" in info.stdout
    assert f"{www} -> {host} (301)" in info.stdout
    assert "$2b$" not in info.stdout
