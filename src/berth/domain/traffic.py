"""Per-app traffic controls at the ingress: pure values and their validation, no I/O.

A tenant sets redirects between its own hostnames, HTTP basic auth, a maintenance page, an IP
allow/deny list and a rate limit per client address. Each is validated here into a closed
form (hostnames of the app, normalised CIDRs, bounded integers, bcrypt hashes, a bounded plain
text) before it is stored, and the renderer checks the same again before anything reaches
nginx's config. A change is always a whole new value: one bad part refuses all of it.
"""

from __future__ import annotations

import html
import ipaddress
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import bcrypt

from berth.domain.names import is_valid_domain
from berth.errors import InvalidInput

REDIRECT_CODES = (301, 308)
MAX_REDIRECTS = 20
MAX_USERS = 20
MAX_CIDRS = 100
MAX_MESSAGE = 1000
MAX_PASSWORD = 128
RATE_MAX = 10_000
BURST_MAX = 10_000
# nginx checks the hash on every request in its event loop (it caches nothing), so the cost
# must stay small: 2^5 rounds take ~2 ms; the registry's cost 12 would stall a worker 250 ms.
BCRYPT_ROUNDS = 5

_USER = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_CIDR_CHARS = re.compile(r"[0-9A-Fa-f:./]{2,49}")
_HOSTNAME_CHARS = re.compile(r"[a-z0-9.-]{1,253}")


@dataclass(frozen=True, slots=True)
class Redirect:
    """Requests for ``source`` answer ``code`` with a Location on ``target`` (same path)."""

    source: str
    target: str
    code: int = 301


@dataclass(frozen=True, slots=True)
class BasicAuthUser:
    user: str
    password_hash: str  # bcrypt, as nginx's auth_basic_user_file reads it (libxcrypt)


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: int
    burst: int = 0


@dataclass(frozen=True, slots=True)
class TrafficControls:
    redirects: tuple[Redirect, ...] = ()
    basic_auth: tuple[BasicAuthUser, ...] = ()
    maintenance: bool = False
    maintenance_message: str = ""
    allow: tuple[str, ...] = ()  # normalised CIDRs; when any, every other address is denied
    deny: tuple[str, ...] = ()  # checked before allow: a denied address is never let in
    rate_limit: RateLimit | None = None
    # Plain HTTP on a hostname with a certificate redirects to HTTPS (on unless turned off).
    https_redirect: bool = True

    @property
    def empty(self) -> bool:
        return self == NO_CONTROLS


NO_CONTROLS = TrafficControls()
# What a stored value that cannot be read becomes: closed, never open (the app answers its
# maintenance page until the owner sets its controls again).
UNREADABLE = TrafficControls(maintenance=True)


@dataclass(frozen=True, slots=True)
class TrafficChange:
    """A partial update: ``None`` keeps the current value of that part."""

    redirects: tuple[Redirect, ...] | None = None
    basic_auth: tuple[BasicAuthUser, ...] | None = None
    maintenance: bool | None = None
    maintenance_message: str | None = None
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] | None = None
    rate_limit: RateLimit | None = None
    remove_rate_limit: bool = False
    https_redirect: bool | None = None


def apply_change(current: TrafficControls, change: TrafficChange) -> TrafficControls:
    """The controls after ``change``; not validated yet (``validate`` the result)."""
    updates: dict[str, Any] = {}
    names = ("redirects", "basic_auth", "maintenance", "maintenance_message", "allow", "deny")
    for name in (*names, "https_redirect"):
        value = getattr(change, name)
        if value is not None:
            updates[name] = value
    if change.remove_rate_limit:
        updates["rate_limit"] = None
    elif change.rate_limit is not None:
        updates["rate_limit"] = change.rate_limit
    return replace(current, **updates)


# -- validation ---------------------------------------------------------------------------


def validate(controls: TrafficControls, own_hostnames: Iterable[str]) -> TrafficControls:
    """``controls`` in normal form, or InvalidInput with a precise code. ``own_hostnames``
    are the app's platform hostname and its domains: the only places a redirect may name."""
    if not isinstance(controls, TrafficControls):
        raise InvalidInput("traffic controls must be a TrafficControls", code="invalid_traffic")
    return TrafficControls(
        redirects=check_redirects(controls.redirects, frozenset(own_hostnames)),
        basic_auth=check_basic_auth(controls.basic_auth),
        maintenance=check_flag(controls.maintenance),
        maintenance_message=check_message(controls.maintenance_message),
        allow=check_cidrs(controls.allow, "allow"),
        deny=check_cidrs(controls.deny, "deny"),
        rate_limit=check_rate_limit(controls.rate_limit),
        https_redirect=check_flag(controls.https_redirect),
    )


def check_hostname(hostname: object) -> str:
    if not isinstance(hostname, str):
        raise InvalidInput("a redirect's hostnames must be strings", code="invalid_redirect")
    name = hostname.lower().removesuffix(".") if hostname.isascii() else hostname
    if not _HOSTNAME_CHARS.fullmatch(name) or not is_valid_domain(name):
        raise InvalidInput(f"{hostname!r} is not a hostname", code="invalid_redirect")
    return name


def check_redirects(redirects: object, own_hostnames: frozenset[str]) -> tuple[Redirect, ...]:
    if not isinstance(redirects, tuple) or not all(isinstance(r, Redirect) for r in redirects):
        raise InvalidInput("redirects must be a list of redirects", code="invalid_redirect")
    if len(redirects) > MAX_REDIRECTS:
        raise InvalidInput(f"at most {MAX_REDIRECTS} redirects per app", code="invalid_redirect")
    target_of: dict[str, str] = {}
    out: list[Redirect] = []
    for redirect in redirects:
        source, target = check_hostname(redirect.source), check_hostname(redirect.target)
        code = redirect.code
        if isinstance(code, bool) or code not in REDIRECT_CODES:
            raise InvalidInput(
                f"a redirect's code is 301 or 308, not {code!r}", code="invalid_redirect"
            )
        for name in (source, target):
            if name not in own_hostnames:
                raise InvalidInput(
                    f"{name} is not one of this app's hostnames (its platform hostname or "
                    "one of its domains)",
                    code="invalid_redirect",
                )
        if source == target:
            raise InvalidInput(f"{source} cannot redirect to itself", code="redirect_loop")
        if source in target_of:
            raise InvalidInput(f"{source} is redirected twice", code="invalid_redirect")
        target_of[source] = target
        out.append(Redirect(source, target, code))
    loop = find_loop(target_of)
    if loop:
        raise InvalidInput("the redirects form a loop: " + " -> ".join(loop), code="redirect_loop")
    return tuple(sorted(out, key=lambda r: r.source))


def find_loop(target_of: Mapping[str, str]) -> list[str]:
    """A cycle of redirects (``[a, b, a]``), or ``[]`` when every chain ends."""
    done: set[str] = set()
    for start in sorted(target_of):
        path: list[str] = []
        on_path: set[str] = set()
        node: str | None = start
        while node is not None and node in target_of and node not in done:
            if node in on_path:
                return [*path[path.index(node) :], node]
            path.append(node)
            on_path.add(node)
            node = target_of[node]
        done.update(path)
    return []


def check_user(user: object) -> str:
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise InvalidInput(
            f"basic auth user {user!r} must be 1-64 of letters, digits, '.', '_' and '-'",
            code="invalid_basic_auth",
        )
    return user


def check_password(password: object) -> str:
    if not isinstance(password, str) or not 1 <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(
            f"a basic auth password is 1-{MAX_PASSWORD} characters", code="invalid_basic_auth"
        )
    if any(unicodedata.category(c).startswith("C") for c in password):
        raise InvalidInput(
            "a basic auth password cannot contain control characters",
            code="invalid_basic_auth",
        )
    return password


def hash_password(password: str) -> str:
    """The bcrypt hash nginx checks ``password`` against."""
    check_password(password)
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()


def user_with_password(user: str, password: str) -> BasicAuthUser:
    return BasicAuthUser(check_user(user), hash_password(password))


def check_basic_auth(users: object) -> tuple[BasicAuthUser, ...]:
    if not isinstance(users, tuple) or not all(isinstance(u, BasicAuthUser) for u in users):
        raise InvalidInput("basic auth must be a list of users", code="invalid_basic_auth")
    if len(users) > MAX_USERS:
        raise InvalidInput(f"at most {MAX_USERS} basic auth users", code="invalid_basic_auth")
    seen: set[str] = set()
    for entry in users:
        check_user(entry.user)
        if not isinstance(entry.password_hash, str) or not _BCRYPT.fullmatch(entry.password_hash):
            raise InvalidInput(
                f"the password of {entry.user} is not a bcrypt hash", code="invalid_basic_auth"
            )
        if entry.user in seen:
            raise InvalidInput(
                f"basic auth user {entry.user} is given twice", code="invalid_basic_auth"
            )
        seen.add(entry.user)
    return tuple(sorted(users, key=lambda u: u.user))


def check_flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput("maintenance is on or off", code="invalid_maintenance")
    return value


def check_message(message: object) -> str:
    if not isinstance(message, str) or len(message) > MAX_MESSAGE:
        raise InvalidInput(
            f"the maintenance message is plain text of at most {MAX_MESSAGE} characters",
            code="invalid_maintenance",
        )
    if any(unicodedata.category(c).startswith("C") for c in message):
        raise InvalidInput(
            "the maintenance message is one line of plain text (no control characters)",
            code="invalid_maintenance",
        )
    return message.strip()


def check_cidr(text: object) -> str:
    """``text`` as a normalised network (``10.0.0.0/8``, ``2001:db8::/32``; a bare address is
    its /32 or /128). Host bits set are refused: ``10.0.0.1/8`` is most likely a typo."""
    if not isinstance(text, str) or not _CIDR_CHARS.fullmatch(text):
        raise InvalidInput(f"{text!r} is not an IPv4 or IPv6 CIDR", code="invalid_cidr")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"{text!r} is not a valid CIDR: {exc}", code="invalid_cidr") from None
    return network.compressed


def check_cidrs(cidrs: object, which: str) -> tuple[str, ...]:
    if not isinstance(cidrs, tuple):
        raise InvalidInput(f"the {which} list must be a list of CIDRs", code="invalid_cidr")
    if len(cidrs) > MAX_CIDRS:
        raise InvalidInput(f"at most {MAX_CIDRS} CIDRs in the {which} list", code="invalid_cidr")
    return tuple(sorted({check_cidr(c) for c in cidrs}, key=_network_order))


def _network_order(text: str) -> tuple[int, int, int]:
    network = ipaddress.ip_network(text)
    return network.version, int(network.network_address), network.prefixlen


def check_rate_limit(limit: object) -> RateLimit | None:
    if limit is None:
        return None
    if not isinstance(limit, RateLimit):
        raise InvalidInput(
            "a rate limit is requests per second and a burst", code="invalid_rate_limit"
        )
    rate, burst = limit.per_second, limit.burst
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= RATE_MAX:
        raise InvalidInput(
            f"a rate limit is 1 to {RATE_MAX} requests per second per client address, not {rate!r}",
            code="invalid_rate_limit",
        )
    if isinstance(burst, bool) or not isinstance(burst, int) or not 0 <= burst <= BURST_MAX:
        raise InvalidInput(
            f"a burst is 0 to {BURST_MAX} requests, not {burst!r}", code="invalid_rate_limit"
        )
    return RateLimit(rate, burst)


_RATE = re.compile(r"([0-9]{1,6})(/s|r/s)?")


def parse_rate(text: str) -> int:
    """``10/s`` (or ``10``) as 10 requests per second; the range is checked by validate."""
    match = _RATE.fullmatch(text.strip())
    if not match:
        raise InvalidInput(
            f"a rate limit is like 10/s (requests per second), not {text!r}",
            code="invalid_rate_limit",
        )
    return int(match.group(1))


def routable(controls: TrafficControls, hostnames: Iterable[str]) -> TrafficControls:
    """The controls for the hostnames that route now: a redirect from or to a domain that is
    not verified (or was removed) is left out until it is. Pure; loops cannot appear, since a
    subset of acyclic redirects is acyclic."""
    names = frozenset(hostnames)
    kept = tuple(r for r in controls.redirects if r.source in names and r.target in names)
    return controls if kept == controls.redirects else replace(controls, redirects=kept)


# -- the maintenance page -----------------------------------------------------------------


def maintenance_page(app_name: str, message: str) -> str:
    """The 503 page: the message as escaped text, in ASCII only (everything else a numeric
    character reference), with no ``"``, ``\\`` or ``$`` left for nginx's quoted string."""
    text = message or "This site is down for maintenance. Please try again later."
    body = html.escape(check_message(text), quote=True)
    body = "".join(c if 32 <= ord(c) < 127 and c not in "\\$" else f"&#{ord(c)};" for c in body)
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>503 Down for maintenance"
        f"</title></head><body><h1>{app_name} is down for maintenance</h1><p>{body}</p>"
        "</body></html>\n"
    )


# -- the stored form ----------------------------------------------------------------------


def to_json(controls: TrafficControls) -> str:
    data: dict[str, Any] = {}
    if controls.redirects:
        data["redirects"] = [[r.source, r.target, r.code] for r in controls.redirects]
    if controls.basic_auth:
        data["basic_auth"] = [[u.user, u.password_hash] for u in controls.basic_auth]
    if controls.maintenance:
        data["maintenance"] = True
    if controls.maintenance_message:
        data["maintenance_message"] = controls.maintenance_message
    if controls.allow:
        data["allow"] = list(controls.allow)
    if controls.deny:
        data["deny"] = list(controls.deny)
    if controls.rate_limit is not None:
        data["rate_limit"] = [controls.rate_limit.per_second, controls.rate_limit.burst]
    if not controls.https_redirect:
        data["https_redirect"] = False
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def from_json(text: str | None) -> TrafficControls:
    """The stored controls, checked again (all but the redirects' hostnames against the app's,
    which the planner filters). Raises ValueError on anything that is not such a value."""
    if not text:
        return NO_CONTROLS
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        limit = data.get("rate_limit")
        controls = TrafficControls(
            redirects=tuple(Redirect(s, t, c) for s, t, c in data.get("redirects", [])),
            basic_auth=tuple(BasicAuthUser(u, h) for u, h in data.get("basic_auth", [])),
            maintenance=data.get("maintenance", False),
            maintenance_message=data.get("maintenance_message", ""),
            allow=tuple(data.get("allow", [])),
            deny=tuple(data.get("deny", [])),
            rate_limit=RateLimit(limit[0], limit[1]) if limit is not None else None,
            https_redirect=data.get("https_redirect", True),
        )
        hostnames = {n for r in controls.redirects for n in (r.source, r.target)}
        return validate(controls, hostnames)
    except (InvalidInput, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"stored traffic controls are not valid: {exc}") from None
