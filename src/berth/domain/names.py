"""Strict validation of every name that reaches a container label, a file name or nginx config.

Only lowercase RFC 1123 labels pass, so that no input can inject configuration.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from berth.errors import InvalidInput

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# What a browser would read as a number in the last label (WHATWG "ends in a number"): then
# the whole host is an IPv4 address to it (127.1, 0x7f.1, 2130706433), whatever we think.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
APP_NAME_MAX = 30


def validate_app_name(name: str) -> str:
    """An app name is one DNS label of at most 30 characters: it becomes ``NAME.<base domain>``."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("app name must not be empty", code="invalid_name")
    if len(name) > APP_NAME_MAX:
        raise InvalidInput(
            f"app name must be at most {APP_NAME_MAX} characters", code="invalid_name"
        )
    if not _LABEL.fullmatch(name):
        raise InvalidInput(
            "app name must be lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
            code="invalid_name",
        )
    return name


def check_not_reserved(name: str, reserved: Iterable[str]) -> str:
    """Names the platform keeps for itself (``api.<base domain>``, ``www``, ...) are refused,
    so that no tenant's app answers at a hostname users would take for the provider's own."""
    if name in {r.strip().lower() for r in reserved}:
        raise InvalidInput(f"the name {name!r} is reserved; choose another", code="name_reserved")
    return name


def validate_domain(domain: str) -> str:
    """A fully qualified domain: lowercase RFC 1123 labels separated by dots, at most 253 chars."""
    if not isinstance(domain, str) or not domain:
        raise InvalidInput("domain must not be empty", code="invalid_domain")
    if len(domain) > 253:
        raise InvalidInput("domain must be at most 253 characters", code="invalid_domain")
    if _is_ip_literal(domain):
        raise InvalidInput(
            f"{domain[:60]!r} is an IP address; a custom domain must be a name like "
            "app.example.com (visits by IP address never route to an app)",
            code="invalid_domain",
        )
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidInput(
            "domain must have at least two labels, like example.com", code="invalid_domain"
        )
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidInput(
                f"invalid domain {domain!r}: each label must be 1-63 lowercase letters, "
                "digits or '-', not starting or ending with '-'",
                code="invalid_domain",
            )
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise InvalidInput(
            f"invalid domain {domain!r}: the last label must not be a number like 1 or 0x7f "
            "(browsers would read the name as an IP address)",
            code="invalid_domain",
        )
    return domain


def _is_ip_literal(text: str) -> bool:
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def is_valid_domain(domain: str) -> bool:
    try:
        validate_domain(domain)
    except InvalidInput:
        return False
    return True
