"""Managed databases on shared servers: the engine providers (PostgreSQL, Redis, MariaDB).

``names`` holds the pure rules (a tenant's database name, the server-side identifiers derived
from ids), ``provider`` the interface every engine implements, and one module per engine.
"""
