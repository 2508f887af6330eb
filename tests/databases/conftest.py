"""One real server per engine for the whole session (started on first use), and a fresh
account per test on it, dropped afterwards whatever the test did."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.databases import servers


def _serve(cm: object) -> Iterator[str]:
    try:
        url = cm.__enter__()  # type: ignore[attr-defined]
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"the test database server did not start: {exc}", pytrace=False)
    try:
        yield url
    finally:
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    yield from _serve(servers.postgres_server())


@pytest.fixture(scope="session")
def redis_admin_url() -> Iterator[str]:
    yield from _serve(servers.redis_server())


@pytest.fixture(scope="session")
def mariadb_admin_url() -> Iterator[str]:
    yield from _serve(servers.mariadb_server())


def unique_id() -> str:
    return secrets.token_hex(8)
