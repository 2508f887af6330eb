"""Identifiers that billing embeds in account names and idempotency keys.

Keys are built by joining ids with ``:``, so an id must never contain ``:`` (otherwise tenant
``a:b`` + app ``c`` and tenant ``a`` + app ``b:c`` would share a key). Ids are checked here once.
"""

from __future__ import annotations

import re

from berth.errors import InvalidInput

_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Idempotency keys come from callers (payment providers, the API's Idempotency-Key header):
# printable ASCII without whitespace, bounded so that one can always be stored and compared.
_KEY = re.compile(r"[!-~]{1,200}")


def check_ref(kind: str, value: str) -> str:
    """An id (tenant, app, instance) safe inside keys: 1-100 of ``A-Z a-z 0-9 _ . -``."""
    if not isinstance(value, str) or not _REF.fullmatch(value):
        raise InvalidInput(
            f"invalid {kind} id {value!r}: use 1-100 letters, digits, '_', '.' or '-'",
            code="invalid_id",
        )
    return value


def check_idempotency_key(key: str) -> str:
    """An idempotency key: 1-200 printable ASCII characters, no whitespace."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidInput(
            "idempotency key must be 1-200 printable ASCII characters without spaces",
            code="invalid_idempotency_key",
        )
    return key
