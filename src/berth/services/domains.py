"""Custom domains: a tenant claims one, proves control of it, and only then does it route.

Proof is a DNS TXT record ``_berth-challenge.<domain>`` with the value ``berth-verify=<token>``
(checked through :class:`TxtResolver`), or an operator's approval. Platform hostnames
(``<app>.<base domain>``) are not rows here and need no proof.

Who may hold a hostname:

- A verified domain belongs to its app: nobody else can add it (409 ``domain_taken``).
- A pending claim blocks nobody. Anyone may claim a hostname that is only pending elsewhere:
  the hostname column is unique, so the new claim replaces the old one (the earlier claimant
  sees it gone). Otherwise anyone could squat on a domain they do not control.
- The token is the same every time for one tenant and one hostname (an HMAC under an
  installation secret), so a record the tenant has published stays good however often the
  claim is displaced, and ``verify`` claims the hostname again when the proof holds. A squatter
  re-adding the domain in a loop cannot keep its owner out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from berth.billing.plans import QuotaDelta
from berth.domain.names import validate_domain
from berth.errors import Conflict, InvalidInput, NotFound
from berth.services.apps import get_app, lock_app
from berth.services.billing import check_quota_for
from berth.settings import Settings
from berth.store.tables import App, Domain, Meta, new_id

CHALLENGE_LABEL = "_berth-challenge"
CHALLENGE_VALUE_PREFIX = "berth-verify="
MAX_DOMAINS_PER_APP = 100
VERIFIED_BY_DNS = "dns"
VERIFIED_BY_OPERATOR = "operator"
_KEY_NAME = "domain_challenge_key"
_TOKEN_HEX = 32


class TxtLookupError(Exception):
    """The TXT lookup gave no records; the message says what was found instead."""


class TxtResolver(Protocol):
    """Where TXT records come from: dnspython against the configured server, or a fake."""

    def txt_records(self, name: str) -> list[str]:
        """The TXT strings published at ``name``; TxtLookupError when there are none (no such
        name, no TXT record, no answer in time, a failing server)."""
        ...


class DomainNotVerified(InvalidInput):
    """The proof of control did not hold; the domain stays pending."""

    code = "domain_not_verified"


@dataclass(frozen=True)
class Challenge:
    """The DNS record a tenant publishes to prove control of a domain."""

    type: str
    name: str
    value: str


def challenge_for(domain: Domain) -> Challenge:
    return Challenge(
        "TXT",
        f"{CHALLENGE_LABEL}.{domain.hostname}",
        f"{CHALLENGE_VALUE_PREFIX}{domain.verification_token}",
    )


def proof_problem(records: Sequence[str], expected: str, name: str) -> str | None:
    """None when ``expected`` is among the TXT ``records`` at ``name``; else what was found."""
    found = [r.strip() for r in records]
    if expected in found:
        return None
    if not found:
        return f"{name} has no TXT record; publish {expected!r} there"
    shown = ", ".join(repr(r[:80]) for r in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return f"{name} has TXT {shown}{more}, but not {expected!r}"


# --- tokens ----------------------------------------------------------------------------------


def _challenge_key(session: Session) -> bytes:
    """The installation's secret for challenge tokens, made on first use (race-safe)."""
    value = session.scalar(select(Meta.value).where(Meta.key == _KEY_NAME))
    if value is None:
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        session.execute(
            insert(Meta)
            .values(key=_KEY_NAME, value=secrets.token_hex(32))
            .on_conflict_do_nothing(index_elements=["key"])
        )
        value = session.scalar(select(Meta.value).where(Meta.key == _KEY_NAME))
    assert value is not None
    return bytes.fromhex(value)


def token_for(session: Session, tenant_id: str, hostname: str) -> str:
    """The challenge token of ``tenant_id`` for ``hostname``: unguessable, and stable."""
    message = f"{tenant_id}\n{hostname}".encode()
    return hmac.new(_challenge_key(session), message, hashlib.sha256).hexdigest()[:_TOKEN_HEX]


# --- claims ----------------------------------------------------------------------------------


def _check_claimable(settings: Settings, hostname: str) -> str:
    hostname = validate_domain(hostname)
    base = settings.base_domain
    if hostname == base or hostname.endswith("." + base):
        raise InvalidInput(
            f"domains under {base} are reserved for app names", code="domain_reserved"
        )
    return hostname


def _make_room(session: Session, app: App, existing: Domain | None) -> None:
    """Take ``existing`` out of the way of a new claim by ``app``, or say why not."""
    if existing is None:
        return
    if existing.app_id == app.id:
        raise Conflict(f"domain {existing.hostname} is already on this app", code="domain_taken")
    if existing.verified_at is not None:
        raise Conflict(f"domain {existing.hostname} already belongs to an app", code="domain_taken")
    # Only pending elsewhere: it does not block (see the module docstring).
    session.delete(existing)
    session.flush()


def _check_limits(session: Session, app: App) -> None:
    count = session.scalar(select(func.count(Domain.id)).where(Domain.app_id == app.id)) or 0
    if count >= MAX_DOMAINS_PER_APP:
        raise InvalidInput(
            f"at most {MAX_DOMAINS_PER_APP} domains per app", code="too_many_domains"
        )
    check_quota_for(session, app.tenant_id, QuotaDelta(domains=1))


def _claim(session: Session, app: App, hostname: str) -> Domain:
    existing = session.scalar(select(Domain).where(Domain.hostname == hostname))
    _make_room(session, app, existing)
    _check_limits(session, app)
    domain = Domain(
        id=new_id(),
        app_id=app.id,
        tenant_id=app.tenant_id,
        hostname=hostname,
        verification_token=token_for(session, app.tenant_id, hostname),
        verified_at=None,
        verified_by="",
    )
    session.add(domain)
    try:
        session.flush()
    except (IntegrityError, StaleDataError) as exc:
        # Another app claimed (or released) the same hostname at this very moment.
        session.rollback()
        raise Conflict(
            f"domain {hostname} was just claimed by another app; try again", code="domain_taken"
        ) from exc
    return domain


def add_domain(
    session: Session, settings: Settings, tenant_id: str, name: str, hostname: str
) -> Domain:
    """Claim ``hostname`` for the app: pending until proven (see :func:`challenge_for`)."""
    app = lock_app(session, tenant_id, name)
    hostname = _check_claimable(settings, hostname)
    domain = _claim(session, app, hostname)
    session.commit()
    return domain


def list_domains(session: Session, app: App) -> list[Domain]:
    return list(
        session.scalars(select(Domain).where(Domain.app_id == app.id).order_by(Domain.hostname))
    )


def remove_domain(session: Session, tenant_id: str, name: str, hostname: str) -> None:
    app = lock_app(session, tenant_id, name)
    domain = session.scalar(
        select(Domain).where(Domain.app_id == app.id, Domain.hostname == hostname)
    )
    if domain is None:
        raise NotFound(f"domain {hostname!r} is not on app {name!r}", code="domain_not_found")
    session.delete(domain)
    session.commit()


def verify_domain(
    session: Session,
    settings: Settings,
    resolver: TxtResolver,
    tenant_id: str,
    name: str,
    hostname: str,
) -> Domain:
    """Check the TXT proof for ``hostname`` and mark it verified (verified_by "dns").

    The lookup runs before any lock is taken (it may take seconds). When the proof holds and
    the hostname is not (or no longer) this app's but only pending elsewhere, it is claimed
    here: the proof is what counts. DomainNotVerified says what the lookup found otherwise.
    """
    app = get_app(session, tenant_id, name)
    hostname = _check_claimable(settings, hostname)
    held = session.scalar(select(Domain).where(Domain.hostname == hostname))
    if held is not None and held.verified_at is not None:
        if held.app_id == app.id:
            return held
        raise Conflict(f"domain {hostname} already belongs to an app", code="domain_taken")
    token = token_for(session, tenant_id, hostname)
    session.commit()  # the key may just have been made; the lookup holds no transaction
    record = f"{CHALLENGE_LABEL}.{hostname}"
    expected = f"{CHALLENGE_VALUE_PREFIX}{token}"
    try:
        problem = proof_problem(resolver.txt_records(record), expected, record)
    except TxtLookupError as exc:
        problem = f"{exc}; publish a TXT record {record} with the value {expected!r}"
    if problem is not None:
        raise DomainNotVerified(f"{hostname} is not verified: {problem}")
    app = lock_app(session, tenant_id, name)
    domain = session.scalar(select(Domain).where(Domain.hostname == hostname))
    if domain is None or domain.app_id != app.id:
        domain = _claim(session, app, hostname)
    domain.verified_at = time.time()
    domain.verified_by = VERIFIED_BY_DNS
    session.commit()
    return domain


def approve_domain(session: Session, hostname: str) -> Domain:
    """An operator vouches for ``hostname``'s claim: it routes (verified_by "operator")."""
    found = session.scalar(select(Domain).where(Domain.hostname == hostname))
    if found is None:
        raise NotFound(f"no app has claimed the domain {hostname!r}", code="domain_not_found")
    if found.verified_at is not None:
        return found
    app = session.get(App, found.app_id)
    assert app is not None  # domains go with their app (ON DELETE CASCADE)
    tenant_id, app_name = app.tenant_id, app.name
    locked = lock_app(session, tenant_id, app_name, deleting_ok=True)
    domain = session.scalar(
        select(Domain).where(Domain.hostname == hostname, Domain.app_id == locked.id)
    )
    if domain is None:
        raise NotFound(f"the claim on {hostname!r} changed; look again", code="domain_not_found")
    if domain.verified_at is None:
        domain.verified_at = time.time()
        domain.verified_by = VERIFIED_BY_OPERATOR
    session.commit()
    return domain


def is_verified(domain: Domain) -> bool:
    return domain.verified_at is not None
