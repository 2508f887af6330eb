"""Parsing and range checks for user input that is not a name (names: berth.domain.names)."""

from __future__ import annotations

import json
import re

from berth.errors import InvalidInput

_MEMORY = re.compile(r"^(\d{1,7})([mMgG])?[bB]?$")
_HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._~/%?=&-]{0,254}$")
_CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_CONFIG_KEYS = frozenset({"PORT"})
MAX_CONFIG_VALUE = 32 * 1024
MAX_CONFIG_KEYS = 200


def parse_memory_mb(value: str | int, lo: int, hi: int) -> int:
    """'256M', '1G', '512' (MB) → MB, within [lo, hi]."""
    if isinstance(value, int):
        mb = value
    else:
        m = _MEMORY.fullmatch(value.strip())
        if not m:
            raise InvalidInput(
                f"memory {value!r} is not a size like 256M or 1G", code="invalid_memory"
            )
        mb = int(m.group(1)) * (1024 if (m.group(2) or "m").lower() == "g" else 1)
    if not lo <= mb <= hi:
        raise InvalidInput(
            f"memory must be between {lo}M and {hi}M, got {mb}M", code="invalid_memory"
        )
    return mb


def parse_cpus_milli(value: float | str, lo: float, hi: float) -> int:
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"cpus {value!r} is not a number", code="invalid_cpus") from None
    if not lo <= cpus <= hi:  # also rejects NaN
        raise InvalidInput(f"cpus must be between {lo} and {hi}, got {value}", code="invalid_cpus")
    return round(cpus * 1000)


def validate_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise InvalidInput(f"port must be between 1 and 65535, got {port}", code="invalid_port")
    return port


def validate_health_path(path: str | None) -> str | None:
    """None or '' means a TCP connect check; otherwise an HTTP path."""
    if path is None or path == "":
        return None
    if not _HEALTH_PATH.fullmatch(path):
        raise InvalidInput(
            "health path must start with '/' and contain only URL-safe characters",
            code="invalid_health_path",
        )
    return path


def validate_scale(replicas: int, cap: int) -> int:
    if not 0 <= replicas <= cap:
        raise InvalidInput(
            f"scale must be between 0 and {cap}, got {replicas}", code="invalid_scale"
        )
    return replicas


def validate_config(values: dict[str, str]) -> dict[str, str]:
    for key, value in values.items():
        if not _CONFIG_KEY.fullmatch(key):
            raise InvalidInput(
                f"config key {key!r} must be letters, digits and '_' and not start with a digit",
                code="invalid_config",
            )
        if key in RESERVED_CONFIG_KEYS:
            raise InvalidInput(f"config key {key} is set by Berth", code="invalid_config")
        if not isinstance(value, str) or "\x00" in value or len(value) > MAX_CONFIG_VALUE:
            raise InvalidInput(
                f"config value of {key} must be text without NUL, at most {MAX_CONFIG_VALUE} bytes",
                code="invalid_config",
            )
    return values


def validate_config_size(config: dict[str, str], max_bytes: int) -> dict[str, str]:
    """The whole config, as stored (JSON, UTF-8): every release copies it, so it is bounded."""
    size = len(json.dumps(config, sort_keys=True).encode())
    if size > max_bytes:
        raise InvalidInput(
            f"config would be {size} bytes; the limit is {max_bytes} bytes in total",
            code="config_too_large",
        )
    return config


def validate_config_keys(keys: list[str]) -> list[str]:
    for key in keys:
        if not _CONFIG_KEY.fullmatch(key):
            raise InvalidInput(f"config key {key!r} is not valid", code="invalid_config")
    return keys
