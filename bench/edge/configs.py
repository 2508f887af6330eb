"""Pure config rendering for the candidate proxies and the backends (no I/O).

Every name that reaches a config is checked against a strict pattern first: the prototypes
keep Berth's rule that untrusted text never reaches a proxy config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

LOOPBACK = "127.0.0.1"
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
NGINX_MODULES = "/usr/lib/nginx/modules"

Routes = Mapping[str, Sequence[int]]  # domain -> upstream ports on loopback


def check_domain(domain: str) -> str:
    if not _HOSTNAME.match(domain):
        raise ValueError(f"not a hostname: {domain!r}")
    return domain


def check_port(port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"not a port: {port!r}")
    return port


def backend_tag(port: int) -> str:
    """What the backend on ``port`` answers: the poller tells upstreams apart by it."""
    return f"b{check_port(port)}"


def _nginx_common(prefix: str) -> str:
    # One worker each (proxies and the backend alike): a fair share of 2 shared cores.
    return (
        "worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 8192; }\n"
    )


def _nginx_http_common(prefix: str) -> str:
    # Keep-alive long and unlimited in count, so that only a route change can close one.
    return (
        "    access_log off;\n"
        "    keepalive_timeout 300s;\n"
        "    keepalive_requests 100000000;\n"
        f"    client_body_temp_path {prefix}/body;\n"
        f"    proxy_temp_path {prefix}/proxy;\n"
        f"    fastcgi_temp_path {prefix}/fastcgi;\n"
        f"    uwsgi_temp_path {prefix}/uwsgi;\n"
        f"    scgi_temp_path {prefix}/scgi;\n"
    )


def render_backends_nginx(prefix: str, ports: Sequence[int]) -> str:
    """One nginx serving every backend port, each answering its own tag (keep-alive)."""
    servers = "".join(
        f"    server {{ listen {LOOPBACK}:{check_port(p)}; "
        f'location / {{ default_type text/plain; return 200 "{backend_tag(p)}\\n"; }} }}\n'
        for p in ports
    )
    return _nginx_common(prefix) + "http {\n" + _nginx_http_common(prefix) + servers + "}\n"


def upstream_name(domain: str) -> str:
    return "u_" + check_domain(domain).replace(".", "_").replace("-", "_")


_PROXY_LOCATION = (
    'proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host;'
)


def render_nginx_reload(prefix: str, port: int, routes: Routes) -> str:
    """Today's way: an upstream block and a server block per domain; a change is a reload."""
    parts = [_nginx_common(prefix), "http {\n", _nginx_http_common(prefix)]
    parts.append("    server_names_hash_max_size 65536;\n    server_names_hash_bucket_size 128;\n")
    parts.append(
        f"    server {{ listen {LOOPBACK}:{check_port(port)} default_server; return 404; }}\n"
    )
    for domain in sorted(routes):
        name = upstream_name(domain)
        servers = " ".join(f"server {LOOPBACK}:{check_port(p)};" for p in routes[domain])
        if not servers:
            raise ValueError(f"{domain}: no upstreams")
        parts.append(f"    upstream {name} {{ {servers} keepalive 16; }}\n")
        parts.append(
            f"    server {{ listen {LOOPBACK}:{port}; server_name {domain}; "
            f"location / {{ proxy_pass http://{name}; {_PROXY_LOCATION} }} }}\n"
        )
    parts.append("}\n")
    return "".join(parts)


# Routes live in a shared dict ("domain" -> "127.0.0.1:p 127.0.0.1:q"), read on every
# request; the balancer picks the peer the access phase chose. No reload for any route change.
_LUA_ACCESS = r"""
            local peers = ngx.shared.routes:get(ngx.var.host)
            if not peers then return ngx.exit(404) end
            local list = {}
            for p in peers:gmatch("%S+") do list[#list + 1] = p end
            local n = ngx.shared.rr:incr(ngx.var.host, 1, 0)
            local h, p = list[(n % #list) + 1]:match("^(.+):(%d+)$")
            ngx.ctx.peer_host = h
            ngx.ctx.peer_port = tonumber(p)
"""

_LUA_BALANCER = r"""
            local b = require "ngx.balancer"
            local ok, err = b.set_current_peer(ngx.ctx.peer_host, ngx.ctx.peer_port)
            if not ok then
                ngx.log(ngx.ERR, "set_current_peer: ", err)
                return ngx.exit(502)
            end
"""

# The control endpoint (loopback, its own port): POST lines "domain port port...", DELETE
# ?domain=. It checks every field against a strict pattern, like Berth's API would.
_LUA_CONTROL = r"""
            local routes = ngx.shared.routes
            local method = ngx.req.get_method()
            if method == "DELETE" then
                local d = ngx.var.arg_domain
                if not d or not d:match("^[a-z0-9.-]+$") then return ngx.exit(400) end
                routes:delete(d)
                return ngx.exit(204)
            end
            if method ~= "POST" then return ngx.exit(405) end
            ngx.req.read_body()
            local body = ngx.req.get_body_data()
            if not body then
                local f = ngx.req.get_body_file()
                if not f then return ngx.exit(400) end
                local fh = io.open(f, "rb"); body = fh:read("*a"); fh:close()
            end
            local n = 0
            for line in body:gmatch("[^\n]+") do
                local d, rest = line:match("^([a-z0-9.-]+) ([0-9 ]+)$")
                if not d then return ngx.exit(400) end
                local peers = {}
                for p in rest:gmatch("%d+") do peers[#peers + 1] = "127.0.0.1:" .. p end
                if #peers == 0 then return ngx.exit(400) end
                local ok, err = routes:set(d, table.concat(peers, " "))
                if not ok then ngx.log(ngx.ERR, err); return ngx.exit(507) end
                n = n + 1
            end
            ngx.say(n)
"""


def render_nginx_lua(prefix: str, port: int, control_port: int) -> str:
    """nginx + the distro's Lua module: one static config, routes set at run time."""
    return (
        f"load_module {NGINX_MODULES}/ndk_http_module.so;\n"
        f"load_module {NGINX_MODULES}/ngx_http_lua_module.so;\n"
        + _nginx_common(prefix)
        + "http {\n"
        + _nginx_http_common(prefix)
        + '    lua_package_path "/usr/share/lua/5.1/?.lua;;";\n'
        + "    lua_shared_dict routes 64m;\n"
        + "    lua_shared_dict rr 8m;\n"
        + "    upstream dyn {\n        server 0.0.0.1:1;\n"
        + "        balancer_by_lua_block {"
        + _LUA_BALANCER
        + "        }\n        keepalive 64;\n    }\n"
        + f"    server {{\n        listen {LOOPBACK}:{check_port(port)} default_server;\n"
        + "        location / {\n            access_by_lua_block {"
        + _LUA_ACCESS
        + "            }\n"
        + f"            proxy_pass http://dyn; {_PROXY_LOCATION}\n        }}\n    }}\n"
        + f"    server {{\n        listen {LOOPBACK}:{check_port(control_port)};\n"
        + "        client_max_body_size 64m;\n        client_body_buffer_size 64m;\n"
        + "        location = /routes {\n            content_by_lua_block {"
        + _LUA_CONTROL
        + "            }\n        }\n    }\n}\n"
    )


def lua_routes_body(routes: Routes) -> bytes:
    """The control endpoint's POST body for ``routes``."""
    lines = []
    for domain, ports in routes.items():
        if not ports:
            raise ValueError(f"{domain}: no upstreams")
        lines.append(" ".join([check_domain(domain), *(str(check_port(p)) for p in ports)]))
    return ("\n".join(lines) + "\n").encode()


def haproxy_backend(domain: str) -> str:
    return "be_" + check_domain(domain)


def haproxy_server(port: int) -> str:
    return f"s{check_port(port)}"


def render_haproxy(prefix: str, port: int, routes: Routes, slots: int) -> tuple[str, str]:
    """HAProxy 2.6: (haproxy.cfg, hosts.map).

    A backend per domain, chosen by a Host -> backend map the runtime API edits. 2.6 adds
    servers at run time but not backends, so a pool of ``slots`` empty backends waits for the
    domains added after the start.
    """
    cfg = [
        "global\n",
        f"    stats socket {prefix}/admin.sock mode 600 level admin\n",
        "    nbthread 1\n    maxconn 4096\n",
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 300s\n",
        "    timeout server 300s\n    timeout http-keep-alive 300s\n",
        "    option http-keep-alive\n",
        "frontend fe\n",
        f"    bind {LOOPBACK}:{check_port(port)}\n",
        f"    use_backend %[req.hdr(host),field(1,:),lower,map({prefix}/hosts.map,be_404)]\n",
        "backend be_404\n    http-request return status 404\n",
    ]
    lines = []
    for domain in sorted(routes):
        be = haproxy_backend(domain)
        cfg.append(f"backend {be}\n    balance roundrobin\n")
        for p in routes[domain]:
            cfg.append(f"    server {haproxy_server(p)} {LOOPBACK}:{check_port(p)}\n")
        lines.append(f"{domain} {be}\n")
    for k in range(slots):
        cfg.append(f"backend slot_{k}\n    balance roundrobin\n")
    return "".join(cfg), "".join(lines)


def caddy_route_id(domain: str) -> str:
    return "r_" + check_domain(domain)


def caddy_route(domain: str, ports: Sequence[int]) -> dict[str, object]:
    return {
        "@id": caddy_route_id(domain),
        "match": [{"host": [domain]}],
        "handle": [
            {
                "handler": "reverse_proxy",
                "upstreams": [{"dial": f"{LOOPBACK}:{check_port(p)}"} for p in ports],
                "load_balancing": {"selection_policy": {"policy": "round_robin"}},
            }
        ],
        "terminal": True,
    }


def render_caddy(port: int, admin_port: int, routes: Routes) -> str:
    """Caddy 2.6 JSON: a route per domain (by @id), then a 404 for every other host."""
    route_list: list[dict[str, object]] = [caddy_route(d, routes[d]) for d in sorted(routes)]
    route_list.append({"handle": [{"handler": "static_response", "status_code": 404}]})
    config = {
        "admin": {"listen": f"{LOOPBACK}:{check_port(admin_port)}"},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {
            "http": {
                "servers": {
                    "edge": {
                        "listen": [f"{LOOPBACK}:{check_port(port)}"],
                        "automatic_https": {"disable": True},
                        "idle_timeout": "300s",
                        "routes": route_list,
                    }
                }
            }
        },
    }
    return json.dumps(config)
