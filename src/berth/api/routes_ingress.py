"""``POST /ingress/sync``: an ingress node's agent asks for its nginx config and reports what
its nginx serves (berth.ingress.agent). Authenticated by the ingress token only (not a
tenant's or an operator's token: berth.ingress.tokens), which Swarm mounts into the
``berth-ingress`` tasks alone."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field

from berth.api.deps import PlatformDep, SessionDep, _bearer
from berth.api.schemas import Strict
from berth.errors import Unauthorized
from berth.ingress import tokens
from berth.services import ingress_nodes

router = APIRouter(tags=["ingress"])


class SyncIn(Strict):
    node: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    etag: str = Field(default="", max_length=64, pattern=r"^[0-9a-f]*$")
    live_generation: int | None = Field(default=None, ge=0, le=2**62)
    error: str = Field(default="", max_length=500)


class SyncOut(BaseModel):
    etag: str
    generation: int
    conf: str | None  # None: the agent's config is current
    # With ``conf``: the basic auth users files it names (name -> user:bcrypt lines).
    files: dict[str, str] | None = None


@router.post("/ingress/sync")
def sync(
    body: SyncIn,
    platform: PlatformDep,
    session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> SyncOut:
    if creds is None or not tokens.verify(session, creds.credentials):
        raise Unauthorized("not the ingress nodes' token", code="unauthorized")
    settings = platform.settings
    config = ingress_nodes.current_config(
        session, settings.base_domain, settings.ingress_node_port, settings.request_body_max_mb
    )
    ingress_nodes.record_report(
        session, body.node, body.live_generation, config.generation, body.error
    )
    session.commit()
    current = body.etag == config.etag
    return SyncOut(
        etag=config.etag,
        generation=config.generation,
        conf=None if current else config.text,
        files=None if current else config.auth_files,
    )
