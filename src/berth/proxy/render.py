"""Render a ``ProxyConfig`` into one whole, self-contained nginx.conf. Pure: no I/O.

Every value that reaches the config is validated here again, even though the API validated
it before: a name that slipped through elsewhere must not be able to inject nginx directives
(defence in depth). Anything unexpected raises ``ValueError`` and nothing is rendered.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from berth.billing import plans
from berth.domain import traffic
from berth.domain.names import is_valid_domain
from berth.errors import InvalidInput
from berth.proxy import dynamic
from berth.proxy.model import NginxPaths, ProxyConfig, Route, TlsConfig, Upstream

__all__ = ["AUTH_DIR", "AUTH_FILE_NAME", "NginxPaths", "auth_files", "peers", "render_nginx_conf"]

# fullmatch everywhere: with re.match, "$" also matches before a trailing newline.
_APP_ID = re.compile(r"[a-z0-9]{1,64}")
_APP_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_HOSTNAME_CHARS = re.compile(r"[a-z0-9.-]{1,253}")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/-]*")
_SYSTEM_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Characters that would end or alter an nginx quoted string, or start a variable.
_UNQUOTABLE = re.compile(r'["\\$\x00-\x1f\x7f]')

# The app id comes first: nginx finds the upstream of every proxy_pass by comparing its name
# with each upstream defined so far, so a prefix common to all names made loading a config
# quadratic in the common part (0.6 s instead of 0.3 s of `nginx -t` at 5,000 apps).
UPSTREAM_SUFFIX = "_berth_app"
# Validated routes are kept by value: a snapshot differs from the previous one in a few routes,
# so a re-render validates only those (10 ms instead of 150 ms at 5,000 routes).
_ROUTE_CACHE_SIZE = 16384
# Basic auth users of an app live in <prefix>/htpasswd/<app id>-<digest of the content>: a
# new set of users is a new file the new config names, so a config and its users go live
# together (and a rejected config leaves the old file serving).
AUTH_DIR = "htpasswd"
AUTH_FILE_NAME = re.compile(r"[a-z0-9]{1,64}-[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class _ControlsView:
    """An app's validated traffic controls, as config text."""

    served: tuple[str, ...]  # the hostnames not redirected elsewhere
    redirects: tuple[tuple[tuple[str, ...], str, int], ...]  # (sources, target, code)
    access: tuple[str, ...]  # "deny 10.0.0.0/8", "allow ...", then "deny all" if any allow
    auth_file: str  # "" when no basic auth
    auth_text: str
    rate: int  # requests per second per client address; 0 when no limit
    burst: int
    maintenance_page: str  # quoted; "" when not in maintenance


@dataclass(frozen=True, slots=True)
class _RouteView:
    """A validated route, shaped for the template."""

    app_id: str
    app_name: str
    upstream_name: str
    hostnames: tuple[str, ...]
    servers: tuple[str, ...]
    state: str
    page: str
    controls: _ControlsView | None = None
    max_body_mb: int | None = None  # None: the http-level client_max_body_size


def render_nginx_conf(cfg: ProxyConfig, paths: NginxPaths) -> str:
    """Return the complete nginx.conf for ``cfg``. The same input always gives the same text,
    whatever the order of routes, hostnames or upstreams, so an unchanged snapshot never
    causes a reload."""
    _check_paths(paths)
    _check_generation(cfg.generation)
    routes = _route_views(cfg.routes)
    hostname_count = sum(len(route.hostnames) for route in routes)
    listen = _listen_address(cfg.listen_host, cfg.listen_port)
    auth_dir = f"{paths.prefix}/{AUTH_DIR}"
    tls = _tls_view(cfg.tls, cfg.listen_host)
    challenge = _challenge_location(cfg.acme_upstream)
    is_dynamic = paths.control_socket is not None
    upstream = _dynamic_upstream_block if is_dynamic else _upstream_block
    return _template().render(
        generation=cfg.generation,
        paths=paths,
        dynamic=is_dynamic,
        modules=dynamic.module_lines(paths.lua_modules) if paths.lua_modules else "",
        lua_path=dynamic.LUA_PATH,
        init_lua=dynamic.INIT_LUA,
        control_lua=dynamic.CONTROL_LUA,
        generation_lua=dynamic.GENERATION_LUA,
        peers_path=dynamic.PEERS_PATH,
        listen=listen,
        tls_listen=tls.listen if tls else "",
        challenge_location=challenge,
        challenge_zone=bool(challenge),
        limit_zones="".join(_limit_zone(r) for r in routes if r.controls and r.controls.rate),
        upstream_blocks="".join(upstream(r) for r in routes if r.state == "serving"),
        server_blocks="".join([_route_blocks(r, listen, auth_dir, tls, challenge) for r in routes]),
        # Generous so nginx can always build the hash; too small a size fails `nginx -t`.
        server_names_hash_max_size=max(1024, 4 * hostname_count),
        not_found_page=_nginx_quote(
            _page("404 Not Found", "No app is configured for this host", "")
        ),
    )


def peers(cfg: ProxyConfig) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each serving app's instances as ``host:port`` (validated like the config): what a
    dynamic nginx is told at run time instead of reading them in its config."""
    return tuple((r.app_id, r.servers) for r in _route_views(cfg.routes) if r.state == "serving")


def auth_files(cfg: ProxyConfig) -> dict[str, str]:
    """The basic auth files the config of ``cfg`` names: file name (in ``AUTH_DIR`` under
    the nginx prefix) -> content, ``user:bcrypt hash`` lines. Validated like the config."""
    return {
        r.controls.auth_file: r.controls.auth_text
        for r in _route_views(cfg.routes)
        if r.controls is not None and r.controls.auth_file
    }


def _limit_zone(route: _RouteView) -> str:
    assert route.controls is not None
    # Named from the app id alone. 128 KB holds ~2,000 client addresses (when full, nginx
    # forgets the least recently seen first); 1 MB each made 5,000 apps 5 GB of shared memory
    # to map at every reload (2 s instead of 1.1 s for the reload, measured here).
    return (
        f"    limit_req_zone $binary_remote_addr zone={_zone_name(route.app_id)}:128k "
        f"rate={route.controls.rate}r/s;\n"
    )


def _zone_name(app_id: str) -> str:
    return f"{app_id}_berth_rl"


# A route's blocks are text of its validated view alone (and the listen address): kept by
# value like the views, so a snapshot that changed a few routes formats only those (rendering
# 10,000 routes through the template took ~0.1 s).
@lru_cache(maxsize=_ROUTE_CACHE_SIZE)
def _upstream_block(route: _RouteView) -> str:
    servers = "".join(
        f"        server {server} max_fails=1 fail_timeout=2s;\n" for server in route.servers
    )
    return (
        f"\n    # app {route.app_name} ({route.app_id})\n"
        f"    upstream {route.upstream_name} {{\n"
        f"{servers}"
        "        keepalive 16;\n"
        "        # Below the idle timeout of common app servers, so nginx never reuses a\n"
        "        # connection the app is closing.\n"
        "        keepalive_timeout 4s;\n"
        "    }\n"
    )


@dataclass(frozen=True, slots=True)
class _TlsView:
    """The validated TLS part: where HTTPS listens, each hostname's (chain, key) paths."""

    listen: str
    port: int
    pairs: dict[str, tuple[str, str]]
    redirect_apps: frozenset[str]


def _tls_view(tls: TlsConfig | None, host: str) -> _TlsView | None:
    if tls is None:
        return None
    if not isinstance(tls, TlsConfig):
        raise ValueError("tls must be a TlsConfig")
    # HTTP/2 is offered by ALPN; a client that asks for none gets HTTP/1.1.
    listen = _listen_address(host, _check_port(tls.port)) + " ssl http2"
    pairs: dict[str, tuple[str, str]] = {}
    for served in tls.certificates:
        _check_path(served.chain)
        _check_path(served.key)
        for hostname in _check_hostnames(served.hostnames, "certificate"):
            if hostname in pairs:
                raise ValueError(f"hostname {hostname!r} has more than one certificate")
            pairs[hostname] = (str(served.chain), str(served.key))
    for app_id in tls.redirect_apps:
        _check_app_id(app_id)
    return _TlsView(listen, tls.port, pairs, frozenset(tls.redirect_apps))


def _challenge_location(upstream: Upstream | None) -> str:
    """HTTP-01 answers come from a Berth API server (it reads pending challenges from the
    store), for every host, before any of an app's controls: a CA is no client of the app."""
    if upstream is None:
        return ""
    address = _format_address(upstream.host, upstream.port)
    return (
        "        location ^~ /.well-known/acme-challenge/ {\n"
        "            auth_basic off;\n"
        "            allow all;\n"
        "            limit_except GET { deny all; }\n"
        # Anyone may ask: each answer is a read of the store, so a flood is cut here.
        "            limit_req zone=berth_acme burst=20 nodelay;\n"
        "            limit_req_status 429;\n"
        '            proxy_set_header Cookie "";\n'
        '            proxy_set_header Authorization "";\n'
        f"            proxy_pass http://{address};\n"
        "        }\n"
    )


def _route_blocks(
    route: _RouteView, listen: str, auth_dir: str, tls: _TlsView | None, challenge: str
) -> str:
    """The plain-HTTP server of a route and, for its hostnames with a certificate, HTTPS
    servers (one per certificate) and the redirect from HTTP when the app wants it."""
    served = route.hostnames if route.controls is None else route.controls.served
    by_pair: dict[tuple[str, str], list[str]] = {}
    if tls is not None:
        for hostname in served:
            pair = tls.pairs.get(hostname)
            if pair is not None:
                by_pair.setdefault(pair, []).append(hostname)
    covered = tuple(sorted(h for hosts in by_pair.values() for h in hosts))
    redirect = tls is not None and bool(covered) and route.app_id in tls.redirect_apps
    plain = tuple(h for h in served if h not in covered) if redirect else served
    blocks = []
    if plain:
        blocks.append(_server_block(route, listen, auth_dir, plain, challenge))
    if tls is not None and redirect:
        blocks.append(_https_redirect_block(route, listen, covered, tls.port, challenge))
    if tls is not None:
        for (chain, key), hosts in sorted(by_pair.items()):
            blocks.append(
                _server_block(route, tls.listen, auth_dir, tuple(hosts), _ssl_lines(chain, key))
            )
    blocks.append(_redirect_blocks(route, listen, challenge))
    if tls is not None:
        blocks.append(_tls_redirect_blocks(route, tls))
    return "".join(blocks)


def _ssl_lines(chain: str, key: str) -> str:
    return f"        ssl_certificate {chain};\n        ssl_certificate_key {key};\n"


@lru_cache(maxsize=_ROUTE_CACHE_SIZE)
def _https_redirect_block(
    route: _RouteView, listen: str, hostnames: tuple[str, ...], port: int, challenge: str
) -> str:
    authority = "$host" if port == 443 else f"$host:{port}"
    # 308 keeps the method and body (a form posted to http:// is posted again to https://).
    return (
        f"\n    # app {route.app_name} ({route.app_id}): HTTP to HTTPS\n"
        "    server {\n"
        f"        listen {listen};\n"
        f"        server_name {' '.join(hostnames)};\n"
        f"        set $berth_app {route.app_id};\n"
        f"{_body_line(route)}"
        f"{challenge}"
        "        location / {\n"
        f"            return 308 https://{authority}$request_uri;\n"
        "        }\n"
        "    }\n"
    )


@lru_cache(maxsize=_ROUTE_CACHE_SIZE)
def _dynamic_upstream_block(route: _RouteView) -> str:
    # No instance in the text: the balancer reads them from the shared dictionary, so a
    # change of instances is no change of the config (no reload).
    return (
        f"\n    # app {route.app_name} ({route.app_id}): instances set at run time\n"
        f"    upstream {route.upstream_name} {{\n"
        "        server 0.0.0.1:1;  # never used: the balancer below picks the peer\n"
        f'        balancer_by_lua_block {{ berth_balance("{route.app_id}") }}\n'
        "        keepalive 16;\n"
        "        keepalive_timeout 4s;\n"
        "    }\n"
    )


@lru_cache(maxsize=_ROUTE_CACHE_SIZE)
def _server_block(
    route: _RouteView, listen: str, auth_dir: str, served: tuple[str, ...], extra: str
) -> str:
    controls = route.controls
    if controls is not None and controls.maintenance_page and route.state != "suspended":
        # Like every `return`, answered before the access checks and the rate limit.
        locations = (
            "        location / {\n"
            "            default_type text/html;\n"
            '            add_header Retry-After "300" always;\n'
            '            add_header Cache-Control "no-store" always;\n'
            f"            return 503 {controls.maintenance_page};\n"
            "        }\n"
        )
    elif route.state == "serving":
        locations = (
            "        location / {\n"
            f"            proxy_pass http://{route.upstream_name};\n"
            "        }\n"
            "\n"
            "        # Only nginx's own 502/504 (every instance failed); the app's responses pass"
            " as is.\n"
            "        error_page 502 504 @berth_not_responding;\n"
            "        location @berth_not_responding {\n"
            "            default_type text/html;\n"
            '            add_header Cache-Control "no-store" always;\n'
            f"            return 502 {route.page};\n"
            "        }\n"
        )
    else:
        locations = (
            "        location / {\n"
            "            default_type text/html;\n"
            '            add_header Retry-After "30" always;\n'
            '            add_header Cache-Control "no-store" always;\n'
            f"            return 503 {route.page};\n"
            "        }\n"
        )
    return (
        f"\n    # app {route.app_name} ({route.app_id}): {route.state}\n"
        "    server {\n"
        f"        listen {listen};\n"
        f"        server_name {' '.join(served)};\n"
        # The app this traffic counts for (berth.metrics): the route's id, never the Host.
        f"        set $berth_app {route.app_id};\n"
        f"{_body_line(route)}"
        f"{_control_lines(route, auth_dir)}"
        f"{extra}"
        "\n"
        f"{locations}"
        "    }\n"
    )


def _body_line(route: _RouteView) -> str:
    # nginx answers 413 itself above it, and stops reading: the app never sees the body.
    if route.max_body_mb is None:
        return ""
    return f"        client_max_body_size {route.max_body_mb}m;\n"


def _control_lines(route: _RouteView, auth_dir: str) -> str:
    controls = route.controls
    if controls is None:
        return ""
    lines = [f"        {line};\n" for line in controls.access]
    if controls.auth_file:
        lines.append('        auth_basic "Restricted";\n')
        lines.append(f"        auth_basic_user_file {auth_dir}/{controls.auth_file};\n")
    if controls.rate:
        lines.append(
            f"        limit_req zone={_zone_name(route.app_id)} burst={controls.burst} nodelay;\n"
        )
        lines.append("        limit_req_status 429;\n")
    return "".join(lines)


def _redirect_blocks(route: _RouteView, listen: str, challenge: str) -> str:
    if route.controls is None:
        return ""
    return "".join(
        f"\n    # app {route.app_name} ({route.app_id}): redirect to {target}\n"
        "    server {\n"
        f"        listen {listen};\n"
        f"        server_name {' '.join(sources)};\n"
        f"{_body_line(route)}"
        f"{challenge}"
        "        location / {\n"
        f"            return {code} $scheme://{target}$request_uri;\n"
        "        }\n"
        "    }\n"
        for sources, target, code in route.controls.redirects
    )


def _tls_redirect_blocks(route: _RouteView, tls: _TlsView) -> str:
    """A redirect's source answers over HTTPS too when it has a certificate."""
    if route.controls is None:
        return ""
    blocks = []
    for sources, target, code in route.controls.redirects:
        by_pair: dict[tuple[str, str], list[str]] = {}
        for source in sources:
            pair = tls.pairs.get(source)
            if pair is not None:
                by_pair.setdefault(pair, []).append(source)
        for (chain, key), hosts in sorted(by_pair.items()):
            blocks.append(
                f"\n    # app {route.app_name} ({route.app_id}): redirect to {target} (HTTPS)\n"
                "    server {\n"
                f"        listen {tls.listen};\n"
                f"        server_name {' '.join(hosts)};\n"
                f"{_ssl_lines(chain, key)}"
                f"{_body_line(route)}"
                f"        return {code} https://{target}$request_uri;\n"
                "    }\n"
            )
    return "".join(blocks)


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("berth.proxy", "templates"),
        autoescape=False,  # noqa: S701 - this renders nginx config, not HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("nginx.conf.j2")


def _check_paths(paths: NginxPaths) -> None:
    for path in (
        paths.prefix,
        paths.conf_file,
        paths.pid_file,
        paths.lock_file,
        paths.error_log,
        paths.access_log,
        paths.temp_dir,
    ):
        _check_path(path)
    for optional in (paths.metrics_log, paths.control_socket, paths.lua_modules):
        if optional is not None:
            _check_path(optional)
    for name in (paths.worker_user, paths.worker_group):
        if name is not None and not _SYSTEM_NAME.fullmatch(name):
            raise ValueError(f"invalid worker user or group name {name!r}")
    if (paths.worker_user is None) != (paths.worker_group is None):
        raise ValueError("worker_user and worker_group must be set together")


def _check_path(path: Path) -> None:
    # Paths are written unquoted into the config, so only plain characters are allowed.
    text = str(path)
    if not _SAFE_PATH.fullmatch(text):
        raise ValueError(
            f"nginx path {text!r} must be absolute and use only letters, digits, '.', '_', "
            "'-' and '/'"
        )


def _check_generation(generation: int) -> None:
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ValueError(f"generation must be a non-negative integer, not {generation!r}")


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"invalid port {port!r}")
    return port


def _format_address(host: str, port: int) -> str:
    """``host:port`` for an IP literal, bracketing IPv6. Hostnames are refused: nginx would
    resolve them once at load time, which hides failures."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid IP address {host!r}") from None
    _check_port(port)
    if address.version == 6:
        return f"[{address.compressed}]:{port}"
    return f"{address.compressed}:{port}"


def _listen_address(host: str, port: int) -> str:
    return _format_address(host, port)


def _route_views(routes: tuple[Route, ...]) -> tuple[_RouteView, ...]:
    views = tuple(sorted((_checked_route(route) for route in routes), key=lambda v: v.app_id))
    _check_unique(views)
    return views


def _checked_route(route: Route) -> _RouteView:
    # Equal is not identical: port True equals port 1 and hashes alike, so only plain str and
    # int fields may be answered from the cache; anything else is validated (and refused).
    if _is_plain(route):
        return _cached_route_view(route)
    return _route_view(route)


def _is_plain(route: Route) -> bool:
    return (
        type(route) is Route
        and type(route.app_id) is str
        and type(route.app_name) is str
        and type(route.tenant_id) is str
        and type(route.state) is str
        and type(route.hostnames) is tuple
        and type(route.upstreams) is tuple
        and all(type(h) is str for h in route.hostnames)
        and all(
            type(u) is Upstream and type(u.host) is str and type(u.port) is int
            for u in route.upstreams
        )
        and (route.controls is None or _plain_controls(route.controls))
        and (route.max_body_mb is None or type(route.max_body_mb) is int)
    )


def _plain_controls(c: traffic.TrafficControls) -> bool:
    limit = c.rate_limit
    return (
        type(c) is traffic.TrafficControls
        and type(c.redirects) is tuple
        and all(
            type(r) is traffic.Redirect
            and type(r.source) is str
            and type(r.target) is str
            and type(r.code) is int
            for r in c.redirects
        )
        and type(c.basic_auth) is tuple
        and all(
            type(u) is traffic.BasicAuthUser
            and type(u.user) is str
            and type(u.password_hash) is str
            for u in c.basic_auth
        )
        and type(c.maintenance) is bool
        and type(c.https_redirect) is bool
        and type(c.maintenance_message) is str
        and type(c.allow) is tuple
        and all(type(a) is str for a in c.allow)
        and type(c.deny) is tuple
        and all(type(d) is str for d in c.deny)
        and (
            limit is None
            or (
                type(limit) is traffic.RateLimit
                and type(limit.per_second) is int
                and type(limit.burst) is int
            )
        )
    )


@lru_cache(maxsize=_ROUTE_CACHE_SIZE)
def _cached_route_view(route: Route) -> _RouteView:
    # Only a valid route is cached: lru_cache keeps no result when the call raises.
    return _route_view(route)


def _check_unique(views: tuple[_RouteView, ...]) -> None:
    seen_ids: set[str] = set()
    owner_of: dict[str, str] = {}
    for view in views:
        if view.app_id in seen_ids:
            raise ValueError(f"app id {view.app_id!r} appears in more than one route")
        seen_ids.add(view.app_id)
        for hostname in view.hostnames:
            # nginx would only warn and pick one; that could send one tenant's domain to
            # another tenant's app, so refuse the whole snapshot instead.
            if hostname in owner_of:
                raise ValueError(
                    f"hostname {hostname!r} is claimed by apps {owner_of[hostname]!r} "
                    f"and {view.app_id!r}"
                )
            owner_of[hostname] = view.app_id


def _route_view(route: Route) -> _RouteView:
    app_id = _check_app_id(route.app_id)
    app_name = _check_app_name(route.app_name)
    hostnames = _check_hostnames(route.hostnames, app_id)
    servers = _upstream_servers(route.upstreams)
    state = route.state
    # A "serving" route without instances would render an empty upstream, which nginx
    # rejects; answering "no healthy instances" is the honest equivalent.
    if state == "serving" and not servers:
        state = "no_instances"
    if state not in ("serving", "no_instances", "suspended"):
        raise ValueError(f"invalid route state {state!r}")
    controls = _controls_view(route.controls, app_id, app_name, hostnames)
    if controls is not None and controls.maintenance_page:
        servers = ()  # the maintenance page answers: no upstream is needed
        if state == "serving":
            state = "no_instances"
    return _RouteView(
        app_id=app_id,
        app_name=app_name,
        upstream_name=app_id + UPSTREAM_SUFFIX,
        hostnames=hostnames,
        servers=servers if state == "serving" else (),
        state=state,
        page=_nginx_quote(_state_page(state, app_name)),
        controls=controls,
        max_body_mb=_check_body_mb(route.max_body_mb, app_id),
    )


def _check_body_mb(value: int | None, app_id: str) -> int | None:
    if value is None:
        return None
    try:
        return plans.check_request_body_mb(value)
    except InvalidInput as exc:
        raise ValueError(f"invalid request body limit for app {app_id!r}: {exc}") from None


def _controls_view(
    given: traffic.TrafficControls | None, app_id: str, app_name: str, hostnames: tuple[str, ...]
) -> _ControlsView | None:
    """The controls validated again, now against the hostnames the route serves (the
    planner left out redirects of other hostnames), and shaped as config text."""
    if given is None:
        return None
    try:
        controls = traffic.validate(given, hostnames)
    except InvalidInput as exc:
        raise ValueError(f"invalid traffic controls for app {app_id!r}: {exc}") from None
    if controls.empty:
        return None
    by_target: dict[tuple[str, int], list[str]] = {}
    for redirect in controls.redirects:
        by_target.setdefault((redirect.target, redirect.code), []).append(redirect.source)
    redirected = {r.source for r in controls.redirects}
    served = tuple(h for h in hostnames if h not in redirected)
    # Unreachable after validate (no loops), kept so no server block is ever nameless.
    if not served:
        raise ValueError(f"every hostname of app {app_id!r} is redirected")
    access = [f"deny {_network(c)}" for c in controls.deny]
    access += [f"allow {_network(c)}" for c in controls.allow]
    if controls.allow:
        access.append("deny all")
    auth_text = "".join(f"{u.user}:{u.password_hash}\n" for u in controls.basic_auth)
    auth_file = ""
    if auth_text:
        auth_file = f"{app_id}-{hashlib.sha256(auth_text.encode()).hexdigest()[:16]}"
    limit = controls.rate_limit
    page = ""
    if controls.maintenance:
        page = _nginx_quote(traffic.maintenance_page(app_name, controls.maintenance_message))
    return _ControlsView(
        served=served,
        redirects=tuple(
            (tuple(sorted(sources)), target, code)
            for (target, code), sources in sorted(by_target.items())
        ),
        access=tuple(access),
        auth_file=auth_file,
        auth_text=auth_text,
        rate=limit.per_second if limit else 0,
        burst=limit.burst if limit else 0,
        maintenance_page=page,
    )


def _network(cidr: str) -> str:
    # Validated already; parsed once more so only ipaddress's own text reaches the config.
    return ipaddress.ip_network(cidr, strict=True).compressed


def _check_app_id(app_id: str) -> str:
    if not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id):
        raise ValueError(f"invalid app id {app_id!r}: expected 1-64 of [a-z0-9]")
    return app_id


def _check_app_name(app_name: str) -> str:
    if not isinstance(app_name, str) or not _APP_NAME.fullmatch(app_name):
        raise ValueError(f"invalid app name {app_name!r}")
    return app_name


def _check_hostnames(hostnames: tuple[str, ...], app_id: str) -> tuple[str, ...]:
    if not hostnames:
        raise ValueError(f"route for app {app_id!r} has no hostnames")
    for hostname in hostnames:
        if not isinstance(hostname, str):
            raise ValueError(f"invalid hostname {hostname!r}")
        # The character check catches what a regex anchored with "$" lets through
        # (a trailing newline); is_valid_domain enforces the label rules.
        if not _HOSTNAME_CHARS.fullmatch(hostname) or not is_valid_domain(hostname):
            raise ValueError(f"invalid hostname {hostname!r} for app {app_id!r}")
    return tuple(sorted(set(hostnames)))


def _upstream_servers(upstreams: tuple[Upstream, ...]) -> tuple[str, ...]:
    return tuple(sorted({_format_address(u.host, u.port) for u in upstreams}))


def _state_page(state: str, app_name: str) -> str:
    if state == "no_instances":
        return _page(
            "503 No healthy instances",
            f"{app_name} has no healthy instances",
            "The app is starting, or none of its instances passed its health check. "
            "Please try again in a moment.",
        )
    if state == "suspended":
        return _page(
            "503 App suspended",
            "This app is suspended",
            "Its owner's account is suspended. Please contact the owner of this site.",
        )
    return _page(
        "502 Bad Gateway",
        f"{app_name} is not responding",
        "None of its instances answered. Please try again in a moment.",
    )


def _page(title: str, heading: str, detail: str) -> str:
    body = f"<h1>{heading}</h1>" + (f"<p>{detail}</p>" if detail else "")
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title></head>"
        f"<body>{body}</body></html>\n"
    )


def _nginx_quote(text: str) -> str:
    """A double-quoted nginx string. Our pages never need quotes, backslashes or ``$``, so
    instead of escaping them we refuse them (``$`` would be expanded as a variable)."""
    if _UNQUOTABLE.search(text.rstrip("\n")):
        raise ValueError(f"text cannot be placed in an nginx string: {text!r}")
    return '"' + text.rstrip("\n") + '\\n"'
