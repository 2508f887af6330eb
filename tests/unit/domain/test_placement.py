"""Placement constraints: the grammar, satisfaction as Swarm decides it, the pending reason."""

from __future__ import annotations

import pytest

from berth.domain.placement import (
    MAX_CONSTRAINTS,
    Constraint,
    normalized,
    parse_constraint,
    parse_constraints,
    satisfied,
    swarm_constraints,
    unsatisfied_reason,
)
from berth.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zone==b", Constraint("zone", "==", "b")),
        ("zone!=a", Constraint("zone", "!=", "a")),
        ("  disk==ssd ", Constraint("disk", "==", "ssd")),
        ("rack.row_1-x==R12:a/b", Constraint("rack.row_1-x", "==", "R12:a/b")),
        ("ingress==true", Constraint("ingress", "==", "true")),
    ],
)
def test_good_constraints_parse(text: str, expected: Constraint) -> None:
    assert parse_constraint(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "zone",
        "zone=b",
        "zone==",
        "==b",
        "zone===b",
        "zone==b==c",
        "zone=!b",
        "zone == b",
        "zone==b c",
        "zone==b;rm -rf /",
        "zone==$(id)",
        "zone==`id`",
        "zone==b\nx==y",
        "zone==b\n",
        "\tzone==b",
        "zone==B",  # zones are lowercase (berth.cluster.labels): it could never hold
        "zone==a_b",
        "ingress==yes",
        "Zone==b",  # keys are lowercase like node labels
        "node.role==worker",  # Docker's own namespace: reads as another kind of constraint
        "node.labels.zone==b",
        "engine.labels.x==y",
        "com.docker.x==y",
        "berth.managed==true",
        "berth.anything==x",
        "-zone==b",
        "zone-==b",
        "a" * 64 + "==b",
        "disk==" + "x" * 129,
        "disk==a@b",  # Swarm refuses '@' in a constraint's value
        "disk==-x",
        "disk==x.",
        "zone\x00==b",
        "zöne==b",
        "disk==ünicode",
    ],
)
def test_bad_constraints_are_refused_with_one_code(bad: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_constraint(bad)
    assert refused.value.code == "invalid_constraint"
    assert refused.value.status == 422
    assert len(refused.value.message) < 400  # the message quotes a bounded part of the input


def test_a_constraint_longer_than_128_characters_is_refused() -> None:
    text = "k==" + "v" * 126
    assert len(text) == 129
    with pytest.raises(InvalidInput, match="longer than 128"):
        parse_constraint(text)
    assert str(parse_constraint("k==" + "v" * 125)) == "k==" + "v" * 125


def test_at_most_ten_and_duplicates_dropped_in_order() -> None:
    many = [f"k{i}==v" for i in range(MAX_CONSTRAINTS)]
    assert len(parse_constraints(many)) == MAX_CONSTRAINTS
    with pytest.raises(InvalidInput, match="at most 10") as refused:
        parse_constraints([*many, "k10==v"])
    assert refused.value.code == "invalid_constraint"
    assert normalized(["zone==b", " disk!=hdd", "zone==b", "disk!=HDD"]) == [
        "zone==b",
        "disk!=hdd",
    ]
    assert normalized([]) == []


@pytest.mark.parametrize(
    "texts",
    [
        ["zone==a", "zone==b"],
        ["zone==a", "zone!=a"],
        ["disk!=SSD", "disk==ssd"],  # values compare case-insensitively, as in Swarm
    ],
)
def test_constraints_that_can_never_hold_together_are_refused(texts: list[str]) -> None:
    with pytest.raises(InvalidInput, match="can never both hold") as refused:
        parse_constraints(texts)
    assert refused.value.code == "invalid_constraint"


def test_different_keys_and_several_exclusions_are_fine() -> None:
    assert len(parse_constraints(["zone!=a", "zone!=b", "disk==ssd"])) == 3


def test_swarm_form() -> None:
    assert swarm_constraints(["zone==b", "disk!=hdd"]) == [
        "node.labels.zone==b",
        "node.labels.disk!=hdd",
    ]
    with pytest.raises(InvalidInput):
        swarm_constraints(["zone=b"])


@pytest.mark.parametrize(
    ("texts", "labels", "holds"),
    [
        ([], {}, True),
        (["zone==b"], {"zone": "b"}, True),
        (["zone==b"], {"zone": "a"}, False),
        (["zone==b"], {}, False),  # a missing label is the empty value
        (["zone!=b"], {}, True),
        (["zone!=b"], {"zone": "b"}, False),
        (["zone!=b"], {"zone": "a"}, True),
        (["disk==ssd"], {"disk": "SSD"}, True),  # values: case-insensitive (swarmkit)
        (["disk==ssd"], {"Disk": "ssd"}, False),  # keys: exact
        (["zone==b", "disk!=hdd"], {"zone": "b", "disk": "ssd"}, True),
        (["zone==b", "disk!=hdd"], {"zone": "b", "disk": "hdd"}, False),
    ],
)
def test_satisfaction_is_swarms(texts: list[str], labels: dict[str, str], holds: bool) -> None:
    assert satisfied(parse_constraints(texts), labels) is holds


def test_the_reason_in_swarms_words() -> None:
    assert unsatisfied_reason([], [{}]) is None
    assert unsatisfied_reason(["zone==b"], [{"zone": "b"}]) is None
    assert unsatisfied_reason(["zone==b"], [{"zone": "a"}]) == (
        "no suitable node (scheduling constraints not satisfied on 1 node)"
    )
    three = [{"zone": "a"}, {"zone": "b"}, {}]
    assert unsatisfied_reason(["zone==b"], three) is None
    assert unsatisfied_reason(["zone==nowhere"], three) == (
        "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    )


def test_a_stored_constraint_that_no_longer_parses_says_so() -> None:
    reason = unsatisfied_reason(["zone=b"], [{}])
    assert reason is not None
    assert reason.startswith("invalid placement constraints: ")
