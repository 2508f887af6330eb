"""Users, teams, memberships, invitations and API tokens."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from berth.domain.names import validate_app_name
from berth.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from berth.services.auth import (
    ROLES,
    SCOPES,
    Principal,
    hash_token,
    issue_session,
    issue_token,
)
from berth.services.ratelimit import (
    DEFAULT_MAX_KEYS,
    RateLimited,
    Rule,
    SlidingWindow,
    address_key,
)
from berth.store.tables import (
    ApiToken,
    Invitation,
    Membership,
    PlanRow,
    Tenant,
    User,
    WebSession,
    new_id,
)

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
INVITATION_SECONDS = 7 * 24 * 3600
MAX_TOKEN_SECONDS = 366 * 24 * 3600
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Compared against when the email is unknown, so that timing does not reveal which emails exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


LOGIN_PER_ACCOUNT_ADDRESS = Rule(limit=5, window=300.0)
LOGIN_PER_ADDRESS = Rule(limit=20, window=300.0)
# High and short: it stops a distributed guess at about 100 tries a minute per account, and it
# never holds the owner back at an address they have signed in from before (see login()).
LOGIN_PER_EMAIL = Rule(limit=100, window=60.0)


@dataclass(frozen=True)
class Refusal:
    rule: str  # "account_address", "address" or "email"
    wait: int


class LoginLimiter:
    """Failed logins, counted per (email, address), per address and (high, short) per email.

    A wrong password from one address therefore never locks the owner out at another one: the
    per-email ceiling is far above what one address may try, and exempts known addresses.
    """

    def __init__(
        self,
        per_account_address: Rule = LOGIN_PER_ACCOUNT_ADDRESS,
        per_address: Rule = LOGIN_PER_ADDRESS,
        per_email: Rule = LOGIN_PER_EMAIL,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rules = {
            "account_address": per_account_address,
            "address": per_address,
            "email": per_email,
        }
        self.window = SlidingWindow(max_keys, clock)

    @staticmethod
    def _keys(email: str, ip: str) -> dict[str, str]:
        where = address_key(ip)
        return {
            "account_address": f"login:{email}|{where}",
            "address": f"login:{where}",
            "email": f"login:{email}",
        }

    def refusal(self, email: str, ip: str) -> Refusal | None:
        """The first limit this login attempt is over, if any (nothing is counted)."""
        for rule, key in self._keys(email, ip).items():
            wait = self.window.wait(key, self.rules[rule])
            if wait:
                return Refusal(rule, wait)
        return None

    def failed(self, email: str, ip: str) -> None:
        for rule, key in self._keys(email, ip).items():
            self.window.add(key, self.rules[rule])

    def succeeded(self, email: str, ip: str) -> None:
        self.window.forget(self._keys(email, ip)["account_address"])


class SignupLimiter:
    """Sign-ups per address (an IPv6 /64 counts as one), the rule read from the settings on
    every call so that an operator's change applies at once."""

    def __init__(
        self, *, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = SlidingWindow(max_keys, clock)

    def hit(self, ip: str, rule: Rule) -> None:
        """Count one sign-up attempt, or refuse it (429) when the address is over its limit."""
        key = f"signup:{address_key(ip)}"
        wait = self.window.wait(key, rule)
        if wait:
            raise RateLimited(
                "too many sign-ups from your address", retry_after=wait, code="too_many_signups"
            )
        self.window.add(key, rule)


def normalize_email(email: str) -> str:
    email = email.strip().lower() if isinstance(email, str) else ""
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise InvalidInput("that is not a valid email address", code="invalid_email")
    return email


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(
            f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters", code="weak_password"
        )
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def tenant_slug(email: str) -> str:
    local = re.sub(r"[^a-z0-9-]+", "-", email.split("@", 1)[0].lower()).strip("-")[:20] or "user"
    return f"{local}-{secrets.token_hex(3)}"


def create_user(
    session: Session, email: str, password: str | None, *, is_operator: bool = False
) -> User:
    """A user with a personal tenant (owner) on the default plan. ``password=None``: no login."""
    email = normalize_email(email)
    if password is not None:
        check_password(password)
    # Before the (deliberately slow) hash: a taken email costs no argon2 run.
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict("an account with that email exists", code="email_taken")
    pw_hash = hash_password(password) if password is not None else "!"
    tenant = Tenant(
        id=new_id(), name=tenant_slug(email), kind="personal", plan_id=default_plan_id(session)
    )
    user = User(
        id=new_id(),
        email=email,
        password_hash=pw_hash,
        is_operator=is_operator,
        personal_tenant_id=tenant.id,
    )
    session.add_all([tenant, user])
    session.flush()
    session.add(Membership(id=new_id(), tenant_id=tenant.id, user_id=user.id, role="owner"))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("an account with that email exists", code="email_taken") from None
    return user


def default_plan_id(session: Session) -> str | None:
    row = session.scalar(select(PlanRow).where(PlanRow.name == "default"))
    return row.id if row else None


@dataclass(frozen=True)
class LoginResult:
    user: User
    session_token: str
    expires_at: float


def login(
    session: Session, limiter: LoginLimiter, email: str, password: str, ip: str
) -> LoginResult:
    """Check the password, within the limiter's limits. A refused attempt (429) is not
    counted and costs no password hash."""
    email = str(email).strip().lower()
    user = session.scalar(select(User).where(User.email == email))
    refusal = limiter.refusal(email, ip)
    if refusal and refusal.rule == "email" and user and known_address(session, user.id, ip):
        refusal = None  # the per-email ceiling holds back strangers, not the owner at home
    if refusal:
        raise RateLimited(
            "too many failed logins", retry_after=refusal.wait, code="too_many_attempts"
        )
    ok = verify_password(user.password_hash if user else _DUMMY_HASH, str(password))
    if user is None or not ok:
        limiter.failed(email, ip)
        raise Unauthorized("wrong email or password", code="bad_credentials")
    limiter.succeeded(email, ip)
    row, secret = issue_session(session, user.id, ip)
    return LoginResult(user, secret, row.expires_at)


def known_address(session: Session, user_id: str, ip: str) -> bool:
    """Has this user signed in from this address before (a session row remembers it)?"""
    found = session.scalar(
        select(WebSession.id)
        .where(WebSession.user_id == user_id, WebSession.ip == ip[:64])
        .limit(1)
    )
    return found is not None


def logout(session: Session, principal: Principal) -> None:
    if principal.via == "session":
        row = session.get(WebSession, principal.credential_id)
        if row is not None and row.revoked_at is None:
            row.revoked_at = time.time()
            session.commit()


# -- tokens ----------------------------------------------------------------------------------


def create_token(
    session: Session,
    who: Principal,
    name: str,
    scope: str,
    expires_in: float | None,
    default_seconds: float = 90 * 24 * 3600,
) -> tuple[ApiToken, str]:
    """A new API token; without ``expires_in`` it lasts ``default_seconds`` (never forever:
    a forgotten token must stop working one day). The operator's first-start token is made
    by the bootstrap, without an expiry, so that the token file keeps working."""
    if who.user_id is None:
        raise Forbidden("only a user can create tokens", code="forbidden")
    if scope not in SCOPES:
        raise InvalidInput(f"scope must be one of {', '.join(SCOPES)}", code="invalid_scope")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 64:
        raise InvalidInput("token name must be 1-64 characters", code="invalid_name")
    if expires_in is not None and not 60 <= expires_in <= MAX_TOKEN_SECONDS:
        raise InvalidInput("expiry must be between 60 seconds and 366 days", code="invalid_expiry")
    if expires_in is None:
        expires_in = min(default_seconds, MAX_TOKEN_SECONDS)
    expires_at = time.time() + expires_in
    return issue_token(session, who.tenant_id, name.strip(), scope, expires_at, who.user_id)


def list_tokens(session: Session, who: Principal) -> list[ApiToken]:
    stmt = select(ApiToken).where(ApiToken.tenant_id == who.tenant_id)
    if not who.can_manage:
        stmt = stmt.where(ApiToken.user_id == who.user_id)
    return list(session.scalars(stmt.order_by(ApiToken.created_at)))


def revoke_token(session: Session, who: Principal, token_id: str) -> ApiToken:
    row = session.scalar(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.tenant_id == who.tenant_id)
    )
    if row is None or (row.user_id != who.user_id and not who.can_manage):
        raise NotFound(f"token {token_id!r} not found", code="token_not_found")
    if row.revoked_at is None:
        row.revoked_at = time.time()
        session.commit()
    return row


# -- teams -----------------------------------------------------------------------------------


def create_team(session: Session, who: Principal, name: str) -> Tenant:
    if who.user_id is None:
        raise Forbidden("only a user can create teams", code="forbidden")
    name = validate_app_name(name)
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise Conflict(f"the name {name!r} is taken", code="tenant_exists")
    team = Tenant(id=new_id(), name=name, kind="team", plan_id=default_plan_id(session))
    session.add(team)
    session.flush()
    session.add(Membership(id=new_id(), tenant_id=team.id, user_id=who.user_id, role="owner"))
    session.commit()
    return team


def list_memberships(session: Session, user_id: str | None) -> list[tuple[Tenant, str]]:
    if user_id is None:
        return []
    rows = session.execute(
        select(Tenant, Membership.role)
        .join(Membership, Membership.tenant_id == Tenant.id)
        .where(Membership.user_id == user_id)
        .order_by(Tenant.name)
    )
    return [(t, r) for t, r in rows]


def list_members(session: Session, who: Principal) -> list[tuple[User, str]]:
    rows = session.execute(
        select(User, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.tenant_id == who.tenant_id)
        .order_by(User.email)
    )
    return [(u, r) for u, r in rows]


def invite(session: Session, who: Principal, email: str, role: str) -> tuple[Invitation, str]:
    _require_owner(who)
    email = normalize_email(email)
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
    tenant = session.get(Tenant, who.tenant_id)
    if tenant is None or tenant.kind != "team":
        # The request is well formed; the tenant it acts in cannot have members: a conflict.
        raise Conflict("invite people to a team, not to a personal tenant", code="not_a_team")
    secret = "binv_" + secrets.token_urlsafe(24)
    inv = Invitation(
        id=new_id(),
        tenant_id=who.tenant_id,
        email=email,
        role=role,
        token_hash=hash_token(secret),
        invited_by=who.user_id or "",
        expires_at=time.time() + INVITATION_SECONDS,
    )
    session.add(inv)
    session.commit()
    return inv, secret


def accept_invitation(session: Session, who: Principal, secret: str) -> Tenant:
    inv = session.scalar(select(Invitation).where(Invitation.token_hash == hash_token(secret)))
    user = session.get(User, who.user_id) if who.user_id else None
    if inv is None or user is None or inv.email != user.email:
        raise NotFound("invitation not found", code="invitation_not_found")
    if inv.accepted_at is not None or inv.expires_at < time.time():
        raise InvalidInput("this invitation was used or has expired", code="invitation_used")
    existing = session.scalar(
        select(Membership).where(
            Membership.tenant_id == inv.tenant_id, Membership.user_id == user.id
        )
    )
    if existing is None:
        session.add(
            Membership(id=new_id(), tenant_id=inv.tenant_id, user_id=user.id, role=inv.role)
        )
    inv.accepted_at = time.time()
    session.commit()
    tenant = session.get(Tenant, inv.tenant_id)
    assert tenant is not None
    return tenant


def set_member_role(session: Session, who: Principal, email: str, role: str | None) -> None:
    """Change a member's role, or remove them (``role=None``). A team keeps at least one owner."""
    _require_owner(who)
    if role is not None and role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
    member = session.scalar(
        select(Membership)
        .join(User, User.id == Membership.user_id)
        .where(Membership.tenant_id == who.tenant_id, User.email == str(email).strip().lower())
    )
    if member is None:
        raise NotFound(f"{email!r} is not a member", code="member_not_found")
    owners = session.scalars(
        select(Membership).where(Membership.tenant_id == who.tenant_id, Membership.role == "owner")
    ).all()
    if member.role == "owner" and role != "owner" and len(owners) <= 1:
        raise InvalidInput("a team needs at least one owner", code="last_owner")
    if role is None:
        session.delete(member)
    else:
        member.role = role
    session.commit()


def _require_owner(who: Principal) -> None:
    if not who.can_manage:
        raise Forbidden(
            "only owners (with an admin-scoped token) can manage members", code="forbidden"
        )
