"""Backups of managed databases through the API and the CLI, on the fake servers (whose backups
keep the real engines' contract: tests/databases/test_backups_contract.py): take, list,
download (the same bytes), restore into the same or a new database, a broken backup reported
failed (and never verified) loudly, another tenant's backup and hostile ids refused with
nothing changed, retention on the scheduled pass, and the final backup of a delete. The same
on the real servers: tests/databases/test_backups_platform.py."""

# ruff: noqa: F811 (the fixtures ``fake`` and ``cli`` come from test_databases_api, by import)
from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import Result

from berth.databases.provider import Account as DbAccount
from berth.services.databases_backup_pass import DatabaseBackupPass
from berth.store.tables import AuditEvent, DatabaseBackup, ManagedDatabase, Notification
from tests.api.conftest import Account, Env, assert_error
from tests.api.test_databases_api import (  # noqa: F401 (fixtures)
    FlakyProvider,
    Servers,
    add_server,
    call_server_down,
    cli,
    create_db,
    fake,
    url,
)

pytestmark = pytest.mark.store

DAY = 86400.0


def _server(fake: Servers, name: str = "pg-b") -> FlakyProvider:
    return fake.by_url[url("postgres", f"pw-{name}")]


def _tables(fake: Servers, env: Env, user: Account, db: str) -> dict[str, list[str]]:
    """The fake database's content, found by its row (as the operator would)."""
    with env.db() as session:
        row = session.scalar(
            select(ManagedDatabase).where(
                ManagedDatabase.name == db, ManagedDatabase.tenant_id == env.tenant_id(user.tenant)
            )
        )
        assert row is not None
        from berth.services.databases_access import account_of

        names = account_of(row).names
    for provider in fake.by_url.values():
        if names.database in provider.databases:
            return provider.databases[names.database].tables
    raise AssertionError(f"{db} is on no fake server")


def _fill(fake: Servers, env: Env, user: Account, db: str, rows: int, tag: str = "a") -> None:
    tables = _tables(fake, env, user, db)
    tables.clear()
    tables.update({"items": [f"{tag}-{i}" for i in range(rows)], "odd": ["", "ü"]})


def _counts(env: Env) -> tuple[int, int, int]:
    with env.db() as session:
        return (
            session.scalar(select(func.count()).select_from(DatabaseBackup)) or 0,
            session.scalar(select(func.count()).select_from(ManagedDatabase)) or 0,
            session.scalar(select(func.count()).select_from(Notification)) or 0,
        )


class Corrupting:
    """Makes the next dumps of a fake server write a damaged file (the dump tool 'succeeded'
    but its output is no backup)."""

    def __init__(self, provider: FlakyProvider) -> None:
        self.provider, self.original = provider, provider.dump

    def __enter__(self) -> None:
        def broken(account: DbAccount, path: Path) -> Any:
            fingerprint = self.original(account, path)
            path.write_bytes(path.read_bytes()[:10])  # cut short
            return fingerprint

        self.provider.dump = broken  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        self.provider.dump = self.original  # type: ignore[method-assign]


def test_backup_list_download_and_restore(env: Env, fake: Servers) -> None:
    add_server(env, "pg-b")
    user = env.signup("bkone")
    create_db(env, user.session, "shop")
    _fill(fake, env, user, "shop", 40)
    before = json.loads(json.dumps(_tables(fake, env, user, "shop")))

    made = env.ok("POST", "/databases/shop/backups", user.session, status=201)
    assert made["state"] == "verified" and made["kind"] == "manual" and made["reason"] == ""
    assert made["tables"]["items"][0] == 40 and made["size_bytes"] > 0
    listed = env.ok("GET", "/databases/shop/backups", user.session)
    assert [b["id"] for b in listed] == [made["id"]]
    assert env.ok("GET", f"/databases/shop/backups/{made['id']}", user.session) == made

    # the file: 0600 on disk, the same bytes through the API, its sha256 the row's
    with env.db() as session:
        row = session.get(DatabaseBackup, made["id"])
        assert row is not None
        on_disk = Path(row.path)
    assert stat.S_IMODE(os.stat(on_disk).st_mode) == 0o600
    resp = env.call("GET", f"/databases/shop/backups/{made['id']}/file", user.session)
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == made["sha256"]
    assert resp.headers["x-backup-sha256"] == made["sha256"]
    assert resp.content == on_disk.read_bytes()

    # into a new database of the tenant: the same content
    body = {"backup": made["id"], "into": "shop-copy"}
    restored = env.ok("POST", "/databases/shop/restore", user.session, json=body)
    assert restored["new"] is True and restored["database"]["name"] == "shop-copy"
    assert _tables(fake, env, user, "shop-copy") == before

    # into itself, after it changed: back to the backup's content
    _fill(fake, env, user, "shop", 5, tag="b")
    again = env.ok("POST", "/databases/shop/restore", user.session, json={"backup": made["id"]})
    assert again["new"] is False
    assert _tables(fake, env, user, "shop") == before


def test_a_broken_backup_is_failed_loudly_and_never_verified(
    env: Env, fake: Servers, cli: Callable[..., Result]
) -> None:
    add_server(env, "pg-b")
    user = env.signup("bkfail")
    create_db(env, user.session, "shop")
    _fill(fake, env, user, "shop", 10)
    _, _, notes_before = _counts(env)
    with Corrupting(_server(fake)):
        resp = call_server_down(env, "POST", "/databases/shop/backups", user.session, status=502)
    err = resp.json()["error"]
    assert err["code"] == "backup_failed" and "verification failed" in err["message"]
    [row] = env.ok("GET", "/databases/shop/backups", user.session)
    assert row["state"] == "failed" and "verification failed" in row["reason"]
    # the tenant is told, the audit log has it; the file is gone and cannot be used
    with env.db() as session:
        notes = list(session.scalars(select(Notification).where(
            Notification.kind == "database_backup_failed")))  # fmt: skip
        assert len(notes) == 1 and row["id"] in notes[0].message
        audit = session.scalar(select(AuditEvent).where(
            AuditEvent.action == "database backup failed"))  # fmt: skip
        assert audit is not None and row["id"] in audit.target
        stored = session.get(DatabaseBackup, row["id"])
        assert stored is not None and not Path(stored.path).exists()
    assert _counts(env)[2] == notes_before + 1
    assert_error(
        env.call("GET", f"/databases/shop/backups/{row['id']}/file", user.session),
        409, "backup_not_verified",
    )  # fmt: skip
    assert_error(
        env.call("POST", "/databases/shop/restore", user.session, json={"backup": row["id"]}),
        409, "backup_not_verified",
    )  # fmt: skip

    # the CLI: a failed backup exits non-zero with the reason; `backups` shows it and fails
    with Corrupting(_server(fake)):
        failed = cli("db", "backup", "shop", token=user.session)
    assert failed.exit_code != 0 and "verification failed" in str(failed.exception)
    shown = cli("db", "backups", "shop", token=user.session)
    assert shown.exit_code != 0 and "failed" in shown.output


def test_another_tenants_backup_and_hostile_ids_are_refused(env: Env, fake: Servers) -> None:
    add_server(env, "pg-b")
    alice, bob = env.signup("bkalice"), env.signup("bkbob")
    create_db(env, alice.session, "shop")
    create_db(env, bob.session, "shop")
    _fill(fake, env, alice, "shop", 10, tag="alice")
    _fill(fake, env, bob, "shop", 10, tag="bob")
    theirs = env.ok("POST", "/databases/shop/backups", alice.session, status=201)["id"]
    bob_tables = json.loads(json.dumps(_tables(fake, env, bob, "shop")))
    counts = _counts(env)

    hostile = [theirs, theirs.upper(), "../../../etc/passwd", "..%2F..%2Fetc", f"{theirs}/../x",
               "0" * 16, "x" * 500, "ünï", " " + theirs, "%00", theirs + "0"]  # fmt: skip
    for bad in hostile:
        quoted = bad.replace("/", "%2F")
        for method, path, body in [
            ("GET", f"/databases/shop/backups/{quoted}", None),
            ("GET", f"/databases/shop/backups/{quoted}/file", None),
            ("POST", "/databases/shop/restore", {"backup": bad}),
            ("POST", "/databases/shop/restore", {"backup": bad, "into": "stolen"}),
        ]:
            resp = env.call(method, path, bob.session, json=body)
            assert 400 <= resp.status_code < 500, (bad, path, resp.status_code)
            assert "alice" not in resp.text
    # a name that is not bob's is a 404 too, and nothing changed anywhere
    assert_error(env.call("GET", "/databases/nope/backups", bob.session), 404)
    assert _counts(env) == counts
    assert _tables(fake, env, bob, "shop") == bob_tables
    assert [d["name"] for d in env.ok("GET", "/databases", bob.session)] == ["shop"]
    assert env.ok("GET", "/databases/shop/backups", alice.session)[0]["id"] == theirs


def test_the_scheduled_pass_and_retention_keep_the_last_verified(env: Env, fake: Servers) -> None:
    add_server(env, "pg-b")
    user = env.signup("bkpass")
    create_db(env, user.session, "shop")
    _fill(fake, env, user, "shop", 3)
    now = [fake.now]
    backups = DatabaseBackupPass(env.platform.sessions, env.settings, fake, clock=lambda: now[0])
    for _ in range(10):  # ten days, a pass every 6 hours: one backup a day (the shared plan)
        for _ in range(4):
            backups.run_once()
            now[0] += DAY / 4
    listed = env.ok("GET", "/databases/shop/backups", user.session)
    assert [b["state"] for b in listed] == ["verified"] * 7  # the plan keeps 7
    newest_verified = listed[0]["id"]
    with Corrupting(_server(fake)):
        for _ in range(5):
            result = backups.run_once()
            assert result.failed and not result.taken
            now[0] += DAY
    listed = env.ok("GET", "/databases/shop/backups", user.session)
    states = [b["state"] for b in listed]
    assert states.count("failed") == 3 and states.count("verified") == 7
    assert newest_verified in [b["id"] for b in listed]
    # files of pruned backups are gone: only the kept verified ones have one
    directory = env.settings.resolved_backup_dir
    files = {p.stem for p in directory.rglob("*.dump")}
    assert files >= {b["id"] for b in listed if b["state"] == "verified"}
    assert not files & {b["id"] for b in listed if b["state"] == "failed"}


def test_delete_keeps_a_final_backup_until_the_purge(env: Env, fake: Servers) -> None:
    add_server(env, "pg-b")
    user = env.signup("bkdel")
    create_db(env, user.session, "shop")
    create_db(env, user.session, "kept")
    _fill(fake, env, user, "shop", 4)
    _fill(fake, env, user, "kept", 4)

    # a delete whose final backup fails deletes nothing
    with Corrupting(_server(fake)):
        resp = env.call("DELETE", "/databases/kept", user.session)
    assert_error(resp, 409, "final_backup_failed")
    assert env.ok("GET", "/databases/kept", user.session)["state"] == "active"

    gone = env.ok("DELETE", "/databases/shop", user.session)
    [final] = env.ok("GET", "/databases/shop/backups", user.session)
    assert final["kind"] == "final" and final["state"] == "verified"
    assert final["keep_until"] == gone["purge_after"]
    # downloadable while it is kept, restorable into a new database (an undelete)
    resp = env.call("GET", f"/databases/shop/backups/{final['id']}/file", user.session)
    assert hashlib.sha256(resp.content).hexdigest() == final["sha256"]
    body = {"backup": final["id"], "into": "shop-again"}
    env.ok("POST", "/databases/shop/restore", user.session, json=body)
    assert _tables(fake, env, user, "shop-again")["items"][0] == "a-0"
    with env.db() as session:
        row = session.get(DatabaseBackup, final["id"])
        assert row is not None
        path = Path(row.path)
    assert path.exists()
    fake.now += 8 * DAY
    assert env.ok("POST", "/admin/databases/purge", env.admin)["purged"] == 1
    assert not path.exists()
    with env.db() as session:
        assert session.get(DatabaseBackup, final["id"]) is None
    fake.now -= 8 * DAY


def test_the_cli_backs_up_lists_downloads_and_restores(
    env: Env, fake: Servers, cli: Callable[..., Result], tmp_path: Path
) -> None:
    add_server(env, "pg-b")
    user = env.signup("bkcli")
    create_db(env, user.session, "shop")
    _fill(fake, env, user, "shop", 12)
    made = cli("db", "backup", "shop", "--json", token=user.session)
    assert made.exit_code == 0, made.output
    backup = json.loads(made.output)
    shown = cli("db", "backups", "shop", token=user.session)
    assert shown.exit_code == 0 and backup["id"] in shown.output and "verified" in shown.output
    out = tmp_path / "shop.dump"
    got = cli("db", "download", "shop", backup["id"], "-o", str(out), token=user.session)
    assert got.exit_code == 0, got.output
    assert hashlib.sha256(out.read_bytes()).hexdigest() == backup["sha256"]
    again = cli("db", "download", "shop", backup["id"], "-o", str(out), token=user.session)
    assert again.exit_code != 0 and "exists" in str(again.exception)
    wrong = cli("db", "download", "shop", "../../etc", "-o", str(tmp_path / "x"),
                token=user.session)  # fmt: skip
    assert wrong.exit_code != 0 and not (tmp_path / "x").exists()
    restored = cli("db", "restore", "shop", backup["id"], "--into", "shop-two", token=user.session)
    assert restored.exit_code == 0 and "shop-two" in restored.output
    assert _tables(fake, env, user, "shop-two")["items"][:2] == ["a-0", "a-1"]
