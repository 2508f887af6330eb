"""The provider for a shared server of an engine, from its admin URL (``db-servers add``)."""

from __future__ import annotations

from berth.databases.errors import UnknownEngine
from berth.databases.mariadb import MariaDBProvider
from berth.databases.names import Engine
from berth.databases.postgres import PostgresProvider
from berth.databases.provider import Provider
from berth.databases.redis_acl import RedisProvider


class EngineNotShared(UnknownEngine):
    code = "engine_not_shared"


def provider_for(
    engine: Engine,
    admin_url: str,
    *,
    tenant_host: str | None = None,
    tenant_port: int | None = None,
) -> Provider:
    if engine == "postgres":
        return PostgresProvider(admin_url, tenant_host=tenant_host, tenant_port=tenant_port)
    if engine == "mariadb":
        return MariaDBProvider(admin_url, tenant_host=tenant_host, tenant_port=tenant_port)
    if engine == "redis":
        return RedisProvider(admin_url, tenant_host=tenant_host, tenant_port=tenant_port)
    # Memcached has no users: each of its databases is a dedicated container, not an account.
    raise EngineNotShared(f"{engine} databases are dedicated, never on a shared server")
