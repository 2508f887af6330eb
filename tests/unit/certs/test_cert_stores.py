"""The two certificate stores keep the same things (statuses, the order budget, the pairs),
and the store's tables are shared safely: a server writes only what it changed, so another
server's upload is not overwritten by a pass that started before it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from berth.certs.acme_client import Failed
from berth.certs.manager import CertManager, CertStore, FileCertStore
from berth.certs.model import CertSource, CertState, CertStatus
from berth.certs.store_certs import SqlCertStore
from berth.platform import open_store
from berth.settings import Settings
from tests.certs.fake_issuer import FakeIssuer
from tests.certs.fakeclock import FakeClock


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine, made, _ = open_store(Settings(home=tmp_path / "home", database_url=""))
    yield made
    engine.dispose()


@pytest.fixture(params=["files", "store"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, sessions: sessionmaker[Session]
) -> CertStore:
    if request.param == "files":
        return FileCertStore(tmp_path / "certs")
    return SqlCertStore(sessions)


def test_statuses_orders_and_pairs_come_back(store: CertStore, tmp_path: Path) -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    issued = CertStatus(
        "a.example.test", CertState.ISSUED, CertSource.ACME, now, now + dt.timedelta(days=90)
    )
    failed = CertStatus("b.example.test", CertState.FAILED, reason="404", failures=2)
    store.install("a.example.test", b"CHAIN", b"KEY")
    store.save([issued, failed], [now])
    statuses, orders = store.load()
    assert sorted(statuses, key=lambda s: s.domain) == [issued, failed]
    assert orders == [now]


def test_a_forgotten_name_is_gone_from_either_store(store: CertStore, tmp_path: Path) -> None:
    manager = CertManager(FakeIssuer(), tmp_path / "m", store=store, clock=FakeClock())
    manager.reconcile(["a.example.test", "b.example.test"])
    manager.forget("a.example.test")
    assert [s.domain for s in store.load()[0]] == ["b.example.test"]
    again = CertManager(FakeIssuer(), tmp_path / "m", store=store, clock=FakeClock())
    assert set(again.statuses()) == {"b.example.test"}


def test_a_manager_on_the_store_issues_and_another_reads_it(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    clock = FakeClock()
    leader = CertManager(FakeIssuer(), tmp_path / "a", store=SqlCertStore(sessions), clock=clock)
    follower_store = SqlCertStore(sessions)
    leader.reconcile(["one.example.test"])
    statuses, _ = follower_store.load()
    assert [(s.domain, s.state) for s in statuses] == [("one.example.test", CertState.ISSUED)]
    version, chain, key = follower_store.material()["one.example.test"]
    assert version and chain.startswith(b"-----BEGIN CERTIFICATE") and b"PRIVATE KEY" in key


def test_a_pass_does_not_overwrite_what_another_server_changed(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    clock = FakeClock()
    issuer = FakeIssuer()
    issuer.failing["two.example.test"] = Failed("two.example.test", "down", None)
    leader_store = SqlCertStore(sessions)
    leader = CertManager(issuer, tmp_path / "a", store=leader_store, clock=clock)
    leader.reconcile(["two.example.test"])
    # Meanwhile another server records an upload for the name (its own store object).
    other = SqlCertStore(sessions)
    other.load()
    uploaded = CertStatus(
        "two.example.test",
        CertState.ISSUED,
        CertSource.UPLOAD,
        clock(),
        clock() + dt.timedelta(days=30),
    )
    other.install("two.example.test", b"C", b"K")
    other.save([uploaded], [])
    # The leader's next save of its own (unchanged) status for the name writes nothing over it.
    leader_store.save(leader.statuses().values(), [])
    statuses, _ = SqlCertStore(sessions).load()
    assert [s.source for s in statuses] == [CertSource.UPLOAD]
    # And its next pass reads the upload and orders nothing for it.
    assert leader.reconcile(["two.example.test"])["two.example.test"].source is CertSource.UPLOAD
    assert issuer.calls == ["two.example.test"]
