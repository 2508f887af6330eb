"""What nginx is told to serve, from the certificate manager's statuses (a fake issuer, a fake
clock): own certificates and the operator's wildcard, the redirect per app, expiry, the
names never ordered, and a version that moves only when what is served moves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from berth.domain.traffic import TrafficControls
from berth.proxy.model import Route
from berth.services.certificates import Certificates
from berth.settings import Settings
from tests.certs import selfsigned
from tests.certs.fake_issuer import FakeIssuer
from tests.certs.fakeclock import FakeClock


def _route(app_id: str, *hostnames: str, controls: TrafficControls | None = None) -> Route:
    return Route(app_id, f"app{app_id}", "t1", hostnames, (), "no_instances", controls)


def _certs(tmp_path: Path, clock: FakeClock, issuer: FakeIssuer | None) -> Certificates:
    settings = Settings(home=tmp_path, base_domain="berth.example", https_port=8443)
    return Certificates(settings, issuer, clock=clock)


def test_issued_names_and_the_wildcard_are_served_and_the_version_moves_with_them(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    certs = _certs(tmp_path, clock, FakeIssuer(lifetime=dt.timedelta(days=10)))
    routes = (
        _route("a1", "one.berth.example", "shop.example.com"),
        _route("a2", "two.berth.example", controls=TrafficControls(https_redirect=False)),
    )
    assert certs.tls_config(routes) is None  # nothing issued: no HTTPS listener at all
    version = certs.version

    certs.reconcile(["shop.example.com", "one.berth.example", "dev.localhost"])
    assert certs.version == version + 1
    tls = certs.tls_config(routes)
    assert tls is not None and tls.port == 8443
    served = {h for c in tls.certificates for h in c.hostnames}
    assert served == {"shop.example.com", "one.berth.example"}
    assert tls.redirect_apps == frozenset({"a1"})  # a2 turned the redirect off
    assert "dev.localhost" not in certs.manager.statuses()  # never ordered
    assert certs.view("dev.localhost").state == "off"

    wildcard = selfsigned.issue(("*.berth.example",))
    certs.upload("*.berth.example", wildcard.chain_pem, wildcard.key_pem)
    tls = certs.tls_config(routes)
    assert tls is not None
    by_host = {h: c.chain for c in tls.certificates for h in c.hostnames}
    assert by_host["two.berth.example"] != by_host["one.berth.example"]  # own cert first
    assert certs.view("two.berth.example").source == "wildcard"

    unchanged = certs.version
    assert certs.refresh() is False and certs.version == unchanged

    # Past their expiry (no renewal possible here: the fake CA now fails), names drop out.
    clock.advance(dt.timedelta(days=11))
    certs.refresh()
    tls = certs.tls_config(routes)
    assert tls is not None
    assert {h for c in tls.certificates for h in c.hostnames} == {
        "one.berth.example",
        "two.berth.example",
    }  # the wildcard (30 days) still covers the platform names; shop.example.com is gone


def test_without_a_ca_nothing_is_ordered_and_uploads_still_work(tmp_path: Path) -> None:
    certs = _certs(tmp_path, FakeClock(), None)
    assert certs.reconcile(["a.berth.example"]) == {}
    view = certs.view("a.berth.example")
    assert view.state == "off" and "BERTH_ACME_DIRECTORY_URL" in str(view.reason)
    made = selfsigned.issue(("a.berth.example",))
    certs.upload("a.berth.example", made.chain_pem, made.key_pem)
    assert certs.pair_for("a.berth.example") is not None


def test_forget_unknown_drops_names_no_app_claims_but_keeps_the_wildcard(tmp_path: Path) -> None:
    certs = _certs(tmp_path, FakeClock(), FakeIssuer())
    certs.reconcile(["kept.berth.example", "gone.berth.example"])
    wildcard = selfsigned.issue(("*.berth.example",))
    certs.upload("*.berth.example", wildcard.chain_pem, wildcard.key_pem)
    certs.forget_unknown({"kept.berth.example"})
    assert set(certs.manager.statuses()) == {"kept.berth.example", "*.berth.example"}
