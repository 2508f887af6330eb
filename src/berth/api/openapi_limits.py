"""The OpenAPI document states this installation's own limits (scale, memory, CPUs).

The services validate against the settings; a document written with fixed numbers would
promise what the installation refuses. :func:`tailor` writes the settings into the generated
schema once, and :func:`integer_range_pattern` turns a range of whole numbers into a regular
expression for the string forms (like ``256M``).
"""

from __future__ import annotations

from typing import Any

from berth.settings import Settings


def _same_length_range(lo: str, hi: str) -> str:
    if lo == hi:
        return lo
    if len(lo) == 1:
        return f"[{lo}-{hi}]"
    if lo[0] == hi[0]:
        return lo[0] + _same_length_range(lo[1:], hi[1:])
    rest = len(lo) - 1
    parts = [lo[0] + _same_length_range(lo[1:], "9" * rest)]
    if int(hi[0]) - int(lo[0]) > 1:
        parts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]" + "[0-9]" * rest)
    parts.append(hi[0] + _same_length_range("0" * rest, hi[1:]))
    return "(?:" + "|".join(parts) + ")"


def integer_range_pattern(lo: int, hi: int) -> str:
    """An unanchored regex (a group) matching the decimal numbers lo..hi without leading zeros."""
    if not 0 <= lo <= hi:
        raise ValueError(f"bad range {lo}..{hi}")
    parts = []
    for length in range(len(str(lo)), len(str(hi)) + 1):
        first = max(lo, 10 ** (length - 1) if length > 1 else 0)
        last = min(hi, 10**length - 1)
        if first <= last:
            parts.append(_same_length_range(str(first), str(last)))
    return "(?:" + "|".join(parts) + ")"


def memory_pattern(lo_mb: int, hi_mb: int) -> str:
    """The memory sizes the services accept: MB (``256``, ``256M``, ``256mb``) or GB (``1G``)."""
    alternatives = [f"{integer_range_pattern(lo_mb, hi_mb)}(?:[mM][bB]?)?"]
    lo_gb, hi_gb = -(-lo_mb // 1024), hi_mb // 1024
    if 1 <= lo_gb <= hi_gb:
        alternatives.append(f"{integer_range_pattern(lo_gb, hi_gb)}[gG][bB]?")
    return "^(?:" + "|".join(alternatives) + ")$"


def tailor(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Write the installation's limits into the generated document (idempotent)."""
    components = schema.get("components", {}).get("schemas", {})
    scale = components.get("ScaleRequest", {}).get("properties", {}).get("replicas")
    if scale is not None:
        scale["maximum"] = settings.max_scale
        scale["description"] = f"0 up to this installation's max_scale ({settings.max_scale})"
    create = components.get("AppCreate", {}).get("properties", {})
    if "memory" in create:
        create["memory"]["anyOf"] = [
            {
                "type": "string",
                "pattern": memory_pattern(settings.memory_min_mb, settings.memory_max_mb),
            },
            {
                "type": "integer",
                "minimum": settings.memory_min_mb,
                "maximum": settings.memory_max_mb,
            },
        ]
    if "name" in create:
        create["name"]["not"] = {"enum": sorted(settings.reserved_app_names)}
    if "cpus" in create:
        create["cpus"].pop("exclusiveMinimum", None)
        create["cpus"]["minimum"] = settings.cpus_min
        create["cpus"]["maximum"] = settings.cpus_max
    return schema
