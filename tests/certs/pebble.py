"""A real ACME CA for the tests: the distro's pebble, with pebble-challtestsrv as its DNS.

Everything listens on 127.0.0.1 at free ports. pebble's TLS certificate is made here by a CA
of the test's own (written to ``trust.pem``), which only the test's clients trust. The DNS
server answers 127.0.0.1 for every A query and nothing for AAAA, so pebble's HTTP-01
validation of any test name reaches the test's responder on loopback and nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_tls_identity(directory: Path) -> tuple[Path, Path, Path]:
    """(trust.pem, cert.pem, key.pem): a throwaway CA and pebble's certificate from it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("berth test pebble TLS CA"))
        .issuer_name(_name("berth test pebble TLS CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    trust, cert_path, key_path = (
        directory / "trust.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    trust.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return trust, cert_path, key_path


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@dataclass
class Pebble:
    http_port: int  # where pebble sends HTTP-01 validations (the test's responder)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="berth-pebble-")))
    acme_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    dns_management_port: int = field(default_factory=free_port)
    trust: Path | None = None
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def log(self) -> str:
        parts = []
        for name in ("challtestsrv.log", "pebble.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def _spawn(self, argv: list[str], log_name: str, env: dict[str, str]) -> None:
        log = open(self.workdir / log_name, "wb")  # the child keeps its own copy
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        finally:
            log.close()
        self._procs.append(proc)

    def start(self) -> Pebble:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        trust, cert, key = write_tls_identity(self.workdir)
        self.trust = trust
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": self.http_port,
                "tlsPort": free_port(),  # nothing answers there: only HTTP-01 is used
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        config_path = self.workdir / "pebble-config.json"
        config_path.write_text(json.dumps(config))
        base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self._spawn(
            [
                "pebble-challtestsrv",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                f"127.0.0.1:{self.dns_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{self.dns_management_port}",
            ],
            "challtestsrv.log",
            base_env,
        )
        env = {
            **base_env,
            "PEBBLE_VA_NOSLEEP": "1",
            # Deterministic tests: no injected bad nonces, every order validated anew.
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        }
        self._spawn(
            [
                "pebble",
                "-config",
                str(config_path),
                "-dnsserver",
                f"127.0.0.1:{self.dns_port}",
            ],
            "pebble.log",
            env,
        )
        self._wait_ready()

    def _context(self) -> ssl.SSLContext:
        assert self.trust is not None
        return ssl.create_default_context(cafile=str(self.trust))

    def _get(self, url: str) -> bytes:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._context())
        )
        with opener.open(url, timeout=5) as response:
            return bytes(response.read())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        last: Exception | None = None
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"pebble exited early:\n{self.log}")
            try:
                self._get(self.directory_url)
                self._get(f"https://127.0.0.1:{self.management_port}/roots/0")
                return
            except OSError as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"pebble did not answer in 20 s ({last}):\n{self.log}")

    def root_pem(self) -> bytes:
        """The root pebble issues under (made anew at each start), from its management API."""
        return self._get(f"https://127.0.0.1:{self.management_port}/roots/0")

    def halt(self) -> None:
        """Stop the CA (a CA outage); its files stay, as a client's trust bundle would."""
        for proc in reversed(self._procs):
            _stop(proc)
        self._procs.clear()

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.workdir, ignore_errors=True)
