"""The backups of a shared server of an engine, from its admin URL (as ``providers``)."""

from __future__ import annotations

from berth.databases.backup import Backups, Tools
from berth.databases.backup_mariadb import MariaDBBackups
from berth.databases.backup_postgres import PostgresBackups
from berth.databases.backup_redis import RedisBackups
from berth.databases.names import Engine
from berth.databases.providers import EngineNotShared


def backups_for(engine: Engine, admin_url: str, tools: Tools | None = None) -> Backups:
    if engine == "postgres":
        return PostgresBackups(admin_url, tools)
    if engine == "mariadb":
        return MariaDBBackups(admin_url, tools)
    if engine == "redis":
        return RedisBackups(admin_url)
    raise EngineNotShared(f"{engine} databases are dedicated, never on a shared server")
