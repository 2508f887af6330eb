"""An in-memory provider for the store, API and CLI tests of managed databases (next to come):
it keeps the same contract as the real ones (tests/databases/test_contract.py runs it too)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from berth.databases.backup import BackupFailed, Fingerprint
from berth.databases.errors import DatabaseExists, DatabaseNotFound, DatabaseServerUnavailable
from berth.databases.names import Engine, new_password
from berth.databases.provider import Account, Credentials, Rotated, Usage
from berth.databases.rotation import current_login, next_login


@dataclass
class FakeDatabase:
    password: str
    write_allowed: bool = True
    bytes_used: int = 8192
    connections: int = 0
    # What the fake database holds: table -> rows (its backups dump and restore these).
    tables: dict[str, list[str]] = field(default_factory=dict)
    # Every credential that logs in now, as (login, password): a rotation's two overlap.
    valid: set[tuple[str, str]] = field(default_factory=set)


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
            username=self._login(account),
            password=password,
            key_prefix=account.names.key_prefix if self.engine == "redis" else "",
        )

    def create(self, account: Account) -> Credentials:
        if self.exists(account):
            raise DatabaseExists("the database already exists on its server")
        password = new_password()
        self.databases[account.names.database] = FakeDatabase(
            password, valid={(account.names.user, password)}
        )
        return self.credentials(account, password)

    def drop(self, account: Account) -> None:
        self._up()
        self.databases.pop(account.names.database, None)

    def _login(self, account: Account) -> str:
        if self.engine in ("postgres", "mariadb"):
            return current_login(account.names, account.login)
        return account.names.user

    def rotate_password(self, account: Account) -> Credentials:
        db = self._get(account)
        db.password = new_password()
        db.valid = {(self._login(account), db.password)}
        return self.credentials(account, db.password)

    def add_credential(self, account: Account) -> Rotated:
        db = self._get(account)
        old = (self._login(account), db.password)
        if self.engine in ("postgres", "mariadb"):
            account = replace(account, login=next_login(account.names, account.login))
        db.password = new_password()
        db.valid.add((self._login(account), db.password))
        retiring = old[0] if self.engine in ("postgres", "mariadb") else old[1]
        return Rotated(self.credentials(account, db.password), retiring=retiring)

    def revoke_credential(self, account: Account, retiring: str) -> None:
        db = self._get(account)
        db.valid = {(login, pw) for login, pw in db.valid if retiring not in (login, pw)}

    def logs_in(self, account: Account, login: str, password: str) -> bool:
        """Whether ``login``/``password`` opens the database now (the fake's own check)."""
        found = self.databases.get(account.names.database)
        return found is not None and (login, password) in found.valid

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
