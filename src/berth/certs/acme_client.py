"""Obtaining one certificate from an ACME CA with HTTP-01, through certbot's ``acme`` library.

One account per install: its key is generated once and kept in a 0600 file, and its URL is
remembered after the first registration. Each order gets a fresh certificate key (ECDSA
P-256). What the CA refuses (its problem document, a failed challenge, a timeout, the CA down)
comes back as a :class:`Failed` with the CA's own words and any ``Retry-After`` it sent, never
as an exception: the manager turns it into a failed status and a backoff.

``trust`` is a CA bundle file for the directory's TLS (pebble's own CA in the tests): when it is
given, requests verifies against that file only, and the environment's proxy and CA settings
are ignored, so a test CA is trusted by this client and nothing else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.errors import DeserializationError
from josepy.jwa import RS256
from josepy.jwk import JWKRSA

from berth.certs.challenges import Challenges
from berth.certs.names import normalize_domain

_REASON_MAX = 500


@dataclass(frozen=True)
class Issued:
    domain: str
    chain_pem: bytes  # leaf first, as the CA sent it
    key_pem: bytes  # PKCS#8
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class Failed:
    domain: str
    reason: str  # the CA's detail (or what went wrong reaching it)
    problem: str | None  # the CA's problem type, e.g. urn:ietf:params:acme:error:unauthorized
    retry_after: float | None = None  # seconds, from the CA's Retry-After header


IssueResult = Issued | Failed


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _problem_text(problem: messages.Error) -> str:
    return _clip(str(problem.detail or problem.title or problem.description or problem.typ))


def load_or_create_account_key(path: Path) -> JWKRSA:
    """The account key at ``path``, generated (RSA 2048, file 0600) when there is none.

    Created with O_EXCL under a temporary name and renamed, so a crash never leaves half a key
    and two processes starting together end with one key, not one each."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by a crash of an earlier process with the same pid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            # link fails if another process made a key meanwhile: then theirs is kept.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        data = path.read_bytes()
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)  # an account key anyone else can read is the account given away
    loaded = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA private key")
    return JWKRSA(key=loaded)


class AcmeIssuer:
    def __init__(
        self,
        directory_url: str,
        account_key_path: Path,
        challenge_store: Challenges,
        *,
        trust: Path | None = None,
        contact_email: str | None = None,
        timeout: float = 90.0,
        network_timeout: int = 30,
    ) -> None:
        self.directory_url = directory_url
        self.account_key_path = account_key_path
        self.challenges = challenge_store
        self.trust = trust
        self.contact_email = contact_email
        self.timeout = timeout
        self.network_timeout = network_timeout
        self._lock = threading.Lock()
        self._account_key: JWKRSA | None = None
        self._account_uri: str | None = None

    def _key(self) -> JWKRSA:
        with self._lock:
            if self._account_key is None:
                self._account_key = load_or_create_account_key(self.account_key_path)
            return self._account_key

    def _network(self, retry_after: list[str]) -> client.ClientNetwork:
        net = client.ClientNetwork(
            self._key(),
            alg=RS256,
            user_agent="berth-acme",
            timeout=self.network_timeout,
        )
        if self.trust is not None:
            # requests takes a CA bundle path where the acme library's signature says bool.
            net.verify_ssl = str(self.trust)  # type: ignore[assignment]
            net.session.trust_env = False

        def keep_retry_after(response: requests.Response, *_: Any, **__: Any) -> None:
            if not response.ok and response.headers.get("Retry-After"):
                retry_after.append(response.headers["Retry-After"])

        net.session.hooks["response"].append(keep_retry_after)
        return net

    def _account(self, acme: client.ClientV2) -> None:
        with self._lock:
            uri = self._account_uri
        if uri is None:
            contact = (f"mailto:{self.contact_email}",) if self.contact_email else ()
            registration = messages.NewRegistration.from_data(terms_of_service_agreed=True).update(
                contact=contact
            )
            try:
                uri = acme.new_account(registration).uri
            except errors.ConflictError as exc:  # the key has an account already: use it
                uri = exc.location
            with self._lock:
                self._account_uri = uri
        acme.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())

    def obtain(self, domain: str) -> IssueResult:
        """Order, answer HTTP-01, finalize with a fresh key, download the chain."""
        name = normalize_domain(domain)
        seen_retry_after: list[str] = []
        net = self._network(seen_retry_after)
        tokens: list[str] = []
        try:
            return self._obtain(name, net, tokens)
        except errors.ValidationError as exc:
            return self._failed(name, *self._validation_reason(exc), seen_retry_after)
        except errors.IssuanceError as exc:
            return self._failed(name, _problem_text(exc.error), exc.error.typ, seen_retry_after)
        except messages.Error as exc:
            return self._failed(name, _problem_text(exc), exc.typ, seen_retry_after)
        except errors.TimeoutError:
            reason = f"the CA did not finish the order within {self.timeout:.0f} s"
            return self._failed(name, reason, None, seen_retry_after)
        except requests.RequestException as exc:
            reason = f"the CA at {self.directory_url} cannot be reached: {type(exc).__name__}"
            return self._failed(name, reason, None, seen_retry_after)
        except OSError as exc:  # the trusted CA bundle or the account key cannot be read
            reason = f"cannot talk to the CA: {type(exc).__name__}: {exc.strerror or exc}"
            return self._failed(name, _clip(reason), None, seen_retry_after)
        except (errors.Error, DeserializationError, ValueError) as exc:
            reason = f"unexpected answer from the CA: {type(exc).__name__}: {exc}"
            return self._failed(name, _clip(reason), None, seen_retry_after)
        finally:
            for token in tokens:
                self.challenges.remove(token)
            net.session.close()

    def _failed(
        self, domain: str, reason: str, problem: str | None, retry_after: list[str]
    ) -> Failed:
        seconds = _retry_after_seconds(retry_after[-1]) if retry_after else None
        return Failed(domain=domain, reason=reason, problem=problem, retry_after=seconds)

    @staticmethod
    def _validation_reason(exc: errors.ValidationError) -> tuple[str, str | None]:
        for authzr in exc.failed_authzrs:
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    return _problem_text(challb.error), challb.error.typ
        return "the CA refused the challenge without saying why", None

    def _obtain(self, domain: str, net: client.ClientNetwork, tokens: list[str]) -> Issued:
        directory = client.ClientV2.get_directory(self.directory_url, net)
        acme = client.ClientV2(directory, net)
        self._account(acme)
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        order = acme.new_order(crypto_util.make_csr(key_pem, [domain]))
        for authzr in order.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue  # the CA reused an earlier validation of this name
            challb = next(
                (c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                None,
            )
            if challb is None:
                raise errors.Error("the CA offered no HTTP-01 challenge")
            response, validation = challb.response_and_validation(net.key)
            token = challb.chall.encode("token")
            self.challenges.put(token, validation)
            tokens.append(token)
            acme.answer_challenge(challb, response)
        deadline = time.monotonic() + self.timeout
        self._poll_authorizations(acme, order, deadline)
        chain_pem = self._finalize(acme, order, deadline)
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        return Issued(
            domain=domain,
            chain_pem=chain_pem,
            key_pem=key_pem,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )

    # The acme library polls once a second from the start (about 2 s an order against a CA that
    # answers in milliseconds); this polls soon and then backs off to 1 s, and waits whatever
    # Retry-After the CA asks for.
    _POLL_FIRST = 0.05
    _POLL_MAX = 1.0

    def _post_as_get(self, acme: client.ClientV2, url: str) -> requests.Response:
        return acme.net.post(url, None, new_nonce_url=acme.directory["newNonce"])

    def _sleep(self, delay: float, response: requests.Response, deadline: float) -> float:
        asked = _retry_after_seconds(response.headers.get("Retry-After"))
        wait = max(delay, asked) if asked is not None else delay
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise errors.TimeoutError()
        time.sleep(min(wait, remaining))
        return min(delay * 2, self._POLL_MAX)

    def _poll_authorizations(
        self, acme: client.ClientV2, order: messages.OrderResource, deadline: float
    ) -> None:
        failed = []
        for url in order.body.authorizations:
            delay = self._POLL_FIRST
            while True:
                response = self._post_as_get(acme, url)
                authzr = messages.AuthorizationResource(
                    body=messages.Authorization.from_json(response.json()), uri=url
                )
                if authzr.body.status != messages.STATUS_PENDING:
                    break
                delay = self._sleep(delay, response, deadline)
            if authzr.body.status != messages.STATUS_VALID:
                failed.append(authzr)
        if failed:
            raise errors.ValidationError(failed)

    def _finalize(
        self, acme: client.ClientV2, order: messages.OrderResource, deadline: float
    ) -> bytes:
        try:
            acme.begin_finalization(order)
        except messages.Error as exc:
            if exc.code != "orderNotReady":
                raise
        delay = self._POLL_FIRST
        while True:
            response = self._post_as_get(acme, order.uri)
            body = messages.Order.from_json(response.json())
            if body.status == messages.STATUS_INVALID:
                if body.error is not None:
                    raise errors.IssuanceError(body.error)
                raise errors.Error("the CA abandoned the order without saying why")
            if body.status == messages.STATUS_READY:
                acme.begin_finalization(order)
            elif body.status == messages.STATUS_VALID and body.certificate is not None:
                return self._post_as_get(acme, body.certificate).text.encode("ascii")
            delay = self._sleep(delay, response, deadline)
