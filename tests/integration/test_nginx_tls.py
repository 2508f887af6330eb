"""HTTPS through the real nginx: certificates by SNI, HTTP/2 by ALPN, the redirect from plain
HTTP, HTTP-01 answers sent to a Berth API, and names without a certificate refused."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from berth.domain.traffic import TrafficControls
from berth.proxy.model import ServedCertificate, TlsConfig, Upstream
from berth.proxy.nginx import NginxManager
from tests.certs import selfsigned
from tests.certs.tls_client import tls_request
from tests.integration import test_nginx_real as real
from tests.integration.test_nginx_real import HOST, Backend, free_port, get, serving

# The real-nginx module's fixtures, shared (a fixture is found by its name in the module).
backends = real.backends
client = real.client
conf_dir = real.conf_dir
manager = real.manager
port = real.port

pytestmark = pytest.mark.nginx

OTHER = "other.example.test"


def _pair(tmp_path: Path, name: str, names: tuple[str, ...]) -> tuple[ServedCertificate, str]:
    made = selfsigned.issue(names)
    directory = tmp_path / "certs" / name
    directory.mkdir(parents=True)
    (directory / "chain.pem").write_text(made.chain_pem)
    (directory / "key.pem").write_text(made.key_pem)
    (directory / "key.pem").chmod(0o600)
    return ServedCertificate(names, directory / "chain.pem", directory / "key.pem"), made.ca_pem


def test_https_by_sni_with_http2_and_the_redirect_from_http(
    manager: NginxManager,
    port: int,
    client: httpx.Client,
    backends: Callable[[str], Backend],
    tmp_path: Path,
) -> None:
    backend = backends("over tls")
    tls_port = free_port()
    served, ca_pem = _pair(tmp_path, "one", (HOST,))
    route = serving(backend, hostnames=(HOST, OTHER))
    tls = TlsConfig(port=tls_port, certificates=(served,), redirect_apps=frozenset({"a1"}))
    manager.apply(replace(manager.config((route,), 1), tls=tls))

    answer = tls_request(tls_port, HOST, ca_pem=ca_pem)
    assert (answer.status, answer.body) == (200, b"over tls")
    h2 = tls_request(tls_port, HOST, ca_pem=ca_pem, alpn=("h2", "http/1.1"), send=False)
    assert h2.alpn == "h2"  # HTTP/2 offered by ALPN
    assert tls_request(tls_port, HOST, ca_pem=ca_pem, send=False).alpn == "http/1.1"

    # Plain HTTP on the hostname with a certificate: a 308 to HTTPS (method and body kept);
    # the other hostname of the app, without one, is served over HTTP as before.
    redirected = get(client, port, HOST, "/a/b?c=1")
    assert redirected.status_code == 308
    assert redirected.headers["location"] == f"https://{HOST}:{tls_port}/a/b?c=1"
    assert get(client, port, OTHER).text == "over tls"

    # A name without a certificate of its own gets no handshake (no other name's cert shown).
    with pytest.raises(ssl.SSLError):
        tls_request(tls_port, OTHER, ca_pem=None, send=False)
    with pytest.raises(ssl.SSLError):
        tls_request(tls_port, "unknown.example.test", ca_pem=None, send=False)

    # Redirect off (the app's traffic controls): HTTP serves too.
    off = replace(route, controls=TrafficControls(https_redirect=False))
    manager.apply(replace(manager.config((off,), 2), tls=replace(tls, redirect_apps=frozenset())))
    assert manager.wait_for_generation(2)
    assert get(client, port, HOST).text == "over tls"
    assert tls_request(tls_port, HOST, ca_pem=ca_pem).body == b"over tls"


def test_a_renewed_certificate_is_served_after_the_next_apply(
    manager: NginxManager, backends: Callable[[str], Backend], tmp_path: Path
) -> None:
    backend = backends("renewed")
    tls_port = free_port()
    first, ca_first = _pair(tmp_path, "v1", (HOST,))
    second, ca_second = _pair(tmp_path, "v2", (HOST,))
    route = serving(backend)
    manager.apply(replace(manager.config((route,), 1), tls=TlsConfig(tls_port, (first,))))
    before = tls_request(tls_port, HOST, ca_pem=ca_first, send=False).fingerprint
    manager.apply(replace(manager.config((route,), 2), tls=TlsConfig(tls_port, (second,))))
    assert manager.wait_for_generation(2)
    after = tls_request(tls_port, HOST, ca_pem=ca_second, send=False).fingerprint
    assert before != after


def test_acme_challenges_go_to_the_api_before_any_control(
    manager: NginxManager,
    port: int,
    client: httpx.Client,
    backends: Callable[[str], Backend],
) -> None:
    app = backends("the app")
    api = backends("the api")  # stands for Berth's API: answers every path with its body
    guarded = replace(
        serving(app),
        controls=TrafficControls(maintenance=True, deny=("0.0.0.0/0", "::/0")),
    )
    cfg = replace(manager.config((guarded,), 1), acme_upstream=Upstream("127.0.0.1", api.port))
    manager.apply(cfg)
    token_path = "/.well-known/acme-challenge/tok_en-1"
    # Reached through the app's host despite its deny list and maintenance page, and through
    # the default server for a host no app has yet.
    assert get(client, port, HOST, token_path).text == "the api"
    assert get(client, port, "new.example.test", token_path).text == "the api"
    assert get(client, port, HOST).status_code == 503  # the maintenance page, for anyone else
    posted = client.post(f"http://127.0.0.1:{port}{token_path}", headers={"Host": HOST})
    assert posted.status_code == 403  # GET (and HEAD) only
    # Each answer is a read of Berth's store: a flood from one address is cut at nginx.
    codes = [get(client, port, HOST, token_path).status_code for _ in range(60)]
    assert 429 in codes and codes.count(200) >= 15  # a burst of 20 passes, less what came before


def test_bad_tls_input_is_refused_and_the_old_config_keeps_serving(
    manager: NginxManager, backends: Callable[[str], Backend], tmp_path: Path
) -> None:
    from berth.errors import ProxyConfigError

    backend = backends("kept")
    tls_port = free_port()
    served, ca_pem = _pair(tmp_path, "ok", (HOST,))
    route = serving(backend)
    good = replace(manager.config((route,), 1), tls=TlsConfig(tls_port, (served,)))
    manager.apply(good)
    twice = TlsConfig(tls_port, (served, replace(served, hostnames=(HOST,))))
    odd_path = TlsConfig(
        tls_port,
        (
            replace(
                served,
                chain=Path("/tmp/x;\n include /etc"),
            ),
        ),
    )
    missing = TlsConfig(tls_port, (replace(served, chain=tmp_path / "absent.pem"),))
    for bad in (twice, odd_path, missing):
        with pytest.raises(ProxyConfigError):
            manager.apply(replace(manager.config((route,), 2), tls=bad))
        assert tls_request(tls_port, HOST, ca_pem=ca_pem).body == b"kept"
