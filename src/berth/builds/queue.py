"""Build admission: at most N builds per tenant and M across the platform; the rest wait in line.

One FIFO line for the whole platform. A waiting build starts as soon as a platform slot is free
and its tenant is below its own limit; a build whose tenant is at its limit does not hold up
the builds of others behind it. Its position is 1 + the number of builds waiting ahead of it.
Each tenant may have at most ``max_queued`` builds waiting; one more is refused
(:class:`berth.errors.TooManyRequests`) before anything of it is read.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from berth.errors import TooManyRequests


@dataclass(frozen=True)
class Ticket:
    number: int
    tenant_id: str
    tenant_limit: int


@dataclass(frozen=True)
class QueueState:
    """Where a ticket stands: running, or waiting at ``position`` (1 is next)."""

    running: bool
    position: int  # 0 while running
    tenant_running: int  # builds of the same tenant running now

    def message(self) -> str:
        if self.running:
            return "building"
        builds = "build" if self.tenant_running == 1 else "builds"
        return f"queued: position {self.position} ({self.tenant_running} {builds} of yours running)"


class BuildQueue:
    """Thread-safe admission for builds (the API runs each build in its own thread)."""

    def __init__(self, max_total: int) -> None:
        if max_total < 1:
            raise ValueError("max_total must be at least 1")
        self.max_total = max_total
        self._numbers = itertools.count(1)
        self._waiting: list[Ticket] = []
        self._running: list[Ticket] = []
        self._changed = threading.Condition()

    def enter(self, tenant_id: str, tenant_limit: int, max_queued: int) -> Ticket:
        """A ticket: running at once when there is room, otherwise waiting in line."""
        with self._changed:
            ticket = Ticket(next(self._numbers), tenant_id, max(1, tenant_limit))
            if not self._waiting and self._has_room(ticket):
                self._running.append(ticket)
                return ticket
            waiting_of_tenant = sum(1 for t in self._waiting if t.tenant_id == tenant_id)
            if waiting_of_tenant >= max_queued:
                raise TooManyRequests(
                    f"too many builds waiting: {waiting_of_tenant} of yours are queued "
                    f"(at most {max_queued}); try again when one has finished"
                )
            self._waiting.append(ticket)
            self._admit()
            return ticket

    def leave(self, ticket: Ticket) -> None:
        """The build is over (or abandoned while waiting): free its place."""
        with self._changed:
            if ticket in self._running:
                self._running.remove(ticket)
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            self._admit()
            self._changed.notify_all()

    def state(self, ticket: Ticket) -> QueueState:
        with self._changed:
            return self._state(ticket)

    def wait(self, ticket: Ticket, timeout: float) -> QueueState:
        """The ticket's state once it changes (or after ``timeout`` seconds)."""
        with self._changed:
            before = self._state(ticket)
            if not before.running:
                self._changed.wait_for(lambda: self._state(ticket) != before, timeout)
            return self._state(ticket)

    @property
    def running(self) -> int:
        with self._changed:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._waiting)

    # -- under the lock ----------------------------------------------------------------------

    def _state(self, ticket: Ticket) -> QueueState:
        mine = sum(1 for t in self._running if t.tenant_id == ticket.tenant_id)
        if ticket in self._running:
            return QueueState(True, 0, mine)
        if ticket not in self._waiting:
            raise ValueError(f"ticket {ticket.number} is not in the queue")
        return QueueState(False, self._waiting.index(ticket) + 1, mine)

    def _has_room(self, ticket: Ticket) -> bool:
        if len(self._running) >= self.max_total:
            return False
        mine = sum(1 for t in self._running if t.tenant_id == ticket.tenant_id)
        return mine < ticket.tenant_limit

    def _admit(self) -> None:
        admitted = False
        for ticket in list(self._waiting):
            if len(self._running) >= self.max_total:
                break
            if self._has_room(ticket):
                self._waiting.remove(ticket)
                self._running.append(ticket)
                admitted = True
        if admitted:
            self._changed.notify_all()
