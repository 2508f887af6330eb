"""The registry's config: listen address parsing and the rendered YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from berth.errors import InvalidInput
from berth.registry.config import (
    Listen,
    RegistryConfig,
    TlsFiles,
    parse_listen,
    parse_tls,
    render_config,
)


@pytest.mark.parametrize(
    ("text", "address", "loopback"),
    [
        ("127.0.0.1:5000", "127.0.0.1:5000", True),
        (" 10.213.4.254:5001 ", "10.213.4.254:5001", False),
        ("[::1]:5000", "[::1]:5000", True),
    ],
)
def test_listen_addresses(text: str, address: str, loopback: bool) -> None:
    listen = parse_listen(text)
    assert listen.address == address
    assert listen.is_loopback is loopback


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:50a",
        "localhost:5000",
        "0.0.0.0:5000",
        "[::]:5000",
        "127.0.0.1:5000\nhttp: {}",
        ":5000",
    ],
)
def test_bad_listen_addresses_are_refused_clearly(text: str) -> None:
    with pytest.raises(InvalidInput, match="BERTH_REGISTRY_LISTEN"):
        parse_listen(text)


def _config(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "storage_dir": Path("/var/lib/berth/registry/storage"),
        "listen": Listen("127.0.0.1", 5000),
        "http_secret": "s3cret",
    }
    base.update(overrides)
    parsed = yaml.safe_load(render_config(RegistryConfig(**base)))  # type: ignore[arg-type]
    assert isinstance(parsed, dict)
    return parsed


def test_config_has_storage_delete_listen_and_health() -> None:
    cfg = _config()
    storage = cfg["storage"]
    assert storage == {
        "filesystem": {"rootdirectory": "/var/lib/berth/registry/storage"},
        "delete": {"enabled": True},
        "maintenance": {
            "uploadpurging": {"enabled": True, "age": "24h", "interval": "1h", "dryrun": False},
            "readonly": {"enabled": False},
        },
    }
    assert cfg["http"] == {
        "addr": "127.0.0.1:5000",
        "secret": "s3cret",
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    assert cfg["health"] == {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}}
    # No auth section (it listens only where Berth and the nodes reach it), no blob cache.
    assert "auth" not in cfg
    assert "cache" not in storage  # type: ignore[operator]


def test_htpasswd_auth_when_asked() -> None:
    cfg = _config(htpasswd=Path("/var/lib/berth/registry/htpasswd"))
    assert cfg["auth"] == {
        "htpasswd": {"realm": "berth-registry", "path": "/var/lib/berth/registry/htpasswd"}
    }


def test_read_only_mode() -> None:
    storage = _config(read_only=True)["storage"]
    assert storage["maintenance"]["readonly"] == {"enabled": True}  # type: ignore[index]


def test_a_hostile_path_stays_one_string() -> None:
    path = Path('/tmp/x"\nauth:\n  htpasswd: {}\n#')
    cfg = _config(storage_dir=path)
    assert cfg["storage"]["filesystem"]["rootdirectory"] == str(path)  # type: ignore[index]
    assert "auth" not in cfg


def test_render_is_deterministic() -> None:
    cfg = RegistryConfig(Path("/r"), Listen("127.0.0.1", 5000), "k")
    assert render_config(cfg) == render_config(cfg)


def test_tls_files() -> None:
    assert parse_tls("", "") is None
    tls = parse_tls("/etc/berth/reg.crt", "/etc/berth/reg.key")
    assert tls == TlsFiles(
        Path("/etc/berth/reg.crt"), Path("/etc/berth/reg.key"), Path("/etc/berth/reg.crt")
    )
    assert parse_tls("/c", "/k", "/ca").ca == Path("/ca")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("cert", "key", "ca"),
    [("/c", "", ""), ("", "/k", ""), ("", "", "/ca"), ("c.pem", "/k", ""), ("/c", "/k", "ca")],
)
def test_bad_tls_settings_are_refused(cert: str, key: str, ca: str) -> None:
    with pytest.raises(InvalidInput, match="BERTH_REGISTRY_TLS"):
        parse_tls(cert, key, ca)


def test_tls_is_rendered_under_http() -> None:
    tls = TlsFiles(Path("/c.pem"), Path("/k.pem"), Path("/c.pem"))
    http = _config(tls=tls)["http"]
    assert http["tls"] == {"certificate": "/c.pem", "key": "/k.pem"}  # type: ignore[index]
