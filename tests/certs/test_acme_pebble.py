"""ACME end to end against a real pebble: issuance, TLS with the result, renewal, failure."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from berth.certs.acme_client import AcmeIssuer, Failed, Issued, IssueResult
from berth.certs.challenges import ChallengeStore
from berth.certs.manager import CertManager
from berth.certs.model import CertState, RetryPolicy, renew_at
from berth.certs.planner import Action
from tests.certs.conftest import AcmeEnv, unique_domain
from tests.certs.fakeclock import FakeClock


def _issuer(env: AcmeEnv, tmp_path: Path, store: ChallengeStore | None = None) -> AcmeIssuer:
    return AcmeIssuer(
        env.pebble.directory_url,
        tmp_path / "account.key",
        env.store if store is None else store,
        trust=env.pebble.trust,
        timeout=30,
    )


class CountingIssuer:
    """The real issuer, with a count of the orders it was asked for."""

    def __init__(self, inner: AcmeIssuer) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def obtain(self, domain: str) -> IssueResult:
        with self._lock:
            self.calls.append(domain)
        return self.inner.obtain(domain)


def _verify_chain(chain_pem: bytes, root_pem: bytes, domain: str) -> None:
    certs = x509.load_pem_x509_certificates(chain_pem)
    root = x509.load_pem_x509_certificate(root_pem)
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(dt.datetime.now(dt.UTC))
        .build_server_verifier(x509.DNSName(domain))
    )
    verified = verifier.verify(certs[0], certs[1:])
    assert verified[-1] == root


class _TlsServer:
    """A TLS server on loopback serving the issued pair; answers one line per connection."""

    def __init__(self, chain: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(chain, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello over tls\n")
            except (OSError, ssl.SSLError):
                continue

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def tls_server_factory() -> Iterator[list[_TlsServer]]:
    servers: list[_TlsServer] = []
    yield servers
    for server in servers:
        server.close()


def test_a_domain_is_issued_and_served_over_tls(
    acme_env: AcmeEnv, tmp_path: Path, tls_server_factory: list[_TlsServer]
) -> None:
    domain = unique_domain()
    manager = CertManager(_issuer(acme_env, tmp_path), tmp_path / "certs")
    statuses = manager.reconcile([domain])
    status = statuses[domain]
    assert status.state is CertState.ISSUED, status
    assert status.not_after is not None and status.not_after > dt.datetime.now(dt.UTC)
    chain_path, key_path = manager.paths(domain)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "account.key").st_mode) == 0o600
    root_pem = acme_env.pebble.root_pem()
    _verify_chain(chain_path.read_bytes(), root_pem, domain)

    server = _TlsServer(chain_path, key_path)
    tls_server_factory.append(server)
    client = ssl.create_default_context(cadata=root_pem.decode())  # pebble's root, nothing else
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname=domain) as tls,
    ):
        assert tls.recv(64) == b"hello over tls\n"
        peer = tls.getpeercert()
        assert ("DNS", domain) in peer["subjectAltName"]
    # A client that trusts only the system store refuses pebble's certificate.
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname=domain)
    assert len(acme_env.store) == 0  # answered challenges are removed


def test_renewal_before_expiry_on_a_controllable_clock(acme_env: AcmeEnv, tmp_path: Path) -> None:
    domain = unique_domain("renew")
    clock = FakeClock()
    issuer = CountingIssuer(_issuer(acme_env, tmp_path / "acct"))
    manager = CertManager(issuer, tmp_path / "certs", clock=clock)
    first = manager.reconcile([domain])[domain]
    assert first.state is CertState.ISSUED and first.not_after is not None
    first_chain = manager.paths(domain)[0].read_bytes()

    # Nothing is due yet: a second pass orders nothing.
    assert manager.plan([domain]).decision(domain).action is Action.FRESH
    manager.reconcile([domain])
    assert issuer.calls == [domain]

    decision = manager.plan([domain]).decision(domain)
    assert decision.until is not None and decision.until < first.not_after
    clock.set(decision.until + dt.timedelta(seconds=1))
    assert manager.plan([domain]).decision(domain).action is Action.RENEW
    # pebble dates certificates by its own clock in whole seconds: let one pass.
    while dt.datetime.now(dt.UTC) < first.not_before + dt.timedelta(seconds=1):  # type: ignore[operator]
        time.sleep(0.05)
    renewed = manager.reconcile([domain])[domain]
    assert issuer.calls == [domain, domain]
    assert renewed.state is CertState.ISSUED
    assert renewed.not_after is not None and renewed.not_after > first.not_after
    assert manager.paths(domain)[0].read_bytes() != first_chain
    _verify_chain(manager.paths(domain)[0].read_bytes(), acme_env.pebble.root_pem(), domain)
    # The next renewal is due later than this one was (pebble dates by its own, real clock).
    assert renewed.not_before is not None and first.not_before is not None
    assert renew_at(renewed.not_before, renewed.not_after) > decision.until


def test_a_ca_failure_shows_the_reason_and_backs_off(acme_env: AcmeEnv, tmp_path: Path) -> None:
    domain = unique_domain("fail")
    clock = FakeClock()
    # The responder serves acme_env.store; this issuer answers into a store nobody serves,
    # so pebble's validation gets a 404.
    issuer = CountingIssuer(_issuer(acme_env, tmp_path, store=ChallengeStore()))
    policy = RetryPolicy(base=dt.timedelta(minutes=5), cap=dt.timedelta(hours=24))
    manager = CertManager(issuer, tmp_path / "certs", clock=clock, policy=policy)

    failed = manager.reconcile([domain])[domain]
    assert failed.state is CertState.FAILED
    assert failed.problem == "urn:ietf:params:acme:error:unauthorized"
    assert failed.reason is not None and "404" in failed.reason
    assert failed.failures == 1 and failed.next_retry is not None
    first_delay = failed.next_retry - clock()
    assert dt.timedelta(minutes=5) <= first_delay <= dt.timedelta(minutes=5.5)

    # Before the retry time, however often the manager runs, the CA hears nothing.
    for _ in range(5):
        clock.advance(dt.timedelta(seconds=50))
        assert manager.reconcile([domain])[domain].failures == 1
    assert issuer.calls == [domain]

    clock.set(failed.next_retry)
    again = manager.reconcile([domain])[domain]
    assert issuer.calls == [domain, domain]
    assert again.failures == 2 and again.next_retry is not None
    assert again.next_retry - clock() >= 2 * dt.timedelta(minutes=5)
    assert not manager.paths(domain)[0].exists()

    # A restarted manager keeps the backoff (state.json): still no order before the time.
    restarted = CertManager(issuer, tmp_path / "certs", clock=clock, policy=policy)
    assert restarted.status(domain).failures == 2
    restarted.reconcile([domain])
    assert issuer.calls == [domain, domain]


def test_an_unreachable_ca_is_a_failed_status_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    issuer = AcmeIssuer(
        f"https://127.0.0.1:{port}/dir", tmp_path / "account.key", ChallengeStore(), timeout=5
    )
    result = issuer.obtain(unique_domain("down"))
    assert isinstance(result, Failed)
    assert "cannot be reached" in result.reason and result.problem is None


def test_the_account_key_is_kept_and_reused(acme_env: AcmeEnv, tmp_path: Path) -> None:
    first = _issuer(acme_env, tmp_path)
    assert isinstance(first.obtain(unique_domain("acct")), Issued)
    key_before = (tmp_path / "account.key").read_bytes()
    second = _issuer(acme_env, tmp_path)  # a restart: the same key finds its existing account
    assert isinstance(second.obtain(unique_domain("acct")), Issued)
    assert (tmp_path / "account.key").read_bytes() == key_before


class _WrongAnswers(ChallengeStore):
    """Puts a wrong key authorisation into the store the responder serves."""

    def __init__(self, served: ChallengeStore) -> None:
        super().__init__()
        self.served = served

    def put(self, token: str, key_authorization: str) -> None:
        self.served.put(token, f"{token}.not-the-thumbprint")

    def remove(self, token: str) -> None:
        self.served.remove(token)


def test_a_wrong_challenge_answer_fails_with_the_cas_words(
    acme_env: AcmeEnv, tmp_path: Path
) -> None:
    domain = unique_domain("wrong")
    issuer = _issuer(acme_env, tmp_path, store=_WrongAnswers(acme_env.store))
    manager = CertManager(issuer, tmp_path / "certs", clock=FakeClock())
    status = manager.reconcile([domain])[domain]
    assert status.state is CertState.FAILED
    assert status.problem == "urn:ietf:params:acme:error:unauthorized"
    assert status.reason is not None and "key authorization" in status.reason.lower()
    assert len(acme_env.store) == 0
