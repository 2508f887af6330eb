"""An in-memory provider for the store, API and CLI tests of managed databases (next to come):
it keeps the same contract as the real ones (tests/databases/test_contract.py runs it too)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from berth.databases.backup import BackupFailed, Fingerprint
from berth.databases.errors import DatabaseExists, DatabaseNotFound, DatabaseServerUnavailable
from berth.databases.names import Engine, new_password
from berth.databases.provider import Account, Credentials, Usage


@dataclass
class FakeDatabase:
    password: str
    write_allowed: bool = True
    bytes_used: int = 8192
    connections: int = 0
    # What the fake database holds: table -> rows (its backups dump and restore these).
    tables: dict[str, list[str]] = field(default_factory=dict)


FORMAT = "berth-fake-backup-1"


def fingerprint(tables: dict[str, list[str]]) -> Fingerprint:
    return {
        name: [len(rows), hashlib.md5("".join(sorted(rows)).encode()).hexdigest()]
        for name, rows in tables.items()
    }


class FakeProvider:
    def __init__(
        self, engine: Engine, *, host: str = "127.0.0.1", port: int = 5432, available: bool = True
    ) -> None:
        self.engine: Engine = engine
        self.host, self.port, self.available = host, port, available
        self.databases: dict[str, FakeDatabase] = {}

    def _up(self) -> None:
        if not self.available:
            raise DatabaseServerUnavailable("the fake server is down")

    def _get(self, account: Account) -> FakeDatabase:
        self._up()
        found = self.databases.get(account.names.database)
        if found is None:
            raise DatabaseNotFound("the database is not on its server")
        return found

    def check(self) -> None:
        self._up()

    def prepare(self) -> None:
        self._up()

    def exists(self, account: Account) -> bool:
        self._up()
        return account.names.database in self.databases

    def credentials(self, account: Account, password: str) -> Credentials:
        return Credentials(
            engine=self.engine,
            host=self.host,
            port=self.port,
            database=account.names.database,
            username=account.names.user,
            password=password,
            key_prefix=account.names.key_prefix if self.engine == "redis" else "",
        )

    def create(self, account: Account) -> Credentials:
        if self.exists(account):
            raise DatabaseExists("the database already exists on its server")
        password = new_password()
        self.databases[account.names.database] = FakeDatabase(password)
        return self.credentials(account, password)

    def drop(self, account: Account) -> None:
        self._up()
        self.databases.pop(account.names.database, None)

    def rotate_password(self, account: Account) -> Credentials:
        db = self._get(account)
        db.password = new_password()
        return self.credentials(account, db.password)

    def usage(self, account: Account) -> Usage:
        db = self._get(account)
        return Usage(bytes_used=db.bytes_used, connections=db.connections)

    def set_write_allowed(self, account: Account, allowed: bool) -> None:
        self._get(account).write_allowed = allowed

    # -- backups (berth.databases.backup.Backups), in memory and in the given file ------------

    def _backup_up(self) -> None:
        if not self.available:
            raise BackupFailed("the fake server is down")

    def dump(self, account: Account, path: Path) -> Fingerprint:
        self._backup_up()
        db = self._get(account)
        path.write_text(json.dumps({"format": FORMAT, "tables": db.tables}, sort_keys=True))
        return fingerprint(db.tables)

    @staticmethod
    def _read(path: Path) -> dict[str, list[str]]:
        try:
            data = json.loads(path.read_text())
            tables = data["tables"]
            assert data["format"] == FORMAT and isinstance(tables, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise BackupFailed("the file is not a fake backup (damaged or cut short)") from None
        return {str(k): [str(r) for r in v] for k, v in tables.items()}

    def verify(self, account: Account, path: Path) -> Fingerprint:
        self._backup_up()
        return fingerprint(self._read(path))

    def restore(self, source: Account, target: Account, path: Path) -> None:
        self._backup_up()
        tables = self._read(path)
        try:
            self._get(target).tables = tables
        except DatabaseNotFound:
            raise BackupFailed("the database to restore into is not on its server") from None
