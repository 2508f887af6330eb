"""The pure rules of a lossless rotation (berth.databases.rotation): which login the next
password goes to, and when the old credential may be revoked."""

from __future__ import annotations

import pytest

from berth.databases.names import server_names
from berth.databases.rotation import AppServing, current_login, logins, next_login, revocation_due

NAMES = server_names("tenant1", "db1")
SERVING = AppServing(serves_new_url=True, old_instances_alive=False)
OLD_URL = AppServing(serves_new_url=False, old_instances_alive=True)
STOPPING = AppServing(serves_new_url=True, old_instances_alive=True)


def test_the_pair_takes_turns_from_the_first_login() -> None:
    first, a, b = logins(NAMES)
    assert (a, b) == (first + "a", first + "b") and first == NAMES.user
    assert all(name.isalnum() and name.islower() and len(name) <= 63 for name in (a, b))
    assert current_login(NAMES, "") == first
    assert next_login(NAMES, "") == a  # a database made before moves to the pair
    assert next_login(NAMES, a) == b
    assert next_login(NAMES, b) == a


def test_a_login_not_the_accounts_is_refused() -> None:
    other = server_names("tenant2", "db1")
    for login in (other.user + "a", "postgres", "bu'; DROP ROLE x; --"):
        with pytest.raises(ValueError):
            current_login(NAMES, login)


@pytest.mark.parametrize(
    ("apps", "now", "due"),
    [
        ([SERVING, SERVING], 100.0, True),  # every app serves the new URL
        ([], 100.0, True),  # nothing attached: nothing uses it
        ([SERVING, OLD_URL], 100.0, False),  # one app still on the old release
        ([STOPPING], 100.0, False),  # the new release serves, an old instance still runs
        ([OLD_URL], 999.0, False),  # a second before the grace period ends
        ([OLD_URL], 1000.0, True),  # the grace period is over: whatever the apps do
    ],
)
def test_revocation_is_due_once_every_app_serves_or_the_grace_ends(
    apps: list[AppServing], now: float, due: bool
) -> None:
    assert revocation_due("old", 1000.0, apps, now) is due


def test_nothing_pending_is_never_due() -> None:
    assert not revocation_due("", 0.0, [SERVING], 10.0)
