"""The manager with a fake issuer: files, state across restarts, concurrency, uploads."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

from berth.certs.acme_client import Failed
from berth.certs.manager import CertManager
from berth.certs.model import CertSource, CertState, RetryPolicy
from berth.certs.planner import Action
from berth.certs.validate import validate_upload
from tests.certs.fake_issuer import FakeIssuer
from tests.certs.fakeclock import FakeClock
from tests.unit.certs.certgen import key_pem, make_ca, make_leaf, pem


def test_issued_pairs_are_swapped_in_whole_and_old_versions_pruned(tmp_path: Path) -> None:
    fake, clock = FakeIssuer(), FakeClock()
    manager = CertManager(fake, tmp_path / "certs", clock=clock)
    assert manager.reconcile(["a.example.com"])["a.example.com"].state is CertState.ISSUED
    chain, key = manager.paths("a.example.com")
    assert chain.parent.is_symlink()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "certs").st_mode) == 0o700
    validate_upload(chain.read_bytes(), key.read_bytes(), "a.example.com", dt.datetime.now(dt.UTC))
    for _ in range(3):
        clock.advance(dt.timedelta(days=61))  # renewal due every time
        manager.reconcile(["a.example.com"])
    assert fake.calls == ["a.example.com"] * 4
    versions = list((tmp_path / "certs" / "archive" / "a.example.com").iterdir())
    assert len(versions) == 2
    validate_upload(chain.read_bytes(), key.read_bytes(), "a.example.com", dt.datetime.now(dt.UTC))
    assert not list((tmp_path / "certs" / "live").glob(".*"))  # no temporary links left


def test_state_survives_a_restart(tmp_path: Path) -> None:
    fake, clock = FakeIssuer(), FakeClock()
    fake.failing["bad.example.com"] = Failed("bad.example.com", "nope", "urn:x", retry_after=3600)
    manager = CertManager(fake, tmp_path, clock=clock, orders_per_window=3)
    manager.reconcile(["good.example.com", "bad.example.com"])
    again = CertManager(fake, tmp_path, clock=clock, orders_per_window=3)
    assert again.status("good.example.com").state is CertState.ISSUED
    bad = again.status("bad.example.com")
    assert bad.state is CertState.FAILED and bad.reason == "nope" and bad.problem == "urn:x"
    assert bad.next_retry == clock() + dt.timedelta(hours=1)  # the CA's Retry-After won
    # The order budget came back too: 2 of 3 spent, so one more now and then a wait.
    decided = again.plan(["n1.example.com", "n2.example.com"])
    assert len(decided.to_order) == 1
    assert (
        decided.decision(
            sorted(set(["n1.example.com", "n2.example.com"]) - set(decided.to_order))[0]
        ).action
        is Action.WAIT_BUDGET
    )


def test_a_damaged_state_file_loses_backoffs_not_the_manager(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    manager = CertManager(FakeIssuer(), tmp_path)
    assert manager.reconcile(["a.example.com"])["a.example.com"].state is CertState.ISSUED


def test_orders_run_at_most_concurrency_at_once_and_a_bug_costs_one_domain(tmp_path: Path) -> None:
    fake = FakeIssuer()
    fake.hold = 0.02
    fake.broken.add("d3.example.com")
    manager = CertManager(fake, tmp_path, concurrency=2, policy=RetryPolicy())
    domains = [f"d{i}.example.com" for i in range(8)]
    statuses = manager.reconcile(domains)
    assert fake.max_in_flight <= 2
    assert statuses["d3.example.com"].state is CertState.FAILED
    assert statuses["d3.example.com"].reason == "internal error: RuntimeError"
    assert all(statuses[d].state is CertState.ISSUED for d in domains if d != "d3.example.com")


def test_an_upload_is_served_and_never_ordered(tmp_path: Path) -> None:
    fake, clock = FakeIssuer(), FakeClock()
    manager = CertManager(fake, tmp_path, clock=clock)
    root = make_ca()
    leaf, key = make_leaf(
        root,
        ["*.apps.example.com"],
        not_before=clock() - dt.timedelta(days=1),
        not_after=clock() + dt.timedelta(days=10),
    )
    checked = validate_upload(pem(leaf), key_pem(key), "*.apps.example.com", clock())
    status = manager.install_upload(checked)
    assert status.source is CertSource.UPLOAD and status.state is CertState.ISSUED
    chain, key_path = manager.paths("*.apps.example.com")
    assert chain.read_bytes() == pem(leaf) and "_wildcard" in str(chain)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    up, up_key = make_leaf(
        root,
        ["shop.example.com"],
        not_before=clock() - dt.timedelta(days=1),
        not_after=clock() + dt.timedelta(days=90),
    )
    manager.install_upload(validate_upload(pem(up), key_pem(up_key), "shop.example.com", clock()))
    clock.advance(dt.timedelta(days=80))  # renewal would be due for an ACME certificate
    assert manager.plan(["shop.example.com"]).decision("shop.example.com").action is Action.UPLOADED
    manager.reconcile(["shop.example.com"])
    assert fake.calls == []
    manager.forget("shop.example.com")
    assert not manager.paths("shop.example.com")[0].exists()
    manager.reconcile(["shop.example.com"])  # back to ACME
    assert fake.calls == ["shop.example.com"]


def test_the_pair_to_serve_is_the_own_certificate_else_a_covering_wildcard(
    tmp_path: Path,
) -> None:
    fake, clock = FakeIssuer(), FakeClock()
    manager = CertManager(fake, tmp_path, clock=clock)
    root = make_ca()
    leaf, key = make_leaf(
        root,
        ["*.apps.example.com"],
        not_before=clock() - dt.timedelta(days=1),
        not_after=clock() + dt.timedelta(days=30),
    )
    manager.install_upload(validate_upload(pem(leaf), key_pem(key), "*.apps.example.com", clock()))
    statuses = manager.reconcile(["shop.apps.example.com", "custom.example.org"])
    assert fake.calls == ["custom.example.org"]  # the wildcard covers the platform hostname
    assert statuses["shop.apps.example.com"].state is CertState.PENDING
    assert manager.serving("shop.apps.example.com") == manager.paths("*.apps.example.com")
    assert manager.serving("custom.example.org") == manager.paths("custom.example.org")
    assert manager.serving("other.example.org") is None
    clock.advance(dt.timedelta(days=31))  # the wildcard expired: serve nothing expired
    assert manager.serving("shop.apps.example.com") is None
