"""Scheduled backups in the background: every ``interval`` seconds, each active database whose
plan's interval has passed since its last backup gets one (dumped, then verified), and every
database's backups are pruned by its plan's retention (``databases_backups.scheduled_pass``).

Leader-only, like the purge pass (``DatabasePurge``): the platform starts it with the other
controllers and stops it with them; ``may_act`` lets the leader's lease veto a pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from berth.periodic import LoopOwner, PeriodicLoop
from berth.services.databases_backups import (
    BackupFactory,
    PassResult,
    backups_with,
    scheduled_pass,
)
from berth.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 300.0


class DatabaseBackupPass(LoopOwner):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        factory: BackupFactory | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self.sessions, self.settings = sessions, settings
        self.factory = factory or backups_with(settings)
        self.clock, self.may_act = clock, may_act
        self._loop = PeriodicLoop("database-backups", self.run_once, interval)

    def run_once(self, now: float | None = None) -> PassResult:
        if not self.may_act():
            return PassResult([], [], [])
        with self.sessions() as session:
            result = scheduled_pass(
                session, self.settings, self.factory, self.clock() if now is None else now
            )
        for backup_id, why in result.failed:
            log.error("scheduled backup %s failed: %s", backup_id, why)
        return result
