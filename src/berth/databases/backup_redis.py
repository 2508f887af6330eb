"""Redis backups: the prefix's keys by SCAN + DUMP/PTTL, as the admin (the tenant's user has
neither SCAN nor RESTORE), into a file of Berth's own; restored by RESTORE under a prefix.

The file (version 1), every integer big-endian::

    b"BERTHREDIS\\x00\\x01"
    per key:  u32 name length, name (without the prefix), i64 ttl ms (0: none),
              u32 value length, value (DUMP's serialization)
    b"END", u64 key count

Keys are stored without their prefix and given the target's on restore, so nothing in a file
can name a key outside the database it is restored into. Bounded: at most ``max_keys`` keys and
``max_bytes`` of values, or the backup fails (it never silently keeps part).

The keys are read in batches (Redis has no snapshot to share); the fingerprint is of what was
written: the key count and the sha256 of the sorted sha256s of (name, value), where the value
is read logically (a set's members sorted, a hash's fields sorted, ...): DUMP's bytes are not
canonical (a restored set may iterate in another order). Each key's DUMP, PTTL and logical
read run in one MULTI/EXEC, so they agree even while the tenant writes. Verification restores
into the scratch prefix, reads it back the same way and compares.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import redis

from berth.databases.backup import BackupFailed, Fingerprint, scratch_names
from berth.databases.names import Engine
from berth.databases.provider import Account

MAGIC = b"BERTHREDIS\x00\x01"
TRAILER = b"END"
BATCH = 1000


def _command(r: redis.Redis, *args: Any) -> Any:
    return r.execute_command(*args)  # type: ignore[no-untyped-call]


def _digest(entries: list[bytes]) -> str:
    return hashlib.sha256(b"".join(sorted(entries))).hexdigest()


def _entry(name: bytes, value: bytes) -> bytes:
    return hashlib.sha256(struct.pack(">I", len(name)) + name + value).digest()


def _items(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


# One batch of keys read in one script, so each key's type, DUMP, PTTL and logical value
# agree (a script runs atomically), in one round trip. Strings and lists are ordered, so their
# DUMP is canonical; a set's, a hash's or a zset's iterates in an order of its own.
READ_BATCH = """
local out = {}
for i, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  local v = false
  if t == 'set' then v = redis.call('SMEMBERS', k)
  elseif t == 'hash' then v = redis.call('HGETALL', k)
  elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  elseif t == 'stream' then v = redis.call('XRANGE', k, '-', '+') end
  out[i] = {t, redis.call('DUMP', k), redis.call('PTTL', k), v}
end
return out
"""


def _pairs(flat: list[bytes]) -> list[tuple[bytes, bytes]]:
    return sorted(zip(flat[0::2], flat[1::2], strict=True))


def canonical(kind: bytes, dumped: bytes, value: Any) -> bytes:
    """The value in one form whatever its encoding or iteration order."""
    if kind == b"set":
        return b"S" + _items(sorted(bytes(v) for v in value))
    if kind in (b"hash", b"zset"):
        return kind[:1] + _items([bytes(x) for pair in _pairs(value) for x in pair])
    if kind == b"stream":
        return b"x" + _items([bytes(i) + _items([bytes(x) for x in f]) for i, f in value])
    return kind + b":" + dumped  # strings, lists, modules' types: their serialization


def write_record(out: BinaryIO, name: bytes, ttl_ms: int, value: bytes) -> None:
    out.write(struct.pack(">I", len(name)) + name + struct.pack(">qI", ttl_ms, len(value)))
    out.write(value)


def read_records(path: Path, max_keys: int) -> Iterator[tuple[bytes, int, bytes]]:
    """The file's records; a file not of this format, cut short or with a wrong count is a
    ``BackupFailed`` (read to its end before the last record is trusted)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise BackupFailed("the file is not a Berth Redis backup (version 1)")
        count = 0
        while True:
            head = f.read(3)
            if head == TRAILER:
                tail = f.read(8)
                if len(tail) != 8 or f.read(1):
                    raise BackupFailed("the file's end is damaged")
                if struct.unpack(">Q", tail)[0] != count:
                    raise BackupFailed("the file holds a different number of keys than it says")
                return
            rest = f.read(1)
            if len(head) + len(rest) < 4:
                raise BackupFailed("the file is cut short")
            (name_len,) = struct.unpack(">I", head + rest)
            if name_len > size:
                raise BackupFailed("the file is damaged (a key longer than the file)")
            name = f.read(name_len)
            fixed = f.read(12)
            if len(name) != name_len or len(fixed) != 12:
                raise BackupFailed("the file is cut short")
            ttl_ms, value_len = struct.unpack(">qI", fixed)
            value = f.read(value_len) if value_len <= size else b""
            if len(value) != value_len or ttl_ms < 0:
                raise BackupFailed("the file is cut short or damaged")
            count += 1
            if count > max_keys:
                raise BackupFailed(f"the file holds more than {max_keys} keys")
            yield name, ttl_ms, value


class RedisBackups:
    engine: Engine = "redis"

    def __init__(
        self, admin_url: str, *, max_keys: int = 1_000_000, max_bytes: int = 4 << 30
    ) -> None:
        self._url, self._max_keys, self._max_bytes = admin_url, max_keys, max_bytes

    @contextmanager
    def _admin(self) -> Iterator[redis.Redis]:
        client = redis.Redis.from_url(self._url, socket_timeout=60, socket_connect_timeout=10)
        try:
            yield client
        except redis.RedisError as exc:
            raise BackupFailed(f"Redis: {exc}") from exc
        finally:
            client.close()

    def _keys(self, r: redis.Redis, prefix: str) -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        for key in r.scan_iter(match=f"{prefix}*", count=BATCH):
            batch.append(key)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _batch(self, r: redis.Redis, batch: list[bytes]) -> list[tuple[bytes, int, bytes, bytes]]:
        """(key, ttl, DUMP, canonical value) of each key still there, read atomically."""
        out = []
        for key, answer in zip(
            batch, _command(r, "EVAL", READ_BATCH, len(batch), *batch), strict=True
        ):
            kind, value, ttl, logical = answer
            if value is None or int(ttl) == -2:
                continue  # gone between SCAN and the read
            kind, value = bytes(kind), bytes(value)
            out.append((key, max(int(ttl), 0), value, canonical(kind, value, logical)))
        return out

    def _values(self, r: redis.Redis, prefix: str) -> Iterator[tuple[bytes, int, bytes, bytes]]:
        """(name without prefix, ttl ms or 0, DUMP, canonical value) of every key, bounded."""
        cut, keys, total = len(prefix.encode()), 0, 0
        for batch in self._keys(r, prefix):
            for key, ttl, value, logical in self._batch(r, batch):
                keys, total = keys + 1, total + len(value)
                if keys > self._max_keys or total > self._max_bytes:
                    raise BackupFailed(
                        f"the database has more than {self._max_keys} keys or "
                        f"{self._max_bytes >> 20} MB: too big to back up this way"
                    )
                yield key[cut:], ttl, value, logical

    def _delete_prefix(self, r: redis.Redis, prefix: str) -> None:
        for batch in self._keys(r, prefix):
            r.unlink(*batch)

    def _load(self, r: redis.Redis, prefix: str, path: Path) -> None:
        pipe, pending = r.pipeline(transaction=False), 0
        for name, ttl, value in read_records(path, self._max_keys):
            pipe.restore(prefix.encode() + name, ttl, value, replace=True)
            pending += 1
            if pending >= BATCH:
                pipe.execute()
                pending = 0
        pipe.execute()

    def _fingerprint(self, r: redis.Redis, prefix: str) -> Fingerprint:
        entries = [_entry(name, logical) for name, _, _, logical in self._values(r, prefix)]
        return {"keys": [len(entries), _digest(entries)]}

    # -- the interface -----------------------------------------------------------------------

    def dump(self, account: Account, path: Path) -> Fingerprint:
        entries: list[bytes] = []
        with self._admin() as r, open(path, "wb") as out:
            out.write(MAGIC)
            for name, ttl, value, logical in self._values(r, account.names.key_prefix):
                write_record(out, name, ttl, value)
                entries.append(_entry(name, logical))
            out.write(TRAILER + struct.pack(">Q", len(entries)))
        return {"keys": [len(entries), _digest(entries)]}

    def verify(self, account: Account, path: Path) -> Fingerprint:
        prefix = scratch_names(account).key_prefix
        with self._admin() as r:
            try:
                self._delete_prefix(r, prefix)
                self._load(r, prefix, path)
                return self._fingerprint(r, prefix)
            finally:
                self._delete_prefix(r, prefix)

    def restore(self, source: Account, target: Account, path: Path) -> None:
        """The target's keys go, then the file's are restored under its prefix. Not atomic:
        a restore that fails half-way leaves part of the keys (said so)."""
        prefix = target.names.key_prefix
        # The whole file is checked before anything of the target is removed.
        for _ in read_records(path, self._max_keys):
            pass
        with self._admin() as r:
            self._delete_prefix(r, prefix)
            try:
                self._load(r, prefix, path)
            except (BackupFailed, redis.RedisError) as exc:
                raise BackupFailed(f"Redis: {exc} (the database is only partly restored)") from None
