"""berth.domain.traffic: each control validated into a closed form with a precise code, loops
among redirects found, the stored form read back as it was written, and the renderer's side:
what reaches nginx's config comes from validated values only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import bcrypt
import pytest

from berth.controllers.reconciler import routes_digest
from berth.domain import traffic as t
from berth.domain.routing import RoutedApp, plan_routes
from berth.errors import InvalidInput
from berth.ingress.node_config import routes_digest as node_digest
from berth.proxy.model import NginxPaths, ProxyConfig, Route, Upstream
from berth.proxy.render import auth_files, render_nginx_conf
from berth.workloads.protocol import WorkloadInstance

OWN = frozenset({"a.example", "www.a.example", "shop.berth.test", "b.example"})


def refused(controls: t.TrafficControls, code: str, own: frozenset[str] = OWN) -> str:
    with pytest.raises(InvalidInput) as caught:
        t.validate(controls, own)
    assert caught.value.code == code, caught.value
    return str(caught.value)


# -- redirects ----------------------------------------------------------------------------


def test_redirects_between_own_hostnames_are_normalised() -> None:
    given = t.TrafficControls(
        redirects=(
            t.Redirect("WWW.A.Example.", "a.example", 308),
            t.Redirect("b.example", "a.example"),
        )
    )
    assert t.validate(given, OWN).redirects == (
        t.Redirect("b.example", "a.example", 301),
        t.Redirect("www.a.example", "a.example", 308),
    )


@pytest.mark.parametrize(
    "redirects",
    [
        (t.Redirect("a.example", "b.example"), t.Redirect("b.example", "a.example")),
        (
            t.Redirect("a.example", "b.example"),
            t.Redirect("b.example", "www.a.example"),
            t.Redirect("www.a.example", "a.example"),
        ),
        (t.Redirect("a.example", "a.example"),),
    ],
)
def test_a_redirect_loop_is_refused(redirects: tuple[t.Redirect, ...]) -> None:
    message = refused(t.TrafficControls(redirects=redirects), "redirect_loop")
    assert "a.example" in message


def test_a_chain_is_no_loop() -> None:
    chain = (t.Redirect("b.example", "www.a.example"), t.Redirect("www.a.example", "a.example"))
    assert len(t.validate(t.TrafficControls(redirects=chain), OWN).redirects) == 2


def test_find_loop_names_the_cycle() -> None:
    assert t.find_loop({"a": "b", "b": "c", "c": "b"}) == ["b", "c", "b"]
    assert t.find_loop({"a": "b", "b": "c"}) == []


@pytest.mark.parametrize(
    "redirect",
    [
        t.Redirect("a.example", "evil.example"),  # not the app's
        t.Redirect("other.example", "a.example"),
        t.Redirect("a.example\n", "b.example"),
        t.Redirect("a.example;return", "b.example"),
        t.Redirect("a.example", "b.example", 302),
        t.Redirect("a.example", "b.example", True),  # type: ignore[arg-type]
        t.Redirect(3, "b.example"),  # type: ignore[arg-type]
    ],
)
def test_bad_redirects_are_refused(redirect: t.Redirect) -> None:
    refused(t.TrafficControls(redirects=(redirect,)), "invalid_redirect")


def test_a_hostname_redirected_twice_is_refused() -> None:
    twice = (t.Redirect("b.example", "a.example"), t.Redirect("b.example", "www.a.example"))
    refused(t.TrafficControls(redirects=twice), "invalid_redirect")


def test_routable_leaves_out_redirects_of_hostnames_that_do_not_route() -> None:
    controls = t.TrafficControls(
        redirects=(t.Redirect("b.example", "a.example"), t.Redirect("www.a.example", "a.example"))
    )
    kept = t.routable(controls, ("a.example", "www.a.example"))
    assert kept.redirects == (t.Redirect("www.a.example", "a.example"),)


# -- basic auth ---------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["bob\n", "bob\nroot", "", "b ob", "bob:x", "x" * 65, "bøb"])
def test_bad_user_names_are_refused(user: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        t.user_with_password(user, "pw")
    assert caught.value.code == "invalid_basic_auth"
    hashed = t.user_with_password("ok", "pw").password_hash
    refused(t.TrafficControls(basic_auth=(t.BasicAuthUser(user, hashed),)), "invalid_basic_auth")


@pytest.mark.parametrize("password", ["", "a\nb", "tab\there", "x" * 129])
def test_bad_passwords_are_refused(password: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        t.user_with_password("bob", password)
    assert caught.value.code == "invalid_basic_auth"


def test_passwords_are_kept_as_bcrypt_hashes_nginx_can_check() -> None:
    user = t.user_with_password("bob", "s3cret: with colon")
    assert user.password_hash.startswith(f"$2b$0{t.BCRYPT_ROUNDS}$")
    assert bcrypt.checkpw(b"s3cret: with colon", user.password_hash.encode())
    assert "s3cret" not in t.to_json(t.TrafficControls(basic_auth=(user,)))


def test_a_hash_that_is_not_bcrypt_or_a_user_twice_is_refused() -> None:
    refused(
        t.TrafficControls(basic_auth=(t.BasicAuthUser("bob", "{PLAIN}pw"),)), "invalid_basic_auth"
    )
    bob = t.user_with_password("bob", "pw")
    refused(t.TrafficControls(basic_auth=(bob, bob)), "invalid_basic_auth")


# -- allow/deny ---------------------------------------------------------------------------


def test_cidrs_are_parsed_and_normalised() -> None:
    given = t.TrafficControls(
        allow=("2001:DB8:0:0::/32", "10.0.0.0/8", "127.0.0.1", "10.0.0.0/8"),
        deny=("::1",),
    )
    valid = t.validate(given, OWN)
    assert valid.allow == ("10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32")
    assert valid.deny == ("::1/128",)


@pytest.mark.parametrize(
    "cidr",
    [
        "10.0.0.0/33",
        "10.0.0.1/8",  # host bits set
        "300.1.1.1",
        "10.0.0.0/8\n",
        "10.0.0.0/8; allow all",
        "fe80::1%eth0",
        "",
        "all",
        "1.2.3.4/",
    ],
)
def test_a_cidr_that_does_not_parse_is_refused(cidr: str) -> None:
    refused(t.TrafficControls(allow=(cidr,)), "invalid_cidr")
    refused(t.TrafficControls(deny=(cidr,)), "invalid_cidr")


def test_at_most_100_cidrs() -> None:
    many = tuple(f"10.0.{i}.0/24" for i in range(101))
    refused(t.TrafficControls(allow=many), "invalid_cidr")
    assert len(t.validate(t.TrafficControls(allow=many[:100]), OWN).allow) == 100


# -- rate limit and maintenance -----------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, 0), (-1, 0), (10_001, 0), (10**12, 0), (10, -1), (10, 10_001)]
)
def test_a_rate_limit_of_0_or_absurd_is_refused(rate: int, burst: int) -> None:
    refused(t.TrafficControls(rate_limit=t.RateLimit(rate, burst)), "invalid_rate_limit")


def test_rate_limit_bounds_are_accepted() -> None:
    for rate, burst in ((1, 0), (10_000, 10_000)):
        limit = t.validate(t.TrafficControls(rate_limit=t.RateLimit(rate, burst)), OWN).rate_limit
        assert limit == t.RateLimit(rate, burst)


@pytest.mark.parametrize(("text", "rate"), [("10/s", 10), ("10", 10), (" 5r/s ", 5)])
def test_parse_rate(text: str, rate: int) -> None:
    assert t.parse_rate(text) == rate


@pytest.mark.parametrize("text", ["10/m", "ten", "-1/s", "1.5/s", ""])
def test_parse_rate_refuses_other_forms(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        t.parse_rate(text)
    assert caught.value.code == "invalid_rate_limit"


@pytest.mark.parametrize("message", ["a\nb", "x" * 1001, "bell\x07", "rtl\u202e"])
def test_bad_maintenance_messages_are_refused(message: str) -> None:
    refused(t.TrafficControls(maintenance_message=message), "invalid_maintenance")


def test_the_maintenance_page_is_escaped_ascii_without_nginx_specials() -> None:
    page = t.maintenance_page("shop", 'Back <b>soon</b> "$host" \\ é')
    assert "&lt;b&gt;soon&lt;/b&gt; &quot;&#36;host&quot; &#92; &#233;" in page
    assert page.isascii() and not set('"$\\') & set(page.split("<p>", 1)[1])


# -- stored form --------------------------------------------------------------------------


def test_the_stored_form_reads_back_as_written() -> None:
    controls = t.validate(
        t.TrafficControls(
            redirects=(t.Redirect("www.a.example", "a.example", 308),),
            basic_auth=(t.user_with_password("bob", "pw"),),
            maintenance=True,
            maintenance_message="soon",
            allow=("10.0.0.0/8",),
            deny=("10.1.0.0/16",),
            rate_limit=t.RateLimit(10, 20),
        ),
        OWN,
    )
    assert t.from_json(t.to_json(controls)) == controls
    assert t.from_json("{}") == t.NO_CONTROLS == t.from_json(None)
    assert t.to_json(t.NO_CONTROLS) == "{}"


@pytest.mark.parametrize(
    "text",
    ["[]", "{", '{"allow": ["nope"]}', '{"rate_limit": [0, 0]}', '{"basic_auth": [["a\\n", "x"]]}'],
)
def test_a_damaged_stored_value_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        t.from_json(text)


def test_apply_change_replaces_only_the_parts_given() -> None:
    current = t.TrafficControls(allow=("10.0.0.0/8",), rate_limit=t.RateLimit(5, 0))
    changed = t.apply_change(current, t.TrafficChange(maintenance=True))
    assert changed == replace(current, maintenance=True)
    removed = t.apply_change(current, t.TrafficChange(remove_rate_limit=True, allow=()))
    assert removed == t.NO_CONTROLS


# -- planner and renderer -----------------------------------------------------------------

PATHS = NginxPaths.in_dir(Path("/srv/berth/nginx"))


def _render(controls: t.TrafficControls | None) -> str:
    route = Route(
        "a1", "shop", "t1", ("a.example", "www.a.example"), (Upstream("127.0.0.1", 9000),),
        "serving", controls,
    )  # fmt: skip
    return render_nginx_conf(ProxyConfig("127.0.0.1", 8080, (route,), 1), PATHS)


def test_no_controls_render_as_before() -> None:
    assert _render(None) == _render(t.TrafficControls())
    assert "limit_req" not in _render(None) and "auth_basic" not in _render(None)


def test_every_control_renders_from_validated_values() -> None:
    controls = t.validate(
        t.TrafficControls(
            redirects=(t.Redirect("www.a.example", "a.example", 308),),
            basic_auth=(t.user_with_password("bob", "pw"),),
            allow=("10.0.0.0/8",),
            deny=("10.9.0.0/16",),
            rate_limit=t.RateLimit(7, 3),
        ),
        OWN,
    )
    text = _render(controls)
    assert "limit_req_zone $binary_remote_addr zone=a1_berth_rl:128k rate=7r/s;" in text
    assert "limit_req zone=a1_berth_rl burst=3 nodelay;" in text
    assert text.index("deny 10.9.0.0/16;") < text.index("allow 10.0.0.0/8;")
    assert text.index("allow 10.0.0.0/8;") < text.index("deny all;")
    assert "server_name a.example;" in text
    assert (
        "server_name www.a.example;\n        location / {\n"
        "            return 308 $scheme://a.example$request_uri;" in text
    )
    (name,) = auth_files(ProxyConfig("127.0.0.1", 8080, (_route_of(controls),), 1))
    assert f"auth_basic_user_file /srv/berth/nginx/htpasswd/{name};" in text


def _route_of(controls: t.TrafficControls) -> Route:
    return Route(
        "a1", "shop", "t1", ("a.example", "www.a.example"), (Upstream("127.0.0.1", 9000),),
        "serving", controls,
    )  # fmt: skip


def test_maintenance_renders_no_upstream() -> None:
    text = _render(t.TrafficControls(maintenance=True))
    assert "upstream a1_berth_app" not in text
    assert "return 503" in text and "shop is down for maintenance" in text


def test_the_planner_carries_the_controls_and_drops_redirects_that_do_not_route() -> None:
    controls = t.TrafficControls(
        redirects=(t.Redirect("b.example", "a.example"),), rate_limit=t.RateLimit(3, 0)
    )
    app = RoutedApp("a1", "shop", "t1", ("shop.berth.test", "a.example"), frozenset({"r"}),
                    controls=controls)  # fmt: skip
    instance = WorkloadInstance(
        id="c1", group="a1/web/r", tenant_id="t1", app_id="a1", revision="r", state="running",
        address="127.0.0.1", port=9000,
    )  # fmt: skip
    (route,), _ = plan_routes([app], [instance], lambda _: True)
    assert route.controls == t.TrafficControls(rate_limit=t.RateLimit(3, 0))
    plain = replace(app, controls=t.TrafficControls())
    (without,), _ = plan_routes([plain], [instance], lambda _: True)
    assert without.controls is None


def test_a_change_of_controls_changes_the_digests_that_decide_a_reload() -> None:
    # The leader reloads, and ingress nodes get a new generation, only when these change.
    plain = _route_of(t.TrafficControls(rate_limit=t.RateLimit(5, 0)))
    changed = replace(plain, controls=t.TrafficControls(rate_limit=t.RateLimit(6, 0)))
    assert routes_digest((plain,)) != routes_digest((changed,))
    assert node_digest((plain,), 80) != node_digest((changed,), 80)
    assert routes_digest((plain,)) == routes_digest((replace(plain),))
