"""Automatic HTTPS end to end: a real ``berth server`` (real nginx, real Docker Engine) whose
ACME CA is the distro's pebble, started here with its own CA that only this test trusts.

An app's platform hostname and an approved custom domain get certificates on their own, are
served over HTTPS (HTTP/2 by ALPN) with plain HTTP redirected; a tenant's own certificate is
uploaded and served, bad uploads are refused and change nothing; a CA that cannot be reached
is a failed status with the reason and the next retry, and is not asked again before then.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.certs import selfsigned
from tests.certs.pebble import Pebble
from tests.certs.tls_client import tls_request
from tests.harness import BUSYBOX_APP, BerthServer, free_port, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

APP = "secure"


@dataclass
class Env:
    berth: BerthServer
    pebble: Pebble
    https_port: int

    def root(self) -> str:
        return self.pebble.root_pem().decode()


@pytest.fixture(scope="module")
def env(real_platform: None, request: pytest.FixtureRequest) -> Iterator[Env]:
    berth = BerthServer()
    request.addfinalizer(berth.cleanup)
    # pebble validates HTTP-01 at 127.0.0.1 on Berth's ingress port (its DNS answers
    # 127.0.0.1 for every name), so the challenge goes through Berth's nginx and API.
    pebble = Pebble(http_port=berth.ingress_port)
    request.addfinalizer(pebble.stop)
    pebble.start()
    assert pebble.trust is not None
    https_port = free_port()
    berth.settings.update(
        {
            "BERTH_ACME_DIRECTORY_URL": pebble.directory_url,
            "BERTH_ACME_CA_BUNDLE": str(pebble.trust),
            "BERTH_HTTPS_PORT": str(https_port),
            "BERTH_ACME_INTERVAL_SECONDS": "1",
        }
    )
    berth.start()
    berth.create_app(APP)
    result = berth.deploy_dir(APP, BUSYBOX_APP)
    assert result["deployment"]["status"] == "succeeded", result
    berth.wait_converged(APP, 1)
    yield Env(berth, pebble, https_port)


def _certs(berth: BerthServer) -> dict[str, dict[str, Any]]:
    return {c["domain"]: c for c in berth.cli_json("certs", "list")}


def _issued(berth: BerthServer, hostname: str, source: str = "acme") -> dict[str, Any] | None:
    cert = _certs(berth).get(hostname)
    return cert if cert and cert["state"] == "issued" and cert["source"] == source else None


def test_a_new_app_gets_a_certificate_and_https_with_http2(env: Env) -> None:
    berth = env.berth
    host = berth.host_of(APP)
    cert = wait_until(lambda: _issued(berth, host), 60, f"a certificate for {host}")
    assert cert["not_after"] and cert["reason"] is None

    def served() -> Any:
        try:
            return tls_request(env.https_port, host, ca_pem=env.root())
        except (OSError, ssl.SSLError):
            return None

    answer = wait_until(served, 20, "HTTPS serves the app with pebble's certificate")
    assert answer.status == 200 and b"hello from berth" in answer.body.lower()
    h2 = tls_request(env.https_port, host, ca_pem=env.root(), alpn=("h2", "http/1.1"), send=False)
    assert h2.alpn == "h2"

    # Plain HTTP is redirected (on by default once a certificate exists), except the
    # challenge path, which Berth's API answers (404 for a token it does not hold).
    plain = berth.ingress_get(host, "/x?y=1")
    assert plain.status_code == 308
    assert plain.headers["location"] == f"https://{host}:{env.https_port}/x?y=1"
    assert berth.ingress_get(host, "/.well-known/acme-challenge/nosuchtoken").status_code == 404

    # Turned off per app: HTTP serves again, HTTPS too.
    berth.cli_ok("apps", "update", APP, "--https-redirect", "off")
    wait_until(lambda: berth.ingress_get(host).status_code == 200, 20, "HTTP serves again")
    assert tls_request(env.https_port, host, ca_pem=env.root()).status == 200
    refused = berth.cli("apps", "update", APP, "--https-redirect", "maybe")
    assert refused.returncode == 1 and "on or off" in refused.stderr
    berth.cli_ok("apps", "update", APP, "--https-redirect", "on")
    wait_until(lambda: berth.ingress_get(host).status_code == 308, 20, "redirect is on again")


def test_an_approved_custom_domain_gets_its_certificate_listed_with_the_domain(env: Env) -> None:
    berth = env.berth
    domain = f"www.{berth.base_domain.replace('.berth.test', '')}-custom.test"
    berth.cli_ok("domains", "add", APP, domain)
    pending = berth.cli_json("domains", "list", APP)
    assert pending[0]["certificate"]["state"] == "pending"  # not verified: never ordered
    berth.cli_ok("admin", "approve-domain", domain)
    wait_until(lambda: _issued(berth, domain), 60, f"a certificate for {domain}")
    listed = berth.cli_json("domains", "list", APP)
    assert listed[0]["certificate"]["state"] == "issued"
    table = berth.cli_ok("domains", "list", APP).stdout
    assert "issued (acme, until" in table
    wait_until(
        lambda: _quiet_tls(env, domain), 20, f"HTTPS serves {domain} with its own certificate"
    )


def _quiet_tls(env: Env, hostname: str) -> bool:
    try:
        return tls_request(env.https_port, hostname, ca_pem=env.root()).status == 200
    except (OSError, ssl.SSLError):
        return False


def test_a_tenants_own_certificate_is_checked_then_served(env: Env, tmp_path: Path) -> None:
    berth = env.berth
    host = berth.host_of(APP)
    wait_until(lambda: _issued(berth, host), 60, f"a certificate for {host}")
    own = selfsigned.issue((host,))
    expired = selfsigned.issue((host,), valid_from=_days_ago(40), valid_for=_days(30))
    files = {
        "cert.pem": own.chain_pem,
        "key.pem": own.key_pem,
        "wrong-key.pem": selfsigned.other_key(),
        "expired.pem": expired.chain_pem,
        "expired.key": expired.key_pem,
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for cert, key, says in (
        ("cert.pem", "wrong-key.pem", "does not match"),
        ("expired.pem", "expired.key", "expired"),
    ):
        refused = berth.cli(
            "certs", "add", host, "--cert", str(tmp_path / cert), "--key", str(tmp_path / key)
        )
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr.startswith("error: ") and says in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert _issued(berth, host) is not None  # still the ACME one
    # Not covering the domain, with its own key: refused for that reason.
    lone = selfsigned.issue(("elsewhere.example.test",))
    (tmp_path / "lone.pem").write_text(lone.chain_pem)
    (tmp_path / "lone.key").write_text(lone.key_pem)
    refused = berth.cli(
        "certs",
        "add",
        host,
        "--cert",
        str(tmp_path / "lone.pem"),
        "--key",
        str(tmp_path / "lone.key"),
    )
    assert refused.returncode == 1 and "does not cover" in refused.stderr
    # Another tenant's hostname, or a wildcard by a tenant: refused before any check.
    refused = berth.cli(
        "certs", "add", "nobody.example.test", "--cert", str(tmp_path / "cert.pem"), "--key",
        str(tmp_path / "key.pem"),
    )  # fmt: skip
    assert refused.returncode == 1 and "not a hostname of your apps" in refused.stderr

    done = berth.cli_json(
        "certs",
        "add",
        host,
        "--cert",
        str(tmp_path / "cert.pem"),
        "--key",
        str(tmp_path / "key.pem"),
    )
    assert done["state"] == "issued" and done["source"] == "upload"

    def serving_own() -> bool:
        try:
            seen = tls_request(env.https_port, host, ca_pem=own.ca_pem, send=False)
        except (OSError, ssl.SSLError):
            return False
        return seen.fingerprint == own.fingerprint

    wait_until(serving_own, 20, "the uploaded certificate is served")
    berth.cli_ok("certs", "remove", host)
    wait_until(lambda: _issued(berth, host), 60, "back to an ACME certificate")


def test_an_unreachable_ca_shows_the_reason_and_backs_off(env: Env) -> None:
    berth = env.berth
    env.pebble.halt()
    berth.create_app("late")

    def failed() -> dict[str, Any] | None:
        cert = _certs(berth).get(berth.host_of("late"))
        return cert if cert and cert["state"] == "failed" else None

    cert = wait_until(failed, 60, "the order fails while the CA is down")
    assert "cannot be reached" in cert["reason"] and cert["next_retry"]
    log_before = berth.log_path.read_text(errors="replace").count("certificate for late.")
    time.sleep(4)  # four passes at the test's 1 s interval: none may order before next_retry
    again = _certs(berth)[berth.host_of("late")]
    assert again["next_retry"] == cert["next_retry"] and again["state"] == "failed"
    assert berth.log_path.read_text(errors="replace").count("certificate for late.") == log_before
    table = berth.cli_ok("certs", "list").stdout
    assert "failed: " in table and "next try" in table
    # The status the leader keeps in the store (SQLite here): one failure, one order.
    with contextlib.closing(sqlite3.connect(berth.home / "berth.db")) as db:
        (text,) = db.execute(
            "SELECT status_json FROM certificates WHERE name = ?", (berth.host_of("late"),)
        ).fetchone()
    assert json.loads(text)["failures"] == 1


def _days(n: int) -> Any:
    import datetime as dt

    return dt.timedelta(days=n)


def _days_ago(n: int) -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC) - dt.timedelta(days=n)
