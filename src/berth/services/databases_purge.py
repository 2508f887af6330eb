"""The purge pass in the background: every ``interval`` seconds, the deleted databases whose
retention has ended are dropped from their servers (``databases.purge_due``).

Leader-only, like the other controllers: the platform starts it with them and stops it with
them; ``may_act`` lets the leader's lease veto a pass that outlived its term.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from berth.errors import BerthError
from berth.periodic import LoopOwner, PeriodicLoop
from berth.services.databases import PurgeResult, purge_due
from berth.services.databases_access import ProviderFactory, real_provider

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 3600.0


class DatabasePurge(LoopOwner):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        factory: ProviderFactory = real_provider,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
        may_act: Callable[[], bool] = lambda: True,
        sweep: Callable[[Session, float], object] | None = None,
    ) -> None:
        self.sessions, self.factory, self.clock, self.may_act = sessions, factory, clock, may_act
        # Dedicated servers' containers no row names (a create cut short): removed each pass.
        self.sweep = sweep
        self._loop = PeriodicLoop("database-purge", self.run_once, interval)

    def run_once(self) -> PurgeResult:
        if not self.may_act():
            return PurgeResult([], [])
        with self.sessions() as session:
            result = purge_due(session, self.factory, self.clock())
            if self.sweep is not None:
                try:
                    self.sweep(session, self.clock())
                except BerthError as exc:
                    log.warning("dedicated database leftovers stay until the next pass: %s", exc)
        for database_id, why in result.failed:
            log.warning("database %s stays until the next purge pass: %s", database_id, why)
        return result
