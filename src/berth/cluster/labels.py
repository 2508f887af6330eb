"""Node labels an operator may set: pure rules, checked before anything reaches the Swarm.

Berth reads two labels: ``zone`` (spread and ``--constraint zone==b``) and ``ingress``
(``true``: the node runs an ingress, so every node's guard lets it reach the tasks' published
ports, as it lets the machines running ``berth server``: berth.swarm.guard_service). Any other
key is the operator's own, for their constraints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from berth.errors import Conflict, InvalidInput

ZONE = "zone"
INGRESS = "ingress"
MAX_LABELS = 64

# Docker's own namespaces, and "node." which reads as a constraint (node.labels.x==y) and
# would make `--constraint node.x==y` mean two things.
RESERVED_PREFIXES = ("com.docker.", "io.docker.", "org.dockerproject.", "node.", "engine.")
# Berth's own labels on what it creates; a node label of that name would be confused with them.
RESERVED_KEYS = frozenset({"berth.managed", "berth.installation"})

_KEY = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
# Values end up inside placement constraints (node.labels.k==v): no operators, no spaces.
_VALUE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:/@-]{0,126}[A-Za-z0-9])?")
_ZONE_VALUE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
INGRESS_VALUES = ("true", "false")


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key:
        raise InvalidInput(
            f"label key {key[:80]!r} is not valid: lowercase letters, digits, '.', '-' and '_', "
            "1 to 63 characters, starting and ending with a letter or digit",
            code="invalid_label",
        )
    if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES) or key.startswith("berth."):
        raise InvalidInput(
            f"label key {key!r} is reserved (the prefixes {', '.join(RESERVED_PREFIXES)} and "
            "berth. are Docker's and Berth's own)",
            code="reserved_label",
        )
    return key


def check_value(key: str, value: str) -> str:
    if key == ZONE and not _ZONE_VALUE.fullmatch(value):
        raise InvalidInput(
            f"zone {value[:80]!r} is not valid: lowercase letters, digits and '-', "
            "1 to 32 characters",
            code="invalid_label",
        )
    if key == INGRESS and value not in INGRESS_VALUES:
        raise InvalidInput(
            f"ingress must be true or false, not {value[:80]!r}", code="invalid_label"
        )
    if not _VALUE.fullmatch(value):
        raise InvalidInput(
            f"the value of label {key!r} is not valid: 1 to 128 letters, digits and . _ : / @ -, "
            "starting and ending with a letter or digit",
            code="invalid_label",
        )
    return value


def parse_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``k=v`` arguments (the CLI's) into a mapping; a key given twice is an error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInput(f"{pair[:80]!r} is not KEY=VALUE", code="invalid_label")
        if key in out:
            raise InvalidInput(f"label {key[:80]!r} is given twice", code="invalid_label")
        out[key] = value
    return out


def apply_change(
    current: Mapping[str, str], add: Mapping[str, str], remove: Sequence[str]
) -> dict[str, str]:
    """The node's labels after the change; raises (nothing changed) on any bad part."""
    if not add and not remove:
        raise InvalidInput("give labels to set (k=v) or to remove", code="invalid_label")
    for key, value in add.items():
        check_value(check_key(key), value)
    both = set(add) & set(remove)
    if both:
        raise InvalidInput(
            f"label {sorted(both)[0]!r} is both set and removed", code="invalid_label"
        )
    labels = dict(current)
    for key in remove:
        check_key(key)
        if key not in labels:
            raise Conflict(f"the node has no label {key!r}", code="no_such_label")
        del labels[key]
    labels.update(add)
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"a node has at most {MAX_LABELS} labels", code="too_many_labels")
    return labels
