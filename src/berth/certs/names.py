"""Domain names as certificates see them: IDNA to A-labels, then Berth's strict RFC 1123 rules.

A wildcard (``*.example.com``) is one ``*`` as the whole leftmost label, over a domain that is
itself valid: CAs refuse anything else, and so does every TLS client's matcher.
"""

from __future__ import annotations

import idna

from berth.domain.names import validate_domain
from berth.errors import InvalidInput

# 253 characters is the DNS limit of a presentation name; Unicode input may be longer before
# it becomes A-labels, but not absurdly so (the check runs before any IDNA work).
_MAX_INPUT = 1024


def normalize_domain(text: str) -> str:
    """``text`` as lowercase A-labels without a trailing dot, or InvalidInput."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("domain must not be empty", code="invalid_domain")
    if len(text) > _MAX_INPUT:
        raise InvalidInput("domain is too long", code="invalid_domain")
    name = text.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise InvalidInput(
                f"invalid internationalised domain {text[:60]!r}: {exc}", code="invalid_domain"
            ) from None
    name = name.lower()
    if any(label.startswith("xn--") for label in name.split(".")):
        # An A-label given directly must decode, or it names nothing a browser would show.
        _check_a_labels(name, text)
    return validate_domain(name)


def _check_a_labels(name: str, original: str) -> None:
    try:
        idna.decode(name)
    except (idna.IDNAError, UnicodeError, ValueError):
        raise InvalidInput(
            f"invalid internationalised domain {original[:60]!r}", code="invalid_domain"
        ) from None


def normalize_pattern(text: str) -> str:
    """A certificate name: a domain, or ``*.`` followed by a domain of at least two labels."""
    if isinstance(text, str) and text.strip().startswith("*."):
        base = normalize_domain(text.strip()[2:])
        if len(base) + 2 > 253:
            raise InvalidInput("domain must be at most 253 characters", code="invalid_domain")
        return "*." + base
    if isinstance(text, str) and "*" in text:
        raise InvalidInput(
            "a wildcard must be '*.' followed by a domain, like *.example.com",
            code="invalid_domain",
        )
    return normalize_domain(text)


def pattern_covers(pattern: str, domain: str) -> bool:
    """Whether a certificate name covers ``domain`` (both already normalised).

    ``*.example.com`` covers exactly one more label: ``a.example.com``, never
    ``a.b.example.com`` nor ``example.com`` (RFC 6125 6.4.3, as browsers apply it)."""
    if pattern == domain:
        return True
    if not pattern.startswith("*."):
        return False
    head, sep, rest = domain.partition(".")
    return bool(sep) and bool(head) and rest == pattern[2:]
