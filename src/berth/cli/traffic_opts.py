"""`berth apps update`'s traffic control flags: from flags to the API's partial update, and the
controls as `apps info` shows them. Passwords are asked for (hidden) or read from stdin, so
none has to be in argv."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from berth.cli.client import CliError

_CODES = {"301": 301, "308": 308}


@dataclass(frozen=True)
class TrafficFlags:
    redirect: list[str] | None = None
    no_redirects: bool = False
    basic_auth: list[str] | None = None
    no_basic_auth: bool = False
    maintenance: str | None = None
    maintenance_message: str | None = None
    allow: list[str] | None = None
    no_allow: bool = False
    deny: list[str] | None = None
    no_deny: bool = False
    rate_limit: str | None = None
    burst: int | None = None
    no_rate_limit: bool = False
    https_redirect: str | None = None


def read_password(user: str) -> str:
    """The password of ``user``: a hidden prompt on a terminal, else one line of stdin."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"Password for {user}: ")
    if getpass.getpass("Repeat the password: ") != first:
        raise CliError("the passwords do not match")
    return first


def traffic_body(
    flags: TrafficFlags,
    current_rate: Callable[[], dict[str, Any] | None],
    password: Callable[[str], str] = read_password,
) -> dict[str, Any] | None:
    """The ``traffic`` part of PATCH /apps/{name}, or None when no flag asks for a change.
    ``current_rate`` gives the app's rate limit when only ``--burst`` is given."""
    body: dict[str, Any] = {}
    _pair(flags.redirect, flags.no_redirects, "--redirect", "--no-redirects")
    _pair(flags.basic_auth, flags.no_basic_auth, "--basic-auth", "--no-basic-auth")
    _pair(flags.allow, flags.no_allow, "--allow", "--no-allow")
    _pair(flags.deny, flags.no_deny, "--deny", "--no-deny")
    if flags.no_rate_limit and (flags.rate_limit is not None or flags.burst is not None):
        raise CliError("give either --rate-limit/--burst or --no-rate-limit, not both")
    if flags.redirect or flags.no_redirects:
        body["redirects"] = [_redirect(r) for r in flags.redirect or []]
    if flags.basic_auth or flags.no_basic_auth:
        body["basic_auth"] = [_user(u, password) for u in flags.basic_auth or []]
    if flags.maintenance is not None:
        state = flags.maintenance.strip().lower()
        if state not in ("on", "off"):
            raise CliError(f"--maintenance is on or off, not {flags.maintenance!r}")
        body["maintenance"] = state == "on"
    if flags.maintenance_message is not None:
        body["maintenance_message"] = flags.maintenance_message
    if flags.allow or flags.no_allow:
        body["allow"] = list(flags.allow or [])
    if flags.deny or flags.no_deny:
        body["deny"] = list(flags.deny or [])
    if flags.https_redirect is not None:
        state = flags.https_redirect.strip().lower()
        if state not in ("on", "off"):
            raise CliError(f"--https-redirect is on or off, not {flags.https_redirect!r}")
        body["https_redirect"] = state == "on"
    if flags.no_rate_limit:
        body["rate_limit"] = None
    elif flags.rate_limit is not None or flags.burst is not None:
        body["rate_limit"] = _rate_limit(flags, current_rate)
    return body or None


def _pair(values: list[str] | None, none: bool, flag: str, no_flag: str) -> None:
    if values and none:
        raise CliError(f"give either {flag} (one or more) or {no_flag}, not both")


def _redirect(text: str) -> dict[str, Any]:
    source, sep, rest = text.partition("=")
    target, _, code = rest.partition(":")
    if not sep or not source or not target:
        raise CliError(
            f"--redirect is FROM=TO or FROM=TO:308, like www.a.example=a.example; not {text!r}"
        )
    if code and code not in _CODES:
        raise CliError(f"a redirect's code is 301 or 308, not {code!r}")
    return {"source": source, "target": target, "code": _CODES.get(code, 301)}


def _user(text: str, password: Callable[[str], str]) -> dict[str, str]:
    # USER:PASSWORD works for scripts, but puts the password in argv: the prompt is better.
    user, sep, given = text.partition(":")
    return {"user": user, "password": given if sep else password(user)}


def _rate_limit(
    flags: TrafficFlags, current_rate: Callable[[], dict[str, Any] | None]
) -> dict[str, int]:
    if flags.rate_limit is not None:
        text = flags.rate_limit.strip().removesuffix("/s").removesuffix("r")
        if not text.isdigit():
            raise CliError(
                f"--rate-limit is requests per second like 10/s, not {flags.rate_limit!r}"
            )
        rate = int(text)
    else:
        current = current_rate()
        if current is None:
            raise CliError("--burst needs a rate limit: give --rate-limit too")
        rate = int(current["per_second"])
    burst = flags.burst if flags.burst is not None else 0
    return {"per_second": rate, "burst": burst}


def traffic_rows(traffic: dict[str, Any] | None) -> list[tuple[str, str]]:
    """`apps info` rows of the controls (user names only: a password is never shown)."""
    if not traffic:
        return []
    redirects = [f"{r['source']} -> {r['target']} ({r['code']})" for r in traffic["redirects"]]
    limit = traffic.get("rate_limit")
    maintenance = "off"
    if traffic["maintenance"]:
        maintenance = "on" + (
            f": {traffic['maintenance_message']}" if traffic["maintenance_message"] else ""
        )
    return [
        ("redirects", "\n".join(redirects) or "none"),
        ("basic auth", ", ".join(traffic["basic_auth_users"]) or "off"),
        ("maintenance", maintenance),
        ("allow", ", ".join(traffic["allow"]) or "all"),
        ("deny", ", ".join(traffic["deny"]) or "none"),
        (
            "rate limit",
            f"{limit['per_second']}/s per client address, burst {limit['burst']}"
            if limit
            else "none",
        ),
    ]
