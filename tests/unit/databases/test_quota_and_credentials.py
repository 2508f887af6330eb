"""The quota decision, the credentials' URL shapes and the password verifiers (pure)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.databases.password_hashes import (
    mysql_native_password_hash,
    postgres_scram_verifier,
    redis_password_hash,
)
from berth.databases.provider import Account, Credentials
from berth.databases.quota import write_allowed


@given(st.integers(0, 10**12), st.integers(1, 10**12), st.booleans())
def test_over_the_limit_never_writes_and_well_under_always_does(
    used: int, limit: int, allowed: bool
) -> None:
    decision = write_allowed(used, limit, currently_allowed=allowed)
    if used > limit:
        assert decision is False
    elif used <= int(limit * 0.95):
        assert decision is True
    else:
        assert decision is allowed  # between 95% and 100%: no flapping


def test_no_limit_means_no_quota() -> None:
    assert write_allowed(10**15, 0, currently_allowed=False)


def test_urls_per_engine() -> None:
    pg = Credentials("postgres", "10.0.0.5", 5432, "bdx", "bux", "p@ss/word")
    assert pg.url == "postgresql://bux:p%40ss%2Fword@10.0.0.5:5432/bdx"
    assert pg.env() == {"DATABASE_URL": pg.url}
    my = Credentials("mariadb", "::1", 3306, "bdx", "bux", "pw")
    assert my.url == "mysql://bux:pw@[::1]:3306/bdx"
    rd = Credentials("redis", "127.0.0.1", 6379, "bdx", "bux", "pw", key_prefix="bdx:")
    assert rd.url == "redis://bux:pw@127.0.0.1:6379/0"
    assert rd.env() == {"REDIS_URL": rd.url, "REDIS_KEY_PREFIX": "bdx:"}
    assert "pw" not in repr(rd)


def test_an_account_checks_its_name_and_limits() -> None:
    with pytest.raises(ValueError):
        Account("t1", "d1", "ok", "postgres", connection_limit=0)
    account = Account("t1", "d1", "ok", "postgres")
    assert account.names.database.startswith("bd")


def test_the_scram_verifier_is_postgres_format() -> None:
    salt = b"0123456789abcdef"
    verifier = postgres_scram_verifier("secret", salt=salt, iterations=4096)
    head, keys = verifier.rsplit("$", 1)
    assert head == "SCRAM-SHA-256$4096:" + base64.b64encode(salt).decode()
    salted = hashlib.pbkdf2_hmac("sha256", b"secret", salt, 4096)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    assert keys.split(":")[0] == base64.b64encode(stored).decode()
    assert postgres_scram_verifier("secret") != postgres_scram_verifier("secret")  # salted


def test_the_redis_hash_is_sha256_hex() -> None:
    assert redis_password_hash("pw") == hashlib.sha256(b"pw").hexdigest()


def test_the_mysql_hash_is_what_mariadb_computes() -> None:
    # SELECT PASSWORD('password') on MariaDB.
    assert mysql_native_password_hash("password") == "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
