"""An in-memory provider for the store, API and CLI tests of managed databases (next to come):
it keeps the same contract as the real ones (tests/databases/test_contract.py runs it too)."""

from __future__ import annotations

from dataclasses import dataclass

from berth.databases.errors import DatabaseExists, DatabaseNotFound, DatabaseServerUnavailable
from berth.databases.names import Engine, new_password
from berth.databases.provider import Account, Credentials, Usage


@dataclass
class FakeDatabase:
    password: str
    write_allowed: bool = True
    bytes_used: int = 8192
    connections: int = 0


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
