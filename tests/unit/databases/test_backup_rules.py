"""The pure parts of backups: retention per plan (never the last verified one), when a backup
is due, the Redis backup file's format (damage of every kind refused), the fingerprints'
comparison, and that backup paths are made of ids only."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from berth.databases.backup import BackupFailed, compare
from berth.databases.backup_policy import BackupFacts, BackupPolicy, is_due, policy_for, to_prune
from berth.databases.backup_redis import MAGIC, TRAILER, canonical, read_records, write_record
from berth.services.databases_backups import backup_file
from berth.settings import Settings
from berth.store.tables import DatabaseBackup

DAY = 86400.0
POLICY = BackupPolicy(every_seconds=DAY, keep_verified=3, keep_failed=2)


def _b(
    i: int, state: str = "verified", kind: str = "scheduled", keep: float | None = None
) -> BackupFacts:
    return BackupFacts(f"b{i:02d}", kind, state, created_at=i * DAY, keep_until=keep)


def test_retention_keeps_the_newest_verified_and_failed() -> None:
    backups = [_b(i) for i in range(6)] + [_b(10 + i, "failed") for i in range(4)]
    assert sorted(to_prune(backups, POLICY, now=20 * DAY)) == ["b00", "b01", "b02", "b10", "b11"]


def test_the_last_verified_backup_is_never_pruned() -> None:
    old = _b(0)
    failures = [_b(i, "failed") for i in range(1, 30)]
    pruned = to_prune([old, *failures], BackupPolicy(DAY, keep_verified=0, keep_failed=0), 1e9)
    assert "b00" not in pruned and len(pruned) == 29
    # even a final one past its time, when it is the only verified one left
    assert to_prune([_b(0, kind="final", keep=5.0)], POLICY, now=1e9) == []


def test_a_final_backup_stays_until_its_time_and_is_not_counted() -> None:
    final = _b(9, kind="final", keep=30 * DAY)
    backups = [_b(i) for i in range(5)] + [final, _b(20)]
    assert "b09" not in to_prune(backups, POLICY, now=29 * DAY)
    assert "b09" in to_prune(backups, POLICY, now=31 * DAY)
    assert sorted(to_prune(backups, POLICY, now=29 * DAY)) == ["b00", "b01", "b02"]


def test_running_and_pending_ones_are_never_touched() -> None:
    backups = [_b(1, "running"), _b(2, "pending"), *[_b(10 + i) for i in range(5)]]
    assert not {"b01", "b02"} & set(to_prune(backups, POLICY, now=99 * DAY))


def test_due_per_plan() -> None:
    assert is_due(None, POLICY, 0.0)
    assert not is_due(10.0, POLICY, 10.0 + DAY - 1)
    assert is_due(10.0, POLICY, 10.0 + DAY)
    assert policy_for("dedicated").every_seconds < policy_for("shared").every_seconds
    assert policy_for("unknown") == policy_for("shared")


def _file(
    tmp_path: Path, records: list[tuple[bytes, int, bytes]], count: int | None = None
) -> Path:
    out = io.BytesIO()
    out.write(MAGIC)
    for name, ttl, value in records:
        write_record(out, name, ttl, value)
    out.write(TRAILER + struct.pack(">Q", len(records) if count is None else count))
    path = tmp_path / "r.dump"
    path.write_bytes(out.getvalue())
    return path


def test_the_redis_file_reads_back(tmp_path: Path) -> None:
    records = [(b"a", 0, b"\x00v1"), (b"\xffbin:\x00key", 1500, b"x" * 1000), (b"", 0, b"")]
    assert list(read_records(_file(tmp_path, records), max_keys=10)) == records


@pytest.mark.parametrize(
    "damage",
    ["magic", "cut", "cut-in-trailer", "count", "extra", "too-many", "huge-length"],
)
def test_a_damaged_redis_file_is_refused(tmp_path: Path, damage: str) -> None:
    records = [(b"k%d" % i, 0, b"value") for i in range(5)]
    path = _file(tmp_path, records, count=4 if damage == "count" else None)
    data = path.read_bytes()
    if damage == "magic":
        data = b"REDIS0011" + data[9:]
    elif damage == "cut":
        data = data[: len(data) // 2]
    elif damage == "cut-in-trailer":
        data = data[:-3]
    elif damage == "extra":
        data += b"\x00"
    elif damage == "huge-length":
        data = data[: len(MAGIC)] + struct.pack(">I", 2**31) + data[len(MAGIC) + 4 :]
    path.write_bytes(data)
    with pytest.raises(BackupFailed):
        list(read_records(path, max_keys=4 if damage == "too-many" else 10))


def test_canonical_values_ignore_order_but_not_content() -> None:
    assert canonical(b"set", b"d1", [b"x", b"y"]) == canonical(b"set", b"d2", [b"y", b"x"])
    flat, other = [b"a", b"1", b"b", b"2"], [b"b", b"2", b"a", b"1"]
    assert canonical(b"hash", b"d1", flat) == canonical(b"hash", b"d2", other)
    assert canonical(b"hash", b"", flat) != canonical(b"zset", b"", flat)
    assert canonical(b"set", b"", [b"a", b"bc"]) != canonical(b"set", b"", [b"ab", b"c"])
    # ordered types: their serialization is their content
    assert canonical(b"list", b"d1", None) != canonical(b"list", b"d2", None)
    assert canonical(b"string", b"d1", None) != canonical(b"list", b"d1", None)


def test_compare_says_what_differs() -> None:
    source = {"t1": [3, "aa"], "t2": [1, "bb"]}
    assert compare(source, dict(source)) == ""
    assert "lacks t2" in compare(source, {"t1": [3, "aa"]})
    assert "has more: t3" in compare(source, {**source, "t3": [0, ""]})
    assert "t1 (rows 3 -> 2)" in compare(source, {"t1": [2, "aa"], "t2": [1, "bb"]})
    assert "content differs" in compare(source, {"t1": [3, "zz"], "t2": [1, "bb"]})


def test_backup_paths_are_ids_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    row = DatabaseBackup(id="0123456789abcdef", tenant_id="aa11", database_id="bb22")
    assert backup_file(settings, row) == tmp_path / "db-backups/aa11/bb22/0123456789abcdef.dump"
    for bad in ("../x", "a/b", "", "ABC", "x" * 40):
        with pytest.raises(ValueError):
            backup_file(settings, DatabaseBackup(id=bad, tenant_id="aa11", database_id="bb22"))
