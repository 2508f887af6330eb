"""Placement constraints of an app over node labels (pure: no I/O).

A constraint is ``LABEL==VALUE`` or ``LABEL!=VALUE`` over a node's labels (``zone==b``,
``disk!=hdd``). Swarm gets each as ``node.labels.LABEL==VALUE``; the local backend checks its
one node's labels (the ``node_labels`` setting) with the same rules Swarm applies:

- values compare case-insensitively, keys exactly (swarmkit's ``constraint.Match``);
- a node without the label has the empty value: ``zone==b`` does not hold on it, ``zone!=b``
  does.

Keys follow the rules of node labels (berth.cluster.labels): a constraint over a key no node
may carry could never hold, so it is refused rather than left pending forever. Values follow
those rules too, minus ``@``, which Swarm refuses in a constraint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from berth.cluster.labels import check_key, check_value
from berth.errors import InvalidInput

MAX_CONSTRAINTS = 10
MAX_LENGTH = 128
SWARM_PREFIX = "node.labels."
CODE = "invalid_constraint"

Operator = Literal["==", "!="]

# The key's and the value's own characters are checked by the label rules after the split;
# this only finds the one operator.
_SHAPE = re.compile(r"(?P<key>[^=!]+)(?P<op>==|!=)(?P<value>[^=!]+)")
_SWARM_VALUE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:/-]{0,126}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Constraint:
    key: str
    op: Operator
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"

    @property
    def swarm(self) -> str:
        """As a Swarm service's placement constraint."""
        return f"{SWARM_PREFIX}{self.key}{self.op}{self.value}"

    def holds(self, labels: Mapping[str, str]) -> bool:
        same = labels.get(self.key, "").casefold() == self.value.casefold()
        return same if self.op == "==" else not same


def parse_constraint(text: str) -> Constraint:
    """One constraint, or InvalidInput (``invalid_constraint``) saying what is wrong."""
    shown = repr(text[:80])
    if len(text) > MAX_LENGTH:
        raise InvalidInput(
            f"constraint {shown}... is longer than {MAX_LENGTH} characters", code=CODE
        )
    match = _SHAPE.fullmatch(text.strip(" "))  # spaces around it only: no newlines, no tabs
    if match is None:
        raise InvalidInput(
            f"constraint {shown} must be LABEL==VALUE or LABEL!=VALUE, like zone==b", code=CODE
        )
    key, value = match["key"], match["value"]
    try:
        check_key(key)
        check_value(key, value)
    except InvalidInput as bad:
        raise InvalidInput(f"constraint {shown}: {bad.message}", code=CODE) from None
    if not _SWARM_VALUE.fullmatch(value):
        raise InvalidInput(
            f"constraint {shown}: the value may hold letters, digits and . _ : / - only",
            code=CODE,
        )
    op: Operator = "==" if match["op"] == "==" else "!="
    return Constraint(key, op, value)


def parse_constraints(texts: Sequence[str]) -> tuple[Constraint, ...]:
    """An app's constraints, each checked, duplicates dropped (the first order kept).

    Refused: more than MAX_CONSTRAINTS, and a set that no node's labels could ever satisfy
    (``zone==a`` with ``zone==b``, or ``zone==a`` with ``zone!=a``): it would pend forever.
    """
    if len(texts) > MAX_CONSTRAINTS:
        raise InvalidInput(
            f"an app has at most {MAX_CONSTRAINTS} constraints, not {len(texts)}", code=CODE
        )
    out: list[Constraint] = []
    seen: set[tuple[str, str, str]] = set()
    for text in texts:
        constraint = parse_constraint(text)
        ident = (constraint.key, constraint.op, constraint.value.casefold())
        if ident not in seen:
            seen.add(ident)
            out.append(constraint)
    contradiction = _contradiction(out)
    if contradiction is not None:
        raise InvalidInput(contradiction, code=CODE)
    return tuple(out)


def normalized(texts: Sequence[str]) -> list[str]:
    """The stored form: each constraint as parsed, without surrounding space or duplicates."""
    return [str(c) for c in parse_constraints(texts)]


def swarm_constraints(texts: Sequence[str]) -> list[str]:
    """``zone==b`` as Swarm's ``node.labels.zone==b``; anything else refused."""
    return [c.swarm for c in parse_constraints(texts)]


def satisfied(constraints: Iterable[Constraint], labels: Mapping[str, str]) -> bool:
    return all(c.holds(labels) for c in constraints)


def unsatisfied_reason(texts: Sequence[str], nodes: Sequence[Mapping[str, str]]) -> str | None:
    """Why no node may run an instance under these constraints, in Swarm's own words; None when
    some node may (or there are no constraints). ``nodes``: each node's labels."""
    if not texts:
        return None
    try:
        constraints = parse_constraints(texts)
    except InvalidInput as bad:
        return f"invalid placement constraints: {bad.message}"
    failing = sum(1 for labels in nodes if not satisfied(constraints, labels))
    if failing < len(nodes):
        return None
    plural = "" if failing == 1 else "s"
    return f"no suitable node (scheduling constraints not satisfied on {failing} node{plural})"


def _contradiction(constraints: Sequence[Constraint]) -> str | None:
    equal: dict[str, Constraint] = {}
    for c in constraints:
        if c.op != "==":
            continue
        other = equal.get(c.key)
        if other is not None:
            return f"{other} and {c} can never both hold"
        equal[c.key] = c
    for c in constraints:
        other = equal.get(c.key)
        if c.op == "!=" and other is not None and other.value.casefold() == c.value.casefold():
            return f"{other} and {c} can never both hold"
    return None
