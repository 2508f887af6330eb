"""Pure rules of a lossless rotation: which login the next password goes to, and when the old
credential may be revoked.

A rotation makes a second credential valid before any app gets it, and revokes the old one
only once every attached app serves a release with the new URL (no instance of an older
release alive), or once the grace period ends (a deploy that never finishes must not keep the
old password forever). Each engine keeps two credentials its own way:

- PostgreSQL and MariaDB have one password per login, so an account has two logins that take
  turns, ``<user>a`` and ``<user>b`` (``logins``), both with the account's rights: PostgreSQL
  members of the account's role (``names.user``, which owns the database and what they create,
  by ``ALTER ROLE ... SET role``), MariaDB users with the same grants. A database made before
  rotations overlapped logs in as ``names.user`` itself; its first rotation moves it to ``a``.
- Redis users take several passwords: the new one is added, the old one removed later.

The names stay lowercase letters and digits (27 characters), as ``names.server_names`` says.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from berth.databases.names import ServerNames

SLOTS: Final = ("a", "b")


def logins(names: ServerNames) -> tuple[str, str, str]:
    """Every login an account may have: its first (``names.user``) and the pair that takes
    turns from the first rotation on."""
    return names.user, names.user + SLOTS[0], names.user + SLOTS[1]


def current_login(names: ServerNames, login: str) -> str:
    """The login the URL names: ``login`` as stored, or the first one when none is stored."""
    if login and login not in logins(names):
        raise ValueError("a login is one of the account's own")
    return login or names.user


def next_login(names: ServerNames, login: str) -> str:
    """The login the next password goes to: the other of the pair (``a`` after the first)."""
    _, a, b = logins(names)
    return b if current_login(names, login) == a else a


@dataclass(frozen=True)
class AppServing:
    """What an attached app runs, as far as revocation cares: whether the release it serves
    has the new URL, and whether any instance of a release without it is still alive."""

    serves_new_url: bool
    old_instances_alive: bool


def revocation_due(
    retiring: str, retire_after: float | None, apps: Iterable[AppServing], now: float
) -> bool:
    """Whether the old credential may go now: every attached app serves the new URL and runs
    no instance with the old one, or the grace period is over. Nothing pending: never."""
    if not retiring:
        return False
    if retire_after is not None and now >= retire_after:
        return True
    return all(app.serves_new_url and not app.old_instances_alive for app in apps)
