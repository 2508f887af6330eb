"""Certificates: each of a tenant's hostnames' HTTPS status, uploads of its own certificates,
and the HTTP-01 answers the ACME CA fetches through the ingress.

A tenant may upload for a hostname one of its apps claims (its platform hostname, a custom
domain); the operator also for ``*.<base domain>``, the wildcard that covers every platform
hostname. A certificate is checked before anything changes (berth.certs.validate): the key
matches, it covers the name, it is valid now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import Field
from sqlalchemy import select

from berth.api.deps import CurrentPrincipal, PlatformDep, SessionDep, Writer
from berth.api.schemas import CertPublic, Strict
from berth.certs.names import normalize_pattern
from berth.certs.store_challenges import StoreChallenges
from berth.errors import BerthError, Forbidden, NotFound
from berth.platform import Platform
from berth.services.auth import Principal
from berth.services.certificates import Certificates
from berth.store.tables import App, Domain

router = APIRouter(tags=["certificates"])


class HttpsOff(BerthError):
    status = 503
    code = "https_off"


challenge_router = APIRouter(include_in_schema=False)

# A PEM chain of a few certificates is a few KB; 64 KB leaves room and refuses a flood.
MAX_PEM = 64 * 1024


class CertUpload(Strict):
    domain: str = Field(min_length=1, max_length=253, description="a hostname, or *.<base>")
    cert: str = Field(min_length=1, max_length=MAX_PEM, description="PEM chain, leaf first")
    key: str = Field(min_length=1, max_length=MAX_PEM, description="PEM private key")


def _certificates(platform: Platform) -> Certificates:
    if platform.certificates is None:
        raise HttpsOff("HTTPS is not set up on this server")
    return platform.certificates


def _tenant_hostnames(session: SessionDep, platform: Platform, tenant_id: str) -> list[str]:
    base = platform.settings.base_domain
    names = [
        f"{n}.{base}"
        for n in session.scalars(
            select(App.name).where(App.tenant_id == tenant_id, App.deleting_at.is_(None))
        )
    ]
    names += session.scalars(select(Domain.hostname).where(Domain.tenant_id == tenant_id))
    return sorted(set(names))


def _public(view: dict[str, object]) -> CertPublic:
    return CertPublic.model_validate(view)


@router.get("/certs")
def list_certs(
    session: SessionDep, platform: PlatformDep, who: CurrentPrincipal
) -> list[CertPublic]:
    """Every hostname of the tenant's apps and its certificate; the operator also sees the
    platform's wildcard."""
    certs = _certificates(platform)
    names = _tenant_hostnames(session, platform, who.tenant_id)
    views = [_public(certs.view(n).to_json()) for n in names]
    if who.is_operator:
        wildcard = f"*.{platform.settings.base_domain}"
        status = certs.manager.statuses().get(wildcard)
        if status is not None:
            views.insert(0, _public(certs.view(wildcard).to_json()))
    return views


def _check_owner(session: SessionDep, platform: Platform, who: Principal, domain: str) -> str:
    name = normalize_pattern(domain)
    if name.startswith("*."):
        if name != f"*.{platform.settings.base_domain}":
            raise Forbidden(
                "the only wildcard certificate is the operator's, for the platform's base "
                f"domain (*.{platform.settings.base_domain})",
                code="wildcard_not_allowed",
            )
        if not who.is_operator:
            raise Forbidden(
                "only the operator uploads the platform's wildcard certificate",
                code="operator_only",
            )
        return name
    if name not in _tenant_hostnames(session, platform, who.tenant_id):
        raise NotFound(
            f"{name} is not a hostname of your apps (add it with berth domains add first)",
            code="domain_not_found",
        )
    return name


_REFUSED: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "not a hostname, or the certificate was refused (its key, its names, "
        "its dates): nothing changed"
    }
}


@router.post("/certs", status_code=201, responses=_REFUSED)
def upload_cert(
    body: CertUpload, session: SessionDep, platform: PlatformDep, who: Writer
) -> CertPublic:
    """Serve your own certificate for one of your hostnames instead of an ACME one. Refused
    (422, nothing changed) when the key does not match, the certificate does not cover the
    domain, or it is expired or not yet valid."""
    name = _check_owner(session, platform, who, body.domain)
    certs = _certificates(platform)
    certs.upload(name, body.cert, body.key)
    platform.trigger()
    return _public(certs.view(name).to_json())


@router.delete("/certs/{domain}", status_code=204, responses=_REFUSED)
def remove_cert(domain: str, session: SessionDep, platform: PlatformDep, who: Writer) -> None:
    """Stop serving an uploaded certificate; the hostname goes back to ACME."""
    name = _check_owner(session, platform, who, domain)
    certs = _certificates(platform)
    certs.remove_upload(name)
    platform.trigger()


@challenge_router.get("/.well-known/acme-challenge/{token}")
def acme_challenge(token: str, platform: PlatformDep) -> PlainTextResponse:
    """The HTTP-01 answer the CA fetches; nginx sends it here from every host's port 80."""
    answer = StoreChallenges(platform.sessions).get(token)
    if answer is None:
        raise NotFound("no such challenge", code="challenge_not_found")
    return PlainTextResponse(answer)
