"""The controllers' lease on a real store: SQLite always, and PostgreSQL too in the PostgreSQL
tier (``BERTH_DATABASE_URL``, `make test-postgres`).

Each test uses a lease name of its own, so they share one schema without interfering. The
holders' own deadline (their monotonic clock) is a clock the test moves; expiry in the database
is the database's clock, so a test that needs an expired lease uses a short ttl and polls."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from berth.controllers.lease import LeaderLease, Leadership, StaleLeader, server_identity
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.store.tables import Lease, Meta
from tests.harness import wait_until

pytestmark = pytest.mark.store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _urls() -> list[str]:
    urls = ["sqlite"]
    if os.environ.get("BERTH_DATABASE_URL", "").startswith("postgresql"):
        urls.append("postgresql")
    return urls


@pytest.fixture(params=_urls())
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = (
        f"sqlite:///{tmp_path / 'lease.db'}"
        if request.param == "sqlite"
        else os.environ["BERTH_DATABASE_URL"]
    )
    engine = make_engine(url)
    migrate(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def name(sessions: sessionmaker[Session]) -> Iterator[str]:
    lease_name = f"test-{uuid.uuid4().hex[:12]}"
    yield lease_name
    with sessions() as session:
        session.execute(delete(Lease).where(Lease.name == lease_name))
        session.execute(delete(Meta).where(Meta.key.like(f"{lease_name}%")))
        session.commit()


def _lease(
    sessions: sessionmaker[Session], name: str, who: str, ttl: float = 10.0
) -> tuple[LeaderLease, Clock]:
    clock = Clock()
    return LeaderLease(sessions, who, ttl=ttl, name=name, monotonic=clock), clock


def _row(sessions: sessionmaker[Session], name: str) -> Lease:
    with sessions() as session:
        row = session.get(Lease, name)
        assert row is not None
        return row


def test_two_servers_contest_one_wins_with_the_first_token(
    sessions: sessionmaker[Session], name: str
) -> None:
    a, _ = _lease(sessions, name, "a")
    b, _ = _lease(sessions, name, "b")
    assert a.try_acquire() is True
    assert b.try_acquire() is False
    assert (a.token, b.token) == (1, None)
    assert a.holds() and not b.holds()
    row = _row(sessions, name)
    assert (row.holder, row.token) == ("a", 1)
    # Renewing keeps it: the other still cannot take it.
    assert a.renew() is True
    assert b.try_acquire() is False
    assert b.renew() is False  # never held: nothing to renew


def test_servers_racing_on_an_empty_store_elect_exactly_one(
    sessions: sessionmaker[Session], name: str
) -> None:
    """The row is missing: every contender inserts it and updates it at once."""
    leases = [_lease(sessions, name, f"s{i}")[0] for i in range(6)]
    barrier = threading.Barrier(len(leases))
    won: list[str] = []
    errors: list[BaseException] = []

    def contend(lease: LeaderLease) -> None:
        barrier.wait()
        try:
            if lease.try_acquire():
                won.append(lease.holder)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(won) == 1
    row = _row(sessions, name)
    assert (row.holder, row.token) == (won[0], 1)


def test_expiry_hands_the_lease_over_with_the_next_token(
    sessions: sessionmaker[Session], name: str
) -> None:
    a, _ = _lease(sessions, name, "a", ttl=0.3)
    b, _ = _lease(sessions, name, "b", ttl=10.0)
    assert a.try_acquire()
    # a stops renewing (paused, or gone): once the database's clock passes expiry, b takes it.
    wait_until(b.try_acquire, 10, "b takes the expired lease")
    assert b.token == 2
    row = _row(sessions, name)
    assert (row.holder, row.token) == ("b", 2)
    # The old holder's renewal finds the row is not its own any more: it knows it lost it.
    assert a.renew() is False
    assert not a.holds() and a.token is None


def test_a_fenced_write_of_the_stale_holder_raises_and_changes_nothing(
    sessions: sessionmaker[Session], name: str
) -> None:
    a, a_clock = _lease(sessions, name, "a", ttl=0.3)
    b, _ = _lease(sessions, name, "b")
    assert a.try_acquire()
    a_clock.now -= 3600  # a was paused: by its own clock its term has not run out
    wait_until(b.try_acquire, 10, "b takes the expired lease")
    assert a.holds()  # a believes it leads: only the fence can stop its write
    with sessions() as session:
        session.add(Meta(key=f"{name}-stale", value="written by a stale leader"))
        session.flush()
        with pytest.raises(StaleLeader) as err:
            a.fence(session)
        session.rollback()
    assert "fenced" in str(err.value) and "'b'" in str(err.value)
    assert err.value.status == 409
    with sessions() as session:
        assert session.get(Meta, f"{name}-stale") is None
    assert not a.holds()  # the failed fence also ends its belief
    # The real holder's fenced write commits.
    with sessions() as session:
        session.add(Meta(key=f"{name}-fresh", value="written by the leader"))
        session.flush()
        b.fence(session)
        session.commit()
    with sessions() as session:
        assert session.get(Meta, f"{name}-fresh") is not None


def test_a_holder_whose_term_ran_out_locally_is_fenced_without_asking(
    sessions: sessionmaker[Session], name: str
) -> None:
    a, a_clock = _lease(sessions, name, "a")
    assert a.try_acquire()
    a_clock.now += 9.5  # past its own deadline (before the database's expiry)
    assert not a.holds()
    with sessions() as session, pytest.raises(StaleLeader):
        a.fence(session)
    assert a.renew() is False


def test_release_lets_another_server_take_over_at_once(
    sessions: sessionmaker[Session], name: str
) -> None:
    a, _ = _lease(sessions, name, "a")
    b, _ = _lease(sessions, name, "b")
    assert a.try_acquire()
    a.release()
    assert not a.holds()
    assert b.try_acquire()
    assert b.token == 2
    with sessions() as session:
        view = b.current(session)
    assert view is not None
    assert (view.holder, view.token, view.expired) == ("b", 2, False)
    assert 0 < view.expires_in <= 10.0


def test_a_holder_taking_its_own_lease_again_starts_a_new_term(
    sessions: sessionmaker[Session], name: str
) -> None:
    """After it gave up locally (its deadline passed), a holder that takes the row again gets
    a new token: what its previous term had in flight stays fenced."""
    a, a_clock = _lease(sessions, name, "a")
    assert a.try_acquire()
    a_clock.now += 60
    assert a.try_acquire()
    assert a.token == 2


def test_leadership_elects_renews_and_deposes(sessions: sessionmaker[Session], name: str) -> None:
    events: list[str] = []
    a, a_clock = _lease(sessions, name, "a")
    b, _ = _lease(sessions, name, "b")
    leader = Leadership(a, lambda: events.append("elected"), lambda: events.append("deposed"))
    follower = Leadership(b, lambda: events.append("b elected"), lambda: events.append("b out"))
    leader.step()
    follower.step()
    assert (leader.role, follower.role) == ("leader", "follower")
    leader.step()  # a renewal
    assert leader.leading and events == ["elected"]
    # a's renewals stop reaching the store in time: its own clock says the term is over.
    a_clock.now += 60
    leader.step()
    assert not leader.leading and events == ["elected", "deposed"]
    with sessions() as session:
        session.execute(delete(Lease).where(Lease.name == name))  # as if it expired
        session.commit()
    follower.step()
    assert follower.leading and events[-1] == "b elected"
    follower.stop()  # a clean shutdown stops the controllers and releases the lease
    assert events[-1] == "b out"
    with sessions() as session:
        view = b.current(session)
        assert view is not None and view.expired


def test_a_renewal_that_finds_another_holder_deposes(
    sessions: sessionmaker[Session], name: str
) -> None:
    events: list[str] = []
    a, _ = _lease(sessions, name, "a")
    leader = Leadership(a, lambda: events.append("elected"), lambda: events.append("deposed"))
    leader.step()
    with sessions() as session:
        row = session.scalar(select(Lease).where(Lease.name == name))
        assert row is not None
        row.holder, row.token = "someone else", row.token + 1
        session.commit()
    leader.step()
    assert events == ["elected", "deposed"] and leader.role == "follower"


def test_server_identity() -> None:
    assert server_identity("berth-1") == "berth-1"
    one, two = server_identity(), server_identity()
    assert one != two and one.count(":") == 2 and str(os.getpid()) in one


def test_a_pass_of_an_earlier_term_is_fenced_in_a_later_term(
    sessions: sessionmaker[Session], name: str
) -> None:
    """A pass that outlived its term (its stop timed out) while the server took the lease
    again must not commit under the new token."""
    a, a_clock = _lease(sessions, name, "a")
    assert a.try_acquire()
    first = a.term_fence()
    a_clock.now += 60  # the first term ran out locally
    assert a.try_acquire()
    second = a.term_fence()
    with sessions() as session:
        session.add(Meta(key=f"{name}-old-pass", value="from term 1"))
        session.flush()
        with pytest.raises(StaleLeader, match="term 1 ran into its term 2"):
            first(session)
        session.rollback()
    with sessions() as session:
        assert session.get(Meta, f"{name}-old-pass") is None
        second(session)  # the current term's passes commit
        session.commit()


def test_a_renewal_period_too_long_for_the_term_is_shortened(
    sessions: sessionmaker[Session], name: str
) -> None:
    a, _ = _lease(sessions, name, "a", ttl=10.0)
    assert Leadership(a, lambda: None, lambda: None, renew_seconds=3.0).renew_seconds == 3.0
    assert Leadership(a, lambda: None, lambda: None, renew_seconds=20.0).renew_seconds == 4.5
