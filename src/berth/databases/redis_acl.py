"""Redis: an ACL user per tenant database, confined to its own key prefix (Redis 7 ACLs).

The user's rule (``acl_rule``) allows every command except: the ``@dangerous`` and ``@admin``
categories (FLUSHALL, FLUSHDB, CONFIG, DEBUG, MODULE, KEYS, SHUTDOWN, ACL, MONITOR, CLIENT
KILL/LIST, SWAPDB, MIGRATE, RESTORE, INFO, SLOWLOG, SORT, ...); the commands that name no key
but reveal or reach others' (SCAN, RANDOMKEY, DBSIZE, PUBSUB CHANNELS, CLIENT TRACKING, whose
broadcast mode reports every key changed); other logical databases (SELECT but SELECT 0, MOVE,
COPY, which takes a DB option); server-wide state (FUNCTION, whose FLUSH would remove others'
functions, SCRIPT FLUSH/KILL/DEBUG, MEMORY but MEMORY USAGE). Keys (``~``) and channels (``&``)
are only those under the prefix; Redis checks them for every command, including the keys a
script touches (EVAL runs with its caller's ACL) and both names of a RENAME.

What a tenant can still see: the server's version (HELLO), its own connections, and nothing
of other users' keys, channels or commands. What it shares: the server's memory (``maxmemory``
is the server's), and the script cache (SCRIPT LOAD), which the prefix does not bound.

Usage is the memory of the prefix's keys (SCAN MATCH + MEMORY USAGE as the admin, bounded by
``max_keys``): Redis' memory is its storage, so that is what the size quota and the storage bill
count. Over quota the user loses ``@write`` but the commands that free memory (DEL, UNLINK, the
pops and removes, EXPIRE): a write fails with ``NOPERM``. A rule change applies at once to
sessions already open.
Rotation without a failed login: a Redis user takes several passwords, so the new one is
added (``#<new>``) before any app has it and the old ones are removed later (``!<old>``).
Redis does not say which password a connection authenticated with, so a revocation cannot end
the sessions opened with the old one (deleting the user, or ``CLIENT KILL USER``, would end the
new ones too): they go when the old release's instances stop.
Passwords are sent as their SHA-256 (``#``), never in clear. Users live in the server's ACL
file (``ACL SAVE`` after every change), so they survive a restart; ``check`` refuses a server
that has none.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis

from berth.databases.errors import (
    DatabaseExists,
    DatabaseNotFound,
    DatabaseServerError,
    DatabaseServerUnavailable,
    DatabaseServerUnsafe,
)
from berth.databases.names import Engine, new_password
from berth.databases.password_hashes import redis_password_hash
from berth.databases.provider import Account, Credentials, Rotated, Usage

_DENIED = (
    "-@dangerous",
    "-@admin",
    "-select",
    "+select|0",
    "-move",
    "-swapdb",
    "-copy",
    "-scan",
    "-randomkey",
    "-dbsize",
    "-pubsub",
    "-function",
    "-fcall",
    "-fcall_ro",
    "-script|flush",
    "-script|kill",
    "-script|debug",
    "-memory",
    "+memory|usage",
    "-client",
    "+client|id",
    "+client|getname",
    "+client|setname",
    "+client|info",
    "+client|reply",
)
# Client libraries announce themselves with it (Redis 7.2+); absent from older servers.
_OPTIONAL = ("+client|setinfo",)
# Over quota: the writes that only take memory away stay allowed, so a tenant can get back under.
_FREEING = (
    "+del",
    "+unlink",
    "+getdel",
    "+hdel",
    "+srem",
    "+zrem",
    "+zremrangebyscore",
    "+zremrangebyrank",
    "+zremrangebylex",
    "+lpop",
    "+rpop",
    "+lrem",
    "+ltrim",
    "+spop",
    "+zpopmin",
    "+zpopmax",
    "+xdel",
    "+xtrim",
    "+expire",
    "+pexpire",
    "+expireat",
    "+pexpireat",
)


_HASH = re.compile(r"[0-9a-f]{64}")


def acl_rule(
    prefix: str, password_hashes: list[str], *, write_allowed: bool, optional: tuple[str, ...] = ()
) -> list[str]:
    """The whole rule of a tenant's user, from ``reset``: applying it is idempotent."""
    if not prefix or not all(c.isalnum() for c in prefix.rstrip(":")):
        raise ValueError("a key prefix is ASCII letters and digits (no glob characters)")
    rule = ["reset", "on", *(f"#{h}" for h in password_hashes)]
    rule += [f"~{prefix}*", f"&{prefix}*", "+@all", *_DENIED, *optional]
    if not write_allowed:
        rule += ["-@write", *_FREEING]
    return rule


def _command(r: redis.Redis, *args: str) -> Any:
    return r.execute_command(*args)  # type: ignore[no-untyped-call]


class RedisProvider:
    engine: Engine = "redis"

    def __init__(
        self,
        admin_url: str,
        *,
        tenant_host: str | None = None,
        tenant_port: int | None = None,
        max_keys: int = 1_000_000,
    ) -> None:
        self._url = admin_url
        parts = urlsplit(admin_url)
        self._tenant_host = tenant_host or parts.hostname or "127.0.0.1"
        self._tenant_port = tenant_port or parts.port or 6379
        self._max_keys = max_keys

    @contextmanager
    def _admin(self) -> Iterator[redis.Redis]:
        client: redis.Redis = redis.Redis.from_url(
            self._url, decode_responses=True, socket_timeout=30, socket_connect_timeout=10
        )
        try:
            yield client
        except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as exc:
            raise DatabaseServerUnavailable(f"Redis admin connection failed: {exc}") from exc
        except redis.RedisError as exc:
            raise DatabaseServerError(f"Redis refused a command: {exc}") from exc
        finally:
            client.close()

    def _optional(self, r: redis.Redis) -> tuple[str, ...]:
        # redis-py cannot parse COMMAND INFO of an unknown command; ACL CAT lists what exists.
        known = set(r.acl_cat("connection"))
        return tuple(rule for rule in _OPTIONAL if rule[1:] in known)

    def _user(self, r: redis.Redis, name: str) -> dict[str, Any] | None:
        user: dict[str, Any] | None = r.acl_getuser(name)
        return user

    @staticmethod
    def _save(r: redis.Redis) -> None:
        # Without it, a restart of the server would forget every tenant's user.
        _command(r, "ACL", "SAVE")

    def _apply(self, r: redis.Redis, account: Account, hashes: list[str], writes: bool) -> None:
        rule = acl_rule(
            account.names.key_prefix, hashes, write_allowed=writes, optional=self._optional(r)
        )
        _command(r, "ACL", "SETUSER", account.names.user, *rule)
        self._save(r)

    # -- the interface -----------------------------------------------------------------------

    def check(self) -> None:
        with self._admin() as r:
            r.ping()
            default = self._user(r, "default")
            flags = set(default.get("flags", [])) if default else set()
            if "on" in flags and "nopass" in flags:
                raise DatabaseServerUnsafe(
                    "the Redis server's default user is on without a password: anyone could "
                    "use it; turn it off (user default off) or give it a password"
                )
            if not r.config_get("aclfile").get("aclfile"):
                raise DatabaseServerUnsafe(
                    "the Redis server has no ACL file (aclfile): tenants' users would be lost "
                    "when it restarts"
                )

    def prepare(self) -> None:
        """Nothing to prepare: every tenant user is made whole by its own rule."""
        self.check()

    def exists(self, account: Account) -> bool:
        with self._admin() as r:
            if self._user(r, account.names.user) is not None:
                return True
            return self._any_key(r, account.names.key_prefix)

    def _keys(self, r: redis.Redis, prefix: str) -> Iterator[str]:
        yield from r.scan_iter(match=f"{prefix}*", count=1000)

    def _any_key(self, r: redis.Redis, prefix: str) -> bool:
        return next(iter(self._keys(r, prefix)), None) is not None

    def credentials(self, account: Account, password: str) -> Credentials:
        return Credentials(
            engine="redis",
            host=self._tenant_host,
            port=self._tenant_port,
            database=account.names.database,
            username=account.names.user,
            password=password,
            key_prefix=account.names.key_prefix,
        )

    def create(self, account: Account) -> Credentials:
        if self.exists(account):
            raise DatabaseExists("the database already exists on its server")
        password = new_password()
        with self._admin() as r:
            self._apply(r, account, [redis_password_hash(password)], writes=True)
        return self.credentials(account, password)

    def drop(self, account: Account) -> None:
        with self._admin() as r:
            # Deleting the user disconnects its clients first, so nothing writes meanwhile.
            _command(r, "ACL", "DELUSER", account.names.user)
            self._save(r)
            batch: list[str] = []
            for key in self._keys(r, account.names.key_prefix):
                batch.append(key)
                if len(batch) >= 500:
                    r.unlink(*batch)
                    batch.clear()
            if batch:
                r.unlink(*batch)

    def rotate_password(self, account: Account) -> Credentials:
        password = new_password()
        with self._admin() as r:
            if self._user(r, account.names.user) is None:
                raise DatabaseNotFound("the database's user is not on its server")
            _command(
                r,
                "ACL",
                "SETUSER",
                account.names.user,
                "resetpass",
                f"#{redis_password_hash(password)}",
            )
            self._save(r)
        return self.credentials(account, password)

    def add_credential(self, account: Account) -> Rotated:
        password = new_password()
        digest = redis_password_hash(password)
        with self._admin() as r:
            user = self._user(r, account.names.user)
            if user is None:
                raise DatabaseNotFound("the database's user is not on its server")
            old = [h for h in user.get("passwords", []) if h != digest]
            _command(r, "ACL", "SETUSER", account.names.user, f"#{digest}")
            self._save(r)
        return Rotated(self.credentials(account, password), retiring=",".join(old))

    def revoke_credential(self, account: Account, retiring: str) -> None:
        hashes = [h for h in retiring.split(",") if h]
        if not all(_HASH.fullmatch(h) for h in hashes):
            raise ValueError("a retiring Redis credential is SHA-256 hex hashes")
        with self._admin() as r:
            user = self._user(r, account.names.user)
            if user is None:
                return
            held = set(user.get("passwords", []))
            # Never the last one: the user would be left with no password (a bug elsewhere).
            gone = [h for h in hashes if h in held]
            if gone and len(held) > len(gone):
                _command(r, "ACL", "SETUSER", account.names.user, *(f"!{h}" for h in gone))
                self._save(r)

    def usage(self, account: Account) -> Usage:
        with self._admin() as r:
            if self._user(r, account.names.user) is None:
                raise DatabaseNotFound("the database's user is not on its server")
            total, batch = 0, []
            for seen, key in enumerate(self._keys(r, account.names.key_prefix), start=1):
                batch.append(key)
                if len(batch) >= 500:
                    total += self._memory(r, batch)
                    batch = []
                if seen >= self._max_keys:
                    break
            total += self._memory(r, batch)
            clients = r.client_list()
            connections = sum(1 for c in clients if c.get("user") == account.names.user)
        return Usage(bytes_used=total, connections=connections)

    @staticmethod
    def _memory(r: redis.Redis, keys: list[str]) -> int:
        if not keys:
            return 0
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(int(v or 0) for v in pipe.execute())  # a key gone meanwhile counts 0

    def set_write_allowed(self, account: Account, allowed: bool) -> None:
        with self._admin() as r:
            user = self._user(r, account.names.user)
            if user is None:
                raise DatabaseNotFound("the database's user is not on its server")
            self._apply(r, account, list(user.get("passwords", [])), writes=allowed)
