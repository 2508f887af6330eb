"""Swarm's task changes as wake-ups for the controllers.

The engine's event stream on 20.10 carries container events of one node only and no task
events, so a manager's view of tasks is watched instead: its task list, read often and cheaply
(a digest of each task's state), wakes the reconciler the moment a task starts, fails, moves or
goes. The reconciler's periodic pass stays the safety net.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from berth.periodic import PeriodicLoop
from berth.runtime.protocol import owner_labels
from berth.swarm.api import SwarmAPI

log = logging.getLogger(__name__)

WATCH_INTERVAL_SECONDS = 0.5


def task_digest(tasks: list[dict[str, Any]]) -> str:
    """What changes when any task's state, desired state, node or port changes (pure)."""
    parts = []
    for task in tasks:
        status = task.get("Status") or {}
        ports = (status.get("PortStatus") or {}).get("Ports") or []
        parts.append(
            "|".join(
                (
                    str(task.get("ID", "")),
                    str(status.get("State", "")),
                    str(task.get("DesiredState", "")),
                    str(task.get("NodeID", "")),
                    ",".join(str(p.get("PublishedPort", "")) for p in ports),
                )
            )
        )
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


class SwarmWatch:
    def __init__(
        self,
        api: SwarmAPI,
        installation: str,
        wake: Callable[[], None],
        interval: float = WATCH_INTERVAL_SECONDS,
    ) -> None:
        self.api, self.installation, self.wake = api, installation, wake
        self._digest = ""
        self._loop = PeriodicLoop("berth-swarm-watch", self._poll, interval)
        self._started = False

    def start(self) -> None:
        """Idempotent: the platform and the backend's first use may both ask."""
        if not self._started:
            self._started = True
            self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout=5)

    def _poll(self) -> None:
        digest = task_digest(self.api.tasks(labels=owner_labels(self.installation)))
        if digest != self._digest:
            self._digest = digest
            self.wake()
