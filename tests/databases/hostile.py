"""Database names every provider must refuse before anything reaches a server."""

from __future__ import annotations

HOSTILE_NAMES: list[object] = [
    "",
    "a" * 41,
    "x'; DROP DATABASE postgres; --",
    'x"; DROP ROLE berthadmin; --',
    "db;select",
    "db%",
    "db_name",
    "my`db",
    "dé",
    "\uff44\uff42",  # fullwidth "db"
    "db\u0000",
    "db\n",
    "Db",
    "1db",
    "-db",
    "db name",
    "postgres",
    "template0",
    "template1",
    "mysql",
    "information-schema",
    "performance-schema",
    "sys",
    None,
    42,
]
