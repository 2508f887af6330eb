"""The database name rule and the derived server identifiers (pure)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.databases.errors import InvalidDatabaseName, UnknownEngine
from berth.databases.names import (
    ENGINES,
    NAME_PATTERN,
    new_password,
    parse_engine,
    server_names,
    validate_name,
)
from tests.databases.hostile import HOSTILE_NAMES

SAFE = re.compile(r"[a-z0-9]+:?")
ids = st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=64)


@given(st.text(max_size=60), st.sampled_from(ENGINES))
def test_a_name_is_accepted_only_if_it_matches_the_rule(name: str, engine: str) -> None:
    try:
        assert validate_name(name, engine) == name
    except InvalidDatabaseName as exc:
        assert exc.status == 422
        assert NAME_PATTERN.fullmatch(name) is None or name in {
            "postgres", "template0", "template1", "mysql", "sys", "redis", "mariadb",
            "memcached", "admin", "berth", "default", "root", "system", "test", "public",
            "pg-catalog", "information-schema", "performance-schema",
        }  # fmt: skip
    else:
        assert NAME_PATTERN.fullmatch(name) and name.isascii() and len(name) <= 40


@given(st.from_regex(NAME_PATTERN, fullmatch=True))
def test_names_of_the_pattern_pass_unless_reserved(name: str) -> None:
    try:
        validate_name(name, "postgres")
    except InvalidDatabaseName as exc:
        assert "reserved" in exc.message


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("engine", ENGINES)
def test_hostile_names_are_refused_on_every_engine(name: object, engine: str) -> None:
    with pytest.raises(InvalidDatabaseName):
        validate_name(name, engine)


@pytest.mark.parametrize("engine", ["", "mongodb", "Postgres", "postgres ", None, 3])
def test_unknown_engines_are_refused(engine: object) -> None:
    with pytest.raises(UnknownEngine) as caught:
        parse_engine(engine)
    assert caught.value.status == 422 and caught.value.code == "unknown_engine"


@given(ids, ids)
def test_server_names_are_safe_opaque_and_fixed_length(tenant: str, database: str) -> None:
    names = server_names(tenant, database)
    for value in (names.database, names.user, names.owner, names.key_prefix):
        assert SAFE.fullmatch(value) and len(value) <= 27
        assert tenant not in value[2:] or len(tenant) < 6  # a hash, not the id
    assert len({names.database, names.user, names.owner}) == 3
    assert names.key_prefix == names.database + ":"


@given(ids, ids, ids, ids)
def test_different_ids_give_different_names(t1: str, d1: str, t2: str, d2: str) -> None:
    if (t1, d1) != (t2, d2):
        assert server_names(t1, d1) != server_names(t2, d2)
    else:
        assert server_names(t1, d1) == server_names(t2, d2)


def test_the_separator_cannot_make_two_pairs_collide() -> None:
    assert server_names("ab", "c") != server_names("a", "bc")


@pytest.mark.parametrize("bad", ["", "a/b", "a_b", "x" * 65, "é"])
def test_ids_that_are_not_berths_are_a_bug(bad: str) -> None:
    with pytest.raises(ValueError):
        server_names(bad, "abc")
    with pytest.raises(ValueError):
        server_names("abc", bad)


def test_passwords_are_random_and_url_safe() -> None:
    passwords = {new_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", p) for p in passwords)
