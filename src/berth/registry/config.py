"""The platform registry's own config file, rendered from settings. Pure: no I/O.

The distro's packaged config turns on htpasswd with a directory as its path and listens on
every address; Berth never uses it. Ours:

- filesystem storage under ``<home>/registry/storage``;
- delete enabled, so unkept manifests can be deleted over the API and their blobs collected;
- no blob descriptor cache: after a garbage collection an in-memory cache would still say a
  deleted layer exists, and a later push would skip uploading it (distribution#2270);
- on loopback, no authentication: no container can reach it there (see berth.registry);
  anywhere else, htpasswd with one account whose password Berth generates, so that a
  tenant's container that could reach the address still cannot read or write an image;
- the storage health check on, so a registry whose disk fails answers 503 and is restarted;
- ``read_only`` for garbage collection: pulls keep working, pushes and deletes are refused;
- TLS when given a certificate, so engines need no ``--insecure-registry`` and the credentials
  never cross the network in clear.

Every value is written as a JSON string, a valid YAML double-quoted scalar, so no path or
address can inject YAML.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

from berth.errors import InvalidInput

_PORT = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True)
class Listen:
    """Where the registry listens; also the host part of every reference pushed to it."""

    host: str  # an IP address, never unspecified: nodes must be able to pull from it
    port: int

    @property
    def address(self) -> str:
        """``host:port`` as written in image references (``[v6]:port`` for IPv6)."""
        ip = ipaddress.ip_address(self.host)
        return f"[{ip.compressed}]:{self.port}" if ip.version == 6 else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    key: Path
    ca: Path  # what clients verify the certificate with


def parse_tls(certificate: str, key: str, ca: str = "") -> TlsFiles | None:
    """BERTH_REGISTRY_TLS_CERT/_KEY/_CA: none of them (plain HTTP), or a certificate and its key
    (absolute paths; the CA defaults to the certificate itself, for a self-signed one)."""
    given = {"BERTH_REGISTRY_TLS_CERT": certificate, "BERTH_REGISTRY_TLS_KEY": key}
    if not any(given.values()):
        if ca:
            raise InvalidInput("BERTH_REGISTRY_TLS_CA needs BERTH_REGISTRY_TLS_CERT and _KEY")
        return None
    for name, value in {**given, "BERTH_REGISTRY_TLS_CA": ca or certificate}.items():
        if not value or not Path(value).is_absolute() or "\n" in value:
            raise InvalidInput(f"{name} must be an absolute path (both CERT and KEY, or neither)")
    return TlsFiles(Path(certificate), Path(key), Path(ca or certificate))


@dataclass(frozen=True)
class RegistryConfig:
    storage_dir: Path
    listen: Listen
    http_secret: str  # signs upload state; fixed so restarts keep uploads in flight valid
    read_only: bool = False
    htpasswd: Path | None = None  # None: no authentication
    tls: TlsFiles | None = None  # None: plain HTTP


def parse_listen(text: str) -> Listen:
    """``BERTH_REGISTRY_LISTEN``: ``IP:PORT`` (``[v6]:PORT``). An unspecified address is refused:
    the address is also what nodes pull from, and 0.0.0.0 would open it to tenant bridges."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("BERTH_REGISTRY_LISTEN must be IP:PORT, e.g. 127.0.0.1:5000")
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not sep or not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise InvalidInput(f"BERTH_REGISTRY_LISTEN {text!r}: expected IP:PORT with a port 1-65535")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(
            f"BERTH_REGISTRY_LISTEN {text!r}: {host!r} is not an IP address"
        ) from None
    if ip.is_unspecified:
        raise InvalidInput(
            f"BERTH_REGISTRY_LISTEN {text!r}: listen on one address the nodes reach, "
            "not on every address (tenants' bridges would reach it too)"
        )
    return Listen(ip.compressed, int(port))


def render_config(cfg: RegistryConfig) -> str:
    """The registry's YAML config (deterministic)."""
    q = json.dumps
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  fields:",
        f"    service: {q('berth-registry')}",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {q(str(cfg.storage_dir))}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: true",
        f"      age: {q('24h')}",
        f"      interval: {q('1h')}",
        "      dryrun: false",
        "    readonly:",
        f"      enabled: {'true' if cfg.read_only else 'false'}",
        "http:",
        f"  addr: {q(cfg.listen.address)}",
        f"  secret: {q(cfg.http_secret)}",
        "  headers:",
        f"    X-Content-Type-Options: [{q('nosniff')}]",
    ]
    if cfg.tls is not None:
        lines += [
            "  tls:",
            f"    certificate: {q(str(cfg.tls.certificate))}",
            f"    key: {q(str(cfg.tls.key))}",
        ]
    if cfg.htpasswd is not None:
        lines += [
            "auth:",
            "  htpasswd:",
            f"    realm: {q('berth-registry')}",
            f"    path: {q(str(cfg.htpasswd))}",
        ]
    lines += [
        "health:",
        "  storagedriver:",
        "    enabled: true",
        f"    interval: {q('10s')}",
        "    threshold: 3",
        "",
    ]
    return "\n".join(lines)
