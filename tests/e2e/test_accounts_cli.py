"""Issue 3 through the CLI on a real server: sign-up with a password from standard input,
whoami, tokens, teams and invitations, roles, billing views, operator credit and the audit log."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.harness import BerthServer

PASSWORD = "a long enough password"


def user_cli(
    berth: BerthServer, home: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user with their own config directory (no admin token in the environment)."""
    env = berth.cli_env()
    env.pop("BERTH_TOKEN", None)
    env["XDG_CONFIG_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "berth.cli.main", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return (
        json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else result.stdout
    )


@pytest.fixture(scope="module")
def alice(berth: BerthServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("alice")
    ok(user_cli(berth, home, "signup", "alice@example.com", "--json", stdin=PASSWORD + "\n"))
    return home


@pytest.fixture(scope="module")
def bob(berth: BerthServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("bob")
    ok(user_cli(berth, home, "signup", "bob@example.com", "--json", stdin=PASSWORD + "\n"))
    return home


def test_signup_login_whoami_logout(berth: BerthServer, alice: Path) -> None:
    who = ok(user_cli(berth, alice, "whoami", "--json"))
    assert who["email"] == "alice@example.com" and who["role"] == "owner"
    # The CLI traded its login session for an API token of its own (sessions are the panel's).
    assert who["via"] == "token" and who["scope"] == "admin" and not who["is_operator"]
    saved = json.loads((alice / "berth" / "cli.json").read_text())
    assert (
        saved["token"].startswith("berth_")
        and (alice / "berth" / "cli.json").stat().st_mode & 0o077 == 0
    )
    ok(user_cli(berth, alice, "logout", "--json"))
    gone = user_cli(berth, alice, "whoami")
    assert gone.returncode == 1 and "berth login" in gone.stderr
    # Logging out revoked that token: the old secret no longer opens anything.
    old = berth.api.get("/auth/whoami", headers={"Authorization": f"Bearer {saved['token']}"})
    assert old.status_code == 401
    wrong = user_cli(berth, alice, "login", "alice@example.com", stdin="wrong password!\n")
    assert wrong.returncode == 1 and "wrong email or password" in wrong.stderr
    ok(user_cli(berth, alice, "login", "alice@example.com", "--json", stdin=PASSWORD + "\n"))
    assert ok(user_cli(berth, alice, "whoami", "--json"))["email"] == "alice@example.com"


def test_duplicate_signup_is_refused(berth: BerthServer, alice: Path, tmp_path: Path) -> None:
    again = user_cli(berth, tmp_path, "signup", "alice@example.com", stdin=PASSWORD + "\n")
    assert again.returncode == 1 and "exists" in again.stderr


def test_tokens_are_shown_once_scoped_and_revocable(
    berth: BerthServer, alice: Path, tmp_path: Path
) -> None:
    created = ok(user_cli(berth, alice, "tokens", "create", "ci", "--scope", "read", "--json"))
    secret = created["token"]
    listed = ok(user_cli(berth, alice, "tokens", "list", "--json"))
    assert secret not in json.dumps(listed)
    token_file = tmp_path / "token"
    token_file.write_text(secret)
    reader = tmp_path / "reader"
    ok(user_cli(berth, reader, "login", "--token-file", str(token_file), "--json"))
    refused = user_cli(berth, reader, "apps", "create", "readers-app")
    assert refused.returncode == 1 and "may only read" in refused.stderr
    ok(user_cli(berth, alice, "tokens", "revoke", created["id"], "--json"))
    revoked = user_cli(berth, reader, "apps", "list")
    assert revoked.returncode == 1 and "revoked" in revoked.stderr


def test_team_invitation_and_roles(berth: BerthServer, alice: Path, bob: Path) -> None:
    ok(user_cli(berth, alice, "teams", "create", "acme", "--json"))
    ok(user_cli(berth, alice, "switch", "acme", "--json"))
    invite = ok(
        user_cli(berth, alice, "teams", "invite", "bob@example.com", "--role", "viewer", "--json")
    )
    joined = ok(user_cli(berth, bob, "teams", "accept", invite["token"], "--json"))
    assert joined == {"name": "acme", "kind": "team", "role": "viewer"}
    ok(user_cli(berth, alice, "apps", "create", "acme-site", "--json"))
    ok(user_cli(berth, bob, "switch", "acme", "--json"))
    assert [a["name"] for a in ok(user_cli(berth, bob, "apps", "list", "--json"))] == ["acme-site"]
    denied = user_cli(berth, bob, "scale", "acme-site", "2")
    assert denied.returncode == 1 and "may only read" in denied.stderr
    ok(user_cli(berth, alice, "teams", "set-role", "bob@example.com", "developer", "--json"))
    ok(user_cli(berth, bob, "scale", "acme-site", "2", "--json"))
    members = ok(user_cli(berth, alice, "teams", "members", "--json"))
    assert {m["email"]: m["role"] for m in members} == {
        "alice@example.com": "owner",
        "bob@example.com": "developer",
    }
    # Back in his own tenant, bob cannot see acme's app at all.
    ok(user_cli(berth, bob, "switch", "--json"))
    missing = user_cli(berth, bob, "apps", "info", "acme-site")
    assert missing.returncode == 1 and "not found" in missing.stderr
    ok(user_cli(berth, alice, "switch", "--json"))


def test_billing_views_and_operator_credit(berth: BerthServer, alice: Path) -> None:
    tenant = ok(user_cli(berth, alice, "whoami", "--json"))["tenant"]
    berth.cli_json("admin", "credit", tenant, "12.50", "--key", "e2e-credit-1")
    again = berth.cli_json("admin", "credit", tenant, "12.50", "--key", "e2e-credit-1")
    assert again["created"] is False  # the same key credits once
    for amount in ("-5", "0", "1.234", "abc"):
        bad = berth.cli("admin", "credit", tenant, "--", amount)
        assert bad.returncode == 1 and "amount" in bad.stderr.lower(), bad.stderr
    balance = ok(user_cli(berth, alice, "billing", "balance", "--json"))
    assert balance["balance_minor"] == 1250 and not balance["suspended"]
    txs = ok(user_cli(berth, alice, "billing", "transactions", "--json"))
    assert [t["kind"] for t in txs] == ["topup"]
    period = datetime.now(UTC).strftime("%Y-%m")
    invoice = ok(user_cli(berth, alice, "billing", "invoice", period, "--json"))
    assert invoice["status"] == "draft" and invoice["total_minor"] == 0
    csv_text = ok(user_cli(berth, alice, "billing", "usage", "--csv"))
    assert csv_text.splitlines()[0].startswith("hour_start_utc,app")
    tenants = berth.cli_json("admin", "tenants")
    assert any(t["name"] == tenant and t["balance_minor"] == 1250 for t in tenants)


def test_audit_log_records_who_did_what(berth: BerthServer, alice: Path) -> None:
    mine = ok(user_cli(berth, alice, "audit", "--json"))
    assert any("alice@example.com" in e["actor"] and "/teams" in e["target"] for e in mine)
    everyone = berth.cli_json("audit", "--all")
    assert any(e["action"].endswith("/credit") for e in everyone)
    refused = user_cli(berth, alice, "audit", "--all")
    assert refused.returncode == 1 and "operators" in refused.stderr
