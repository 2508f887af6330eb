"""The admin URL rules (pure): what db-servers add accepts, and that no error or log line of a
server's ever carries the admin's password."""

from __future__ import annotations

import pytest

from berth.databases.errors import DatabaseServerUnavailable
from berth.errors import InvalidInput
from berth.services.databases_access import ServerAddress, operator_call, parse_admin_url, scrub


@pytest.mark.parametrize(
    ("engine", "url", "expected"),
    [
        ("postgres", "postgresql://admin:pw@db.internal:6543/postgres", ("db.internal", 6543)),
        ("postgres", "postgres://admin:pw@10.0.0.5/postgres", ("10.0.0.5", 5432)),
        ("mariadb", "mysql://admin:pw@[::1]:3307/", ("::1", 3307)),
        ("mariadb", "mariadb://admin:pw@maria/", ("maria", 3306)),
        ("redis", "redis://admin:pw@cache:6380/0", ("cache", 6380)),
        ("redis", "rediss://admin:pw@cache/0", ("cache", 6379)),
    ],
)
def test_well_formed_admin_urls(engine: str, url: str, expected: tuple[str, int]) -> None:
    assert parse_admin_url(engine, url) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("engine", "url"),
    [
        ("postgres", "mysql://admin:pw@h/"),
        ("redis", "http://admin:pw@h/"),
        ("postgres", "postgresql://h:5432/"),
        ("postgres", "postgresql://admin:pw@:5432/"),
        ("postgres", "postgresql://admin:pw@h:0x10/"),
        ("postgres", "postgresql://admin:pw@h/db?sslmode=disable"),
        ("postgres", "postgresql://admin:pw@h/db#x"),
        ("postgres", "postgresql://admin:p\nw@h/"),
        ("postgres", "postgresql://admin:pw@h/" + "x" * 2000),
        ("memcached", "memcached://h:11211"),
        ("postgres", None),
    ],
)
def test_malformed_admin_urls_are_refused_without_echo(engine: str, url: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_admin_url(engine, url)  # type: ignore[arg-type]
    assert "pw" not in caught.value.message and "p\nw" not in caught.value.message


def test_scrub_removes_the_url_and_its_password_in_every_spelling() -> None:
    url = "postgresql://admin:s%40cret%2Fx@h:5432/postgres"
    text = f"failed for {url}: password s%40cret%2Fx (that is s@cret/x) rejected"
    cleaned = scrub(text, url)
    assert "cret" not in cleaned and cleaned.count("***") == 3


def test_an_operator_sees_the_servers_reason_without_the_password() -> None:
    url = "redis://admin:topsecret@h:6379/0"
    with pytest.raises(DatabaseServerUnavailable) as caught:
        with operator_call(ServerAddress("redis", url, "h", 6379)):
            raise DatabaseServerUnavailable(f"Redis admin connection failed: {url} topsecret")
    assert "topsecret" not in caught.value.message
    assert caught.value.message.startswith("Redis admin connection failed")
