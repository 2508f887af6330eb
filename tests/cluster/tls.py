"""A platform registry served over TLS on the host's address on the switch, for the tests
that push to it: a free port there and a throwaway self-signed certificate for that address."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path


def free_port_on(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def self_signed(
    directory: Path, address: str, name: str = "berth-registry-test"
) -> tuple[Path, Path]:
    """A certificate and key for ``address`` (an IP SAN), valid one day."""
    cert, key = directory / "registry.crt", directory / "registry.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=IP:{address}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
