"""The pure model the reconcile planner works on: snapshots of desired and observed state.

Nothing here does I/O. The controllers build these snapshots from the store and the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

# "starting": a backend's word for an instance on its way up (created, pulling, assigned).
ALIVE_STATES = frozenset({"running", "restarting", "paused", "starting"})
DEAD_STATES = frozenset({"exited", "dead", "created"})  # created: never started


@dataclass(frozen=True, order=True)
class Revision:
    """The unit a rollout replaces: a release, and a generation bumped by ``berth restart``."""

    release_id: str
    generation: int = 0

    @property
    def key(self) -> str:
        return f"{self.release_id}:{self.generation}"

    @staticmethod
    def parse(key: str) -> Revision:
        release_id, _, generation = key.rpartition(":")
        return Revision(release_id, int(generation or 0))


@dataclass(frozen=True)
class DesiredApp:
    """What the store asks for one app.

    ``serving`` is the revision whose rollout last succeeded; ``target`` is the one to run. They
    differ while a deployment is in progress. ``deadline`` bounds that deployment.
    """

    app_id: str
    scale: int
    target: Revision | None
    serving: Revision | None = None
    deployment_id: str | None = None
    deadline: float | None = None

    @property
    def rolling_out(self) -> bool:
        return self.target is not None and self.deployment_id is not None


@dataclass(frozen=True)
class ObservedInstance:
    """One managed container as last seen, joined with what Berth remembers about it."""

    container_id: str
    app_id: str
    revision: str
    state: str
    healthy: bool = False
    routed: bool = False
    restarts: int = 0
    exit_code: int | None = None
    finished_at: float | None = None
    created_seq: int = 0  # creation order, used to pick which extra instance goes first
    started_at: float | None = None  # when it last started (the pace between rollout batches)

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES

    @property
    def ready(self) -> bool:
        """Running, passing its health check, and in the live nginx config."""
        return self.state == "running" and self.healthy and self.routed
