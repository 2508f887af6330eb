"""Several Berth servers on one store: a leader lease decides which one runs the controllers.

Every server serves the API; only the holder of the lease row ``controllers`` in ``leases``
runs the reconciler, billing, webhooks, the Swarm watch and the egress sync. The others follow
(berth.controllers.ingress_sync keeps their nginx routing like the leader's).

- **Acquire**: one compare-and-set UPDATE takes the row when it has expired or is already ours,
  and increments ``token``: every new holder has a larger token (the fencing token). The row is
  inserted first when missing, with ``ON CONFLICT DO NOTHING``, so two servers starting at once
  on an empty store cannot both create it (PostgreSQL and SQLite alike).
- **Renew**: every ``renew_seconds``, an UPDATE that only matches our holder *and* token.
- **Fence**: each controller transaction calls ``fence(session)`` just before it commits. It locks
  the lease row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has one writer, and a
  transaction that has written anything already holds it) and raises ``StaleLeader`` unless the
  row still names us, with our token, unexpired. A takeover must update that row, so it waits
  for our commit or happens before our check: a leader that was paused (a stop signal, a long GC,
  a partition) past its expiry cannot commit what it decided before the pause.

Clocks. Expiry is decided by one clock only, the database's: ``expires_at`` is written as the
database's now + ttl and every comparison with it is made in SQL against the database's now
(``clock_timestamp()`` on PostgreSQL, not ``now()``, which is frozen at the start of a
transaction). Servers' clocks may therefore disagree by any amount. A holder also needs its own
idea of when it loses the lease, without asking the database (which may be unreachable): that
deadline is measured on its *monotonic* clock from the moment it *sent* the renewal that
succeeded, minus a margin. The database ran that UPDATE later than it was sent, so the holder's
deadline falls before the database's expiry: it stops its controllers before anyone else may
start theirs. That relies only on the two clocks running at about the same rate, never on them
agreeing. When it does not hold (a paused process wakes up past its deadline), the fence is what
refuses its writes.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Float, func, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from berth.errors import BerthError
from berth.store.tables import Lease

log = logging.getLogger(__name__)

CONTROLLERS = "controllers"
# The holder's own deadline ends this long before the database's expiry (clock rates differ a
# little; a renewal's reply may arrive late).
LOCAL_MARGIN_FRACTION = 0.1


class StaleLeader(BerthError):
    """This server no longer holds the controllers' lease: its transaction must not commit."""

    status = 409
    code = "stale_leader"


def server_identity(configured: str = "") -> str:
    """Who this server is in the lease row: the setting, else hostname:pid:random (a restarted
    process is a new holder, and so gets a new token)."""
    if configured:
        return configured
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaseView:
    """The lease row as the database has it now."""

    holder: str
    token: int
    expires_in: float  # seconds from the database's now; <= 0: expired

    @property
    def expired(self) -> bool:
        return self.expires_in <= 0


def db_now(session: Session) -> ColumnElement[float]:
    """The database's current time in unix seconds, as a SQL expression."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", func.clock_timestamp()).cast(Float)
    # SQLite: julianday('now') is the host's clock, with milliseconds; one machine, one clock.
    return (func.julianday("now") - 2440587.5) * 86400.0


class LeaderLease:
    """One server's view of one lease row. Thread-safe: the leadership loop renews while the
    controllers' threads fence."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        holder: str,
        ttl: float = 10.0,
        name: str = CONTROLLERS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the lease's ttl must be positive")
        self.sessions, self.holder, self.ttl, self.name = sessions, holder, ttl, name
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._token: int | None = None
        self._valid_until = 0.0  # on the monotonic clock
        self.last_token: int | None = None  # the token of our latest term, for the logs

    # -- what this server knows without asking ---------------------------------------------

    @property
    def token(self) -> int | None:
        """Our fencing token while we believe we hold the lease, else None."""
        with self._lock:
            return self._token if self._holds_locally() else None

    def holds(self) -> bool:
        with self._lock:
            return self._holds_locally()

    def _holds_locally(self) -> bool:
        return self._token is not None and self._monotonic() < self._valid_until

    def forget(self) -> None:
        """Stop believing we hold it (fence refuses from now on, without asking)."""
        with self._lock:
            self._token = None
            self._valid_until = 0.0

    def _local_deadline(self, sent_at: float) -> float:
        return sent_at + self.ttl * (1 - LOCAL_MARGIN_FRACTION)

    # -- the row -----------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take the lease if it has expired (or is ours): a new term, with token + 1."""
        sent_at = self._monotonic()
        with self.sessions() as session:
            self._ensure_row(session)
            self._short_waits(session)
            now = db_now(session)
            result = session.execute(
                update(Lease)
                .where(
                    Lease.name == self.name,
                    (Lease.expires_at <= now) | (Lease.holder == self.holder),
                )
                .values(
                    holder=self.holder,
                    token=Lease.token + 1,
                    expires_at=now + self.ttl,
                    renewed_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if _rowcount(result) != 1:
                session.rollback()
                return False
            token = session.scalar(select(Lease.token).where(Lease.name == self.name))
            session.commit()
        with self._lock:
            self._token = self.last_token = int(token or 0)
            self._valid_until = self._local_deadline(sent_at)
        log.info("lease %s: acquired by %s with token %s", self.name, self.holder, token)
        return True

    def renew(self) -> bool:
        """Extend our term. False when the row is no longer ours, or our own deadline has
        passed (then we have lost it: taking it again is a new term, with a new token)."""
        with self._lock:
            token = self._token if self._holds_locally() else None
        if token is None:
            self.forget()
            return False
        sent_at = self._monotonic()
        with self.sessions() as session:
            self._short_waits(session)
            now = db_now(session)
            result = session.execute(
                update(Lease)
                .where(Lease.name == self.name, Lease.holder == self.holder, Lease.token == token)
                .values(expires_at=now + self.ttl, renewed_at=now)
                .execution_options(synchronize_session=False)
            )
            renewed = _rowcount(result) == 1
            session.commit()
        with self._lock:
            if renewed and self._token == token:
                self._valid_until = self._local_deadline(sent_at)
            elif not renewed:
                self._token, self._valid_until = None, 0.0
        return renewed

    def release(self) -> None:
        """Give the lease up now (a clean shutdown, after the controllers stopped): another
        server may take it at once. Only the row of our latest term: never another's."""
        with self._lock:
            token, self._token, self._valid_until = self.last_token, None, 0.0
        if token is None:
            return
        with self.sessions() as session:
            self._short_waits(session)
            now = db_now(session)
            session.execute(
                update(Lease)
                .where(Lease.name == self.name, Lease.holder == self.holder, Lease.token == token)
                .values(expires_at=now)
                .execution_options(synchronize_session=False)
            )
            session.commit()
        log.info("lease %s: released by %s (token %s)", self.name, self.holder, token)

    def current(self, session: Session) -> LeaseView | None:
        """The row as it is now (None before any server took it)."""
        row = session.execute(
            select(Lease.holder, Lease.token, Lease.expires_at - db_now(session)).where(
                Lease.name == self.name
            )
        ).one_or_none()
        if row is None:
            return None
        return LeaseView(row[0], int(row[1]), float(row[2]))

    def term_fence(self) -> Callable[[Session], None]:
        """The fence of the current term only: the controllers started for this term get it,
        so a pass of an earlier term still running (a stop that timed out) is refused even
        after this server took the lease again."""
        term = self.token
        if term is None:
            raise StaleLeader(f"fenced: {self.holder} does not hold the {self.name} lease")
        return lambda session: self.fence(session, term)

    def fence(self, session: Session, term: int | None = None) -> None:
        """Raise StaleLeader unless we still hold the lease (in term ``term`` when given);
        call it just before commit.

        On PostgreSQL the row stays locked until the caller's transaction ends, so no takeover
        can slip between this check and the commit; the transaction is also given short lock
        and idle timeouts, so a holder paused right here cannot keep the row locked (and the
        next leader waiting) for longer than a fraction of the ttl."""
        token = self.token
        if token is None:
            raise StaleLeader(f"fenced: {self.holder} does not hold the {self.name} lease any more")
        if term is not None and token != term:
            raise StaleLeader(
                f"fenced: a pass of {self.holder}'s term {term} ran into its term {token}"
            )
        self._short_waits(session)
        now = db_now(session)
        row = session.execute(
            select(Lease.holder, Lease.token, Lease.expires_at > now)
            .where(Lease.name == self.name)
            .with_for_update()
        ).one_or_none()
        if row is None or row[0] != self.holder or int(row[1]) != token or not row[2]:
            self.forget()
            held = f"held by {row[0]!r} with token {row[1]}" if row is not None else "missing"
            raise StaleLeader(
                f"fenced: {self.holder} (token {token}) lost the {self.name} lease ({held}); "
                "this transaction is rolled back"
            )

    def _short_waits(self, session: Session) -> None:
        """PostgreSQL: this transaction waits for the lease row's lock at most half a ttl (a
        lease step never hangs past a term), and is ended by the server when its client goes
        quiet that long: a holder paused while it has the row locked (renewing, or between
        its fence and its commit) frees it for the next one."""
        if session.get_bind().dialect.name != "postgresql":
            return
        ms = max(1, int(self.ttl * 500))  # an int we computed: nothing untrusted in the SQL
        session.execute(text(f"SET LOCAL lock_timeout = {ms}"))
        session.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {ms}"))

    def _ensure_row(self, session: Session) -> None:
        values = {
            "name": self.name,
            "holder": "",
            "token": 0,
            "expires_at": literal(0.0),
            "renewed_at": literal(0.0),
        }
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            stmt = postgresql.insert(Lease).values(values).on_conflict_do_nothing()
            session.execute(stmt)
        elif dialect == "sqlite":
            session.execute(sqlite.insert(Lease).values(values).on_conflict_do_nothing())
        elif session.get(Lease, self.name) is None:  # other databases: best effort
            session.add(Lease(name=self.name))
            session.flush()


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


class Leadership:
    """The loop that keeps (or takes) the lease and tells the server when its role changes.

    ``on_elected`` runs when this server becomes the leader (start the controllers);
    ``on_deposed`` when it stops being one, including at shutdown (stop them). Both run in the
    loop's thread, one at a time, so a server never starts its controllers twice.
    """

    def __init__(
        self,
        lease: LeaderLease,
        on_elected: Callable[[], object],
        on_deposed: Callable[[], object],
        renew_seconds: float = 3.0,
        follower_poll_seconds: float = 1.0,
    ) -> None:
        self.lease = lease
        self.on_elected, self.on_deposed = on_elected, on_deposed
        # At least two renewals per term: one lost (a slow store) must not end it.
        limit = lease.ttl * (1 - LOCAL_MARGIN_FRACTION) / 2
        if renew_seconds > limit:
            log.warning(
                "lease: renewing every %.1fs with a %.1fs term would lose it; every %.1fs instead",
                renew_seconds,
                lease.ttl,
                limit,
            )
            renew_seconds = limit
        self.renew_seconds = renew_seconds
        self.follower_poll_seconds = follower_poll_seconds
        self.leading = False
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def role(self) -> str:
        return "leader" if self.leading else "follower"

    @property
    def stopping(self) -> bool:
        """The server is shutting down (a deposition then needs nothing built or started)."""
        return self._stop.is_set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="berth-lease", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the loop; a leader stops its controllers, then releases the lease (in that
        order: the next leader never overlaps with this one's last pass)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        if self.leading:
            self._depose("this server is shutting down", lost=False)
            try:
                self.lease.release()
            except Exception as exc:  # the lease then expires on its own
                log.warning("lease: release failed: %s", exc)

    def step(self) -> None:
        """One round: depose if the term ran out, renew, or try to take the lease."""
        if self.leading:
            if not self.lease.holds():
                self._depose("its term ran out before a renewal succeeded")
                return
            try:
                renewed = self.lease.renew()
            except Exception as exc:  # the store is unreachable: keep the term while it lasts
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("lease: renewal failed: %s", exc)
                if not self.lease.holds():
                    self._depose("the store could not be reached before the term ran out")
                return
            self.last_error = ""
            if not renewed:
                self._depose("another server holds it")
            return
        try:
            acquired = self.lease.try_acquire()
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("lease: acquiring failed: %s", exc)
            return
        self.last_error = ""
        if acquired:
            self._elect()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            wait = self.renew_seconds if self.leading else self.follower_poll_seconds
            self._stop.wait(wait)

    def _elect(self) -> None:
        self.leading = True
        log.info("leader now (token %s): starting the controllers", self.lease.token)
        try:
            self.on_elected()
        except Exception:
            log.exception("lease: starting the controllers failed; giving the lease up")
            self._depose("its controllers failed to start")
            try:
                self.lease.release()
            except Exception as exc:
                log.warning("lease: release failed: %s", exc)

    def _depose(self, why: str, lost: bool = True) -> None:
        self.lease.forget()  # fence refuses from now on, even before the controllers stop
        self.leading = False
        if lost:
            log.warning(
                "follower now: lost the controllers' lease (token %s): %s; a pass in flight "
                "is fenced, the controllers stop",
                self.lease.last_token,
                why,
            )
        else:
            log.info("stepping down (token %s): %s", self.lease.last_token, why)
        try:
            self.on_deposed()
        except Exception:
            log.exception("lease: stopping the controllers failed")
