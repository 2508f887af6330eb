"""Upstreams set at run time: an app's instances change without an nginx reload.

A reload closes every idle keep-alive connection of the old workers, and a client that reuses
one at that instant sees a reset (bench/edge_candidates.py measured 9,341 failed requests of
234,693 during 1,000 reloads). Instances change far more often than anything else (every
deploy, scale, crash and restart), so their addresses live in a shared dictionary of the
distro's Lua module for nginx (libnginx-mod-http-lua), which Berth fills through a Unix socket
in nginx's own directory; each app's ``upstream`` block asks it for a peer
(``balancer_by_lua``). The config text no longer names instances, so a change of instances
is no new text, no reload and no closed connection. Domains, certificates and traffic
controls are still config text (a reload).

The same dictionary holds the generation (``/__berth/generation``), so a caller still sees
when a change is live.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

MODULES_DIR = Path("/usr/lib/nginx/modules")
MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")
LUA_PATH = "/usr/share/lua/5.1"
CONTROL_SOCKET = "control.sock"
PEERS_PATH = "/peers"
# One line of the text per generation, so "the same config but for the generation" is a
# comparison of texts without that line.
GENERATION_LINE = re.compile(r"^        set \$berth_conf_generation \d+;\n", re.MULTILINE)


def available(modules_dir: Path = MODULES_DIR) -> bool:
    """The distro's Lua module for nginx (and the NDK it needs) is installed."""
    return (
        all((modules_dir / name).is_file() for name in MODULES)
        and Path(LUA_PATH, "resty", "core.lua").is_file()
    )


def without_generation(text: str) -> str:
    return GENERATION_LINE.sub("", text)


def peers_body(generation: int, peers: Iterable[tuple[str, tuple[str, ...]]]) -> bytes:
    """What the control location reads: ``generation N``, then ``<app id> <addr> ...`` for
    every app with instances (validated by the renderer already; the Lua side checks again)."""
    lines = [f"generation {generation}"]
    lines += [f"{app_id} {' '.join(servers)}" for app_id, servers in peers if servers]
    return ("\n".join(lines) + "\n").encode("ascii")


def module_lines(modules_dir: Path = MODULES_DIR) -> str:
    return "".join(f"load_module {modules_dir}/{name};\n" for name in MODULES)


# Per worker: each app's parsed peer list (parsed again only when its text changes) and a
# round-robin position. A retry (proxy_next_upstream) asks again and gets the next peer.
INIT_LUA = r"""
        local balancer = require "ngx.balancer"
        local peers = ngx.shared.berth_peers
        local parsed, turn = {}, {}
        function berth_balance(app)
            local text = peers:get(app)
            if not text then
                ngx.log(ngx.ERR, "berth: no instances known for app ", app)
                return ngx.exit(502)
            end
            local entry = parsed[app]
            if not entry or entry.text ~= text then
                local list = {}
                for host, port in text:gmatch("%[?([0-9a-f.:]+)%]?:(%d+)") do
                    list[#list + 1] = {host, tonumber(port)}
                end
                entry = {text = text, list = list}
                parsed[app] = entry
            end
            local list = entry.list
            local n = #list
            if n == 0 then return ngx.exit(502) end
            local ctx = ngx.ctx
            if ctx.berth_first == nil then
                turn[app] = ((turn[app] or 0) % n) + 1
                ctx.berth_first, ctx.berth_try = turn[app], 0
                if n > 1 then balancer.set_more_tries(math.min(n, 3) - 1) end
            else
                ctx.berth_try = ctx.berth_try + 1
            end
            local peer = list[((ctx.berth_first + ctx.berth_try - 1) % n) + 1]
            local ok, err = balancer.set_current_peer(peer[1], peer[2])
            if not ok then
                ngx.log(ngx.ERR, "berth: set_current_peer: ", err)
                return ngx.exit(502)
            end
        end
"""

# POST /peers: the whole set (apps not named lose their entry). Every field is checked again.
# GET /peers: what is set.
CONTROL_LUA = r"""
            local method = ngx.req.get_method()
            if method == "GET" then
                -- What is set now, one "<app id> <peers>" line each (operators, tests).
                local peers = ngx.shared.berth_peers
                for _, key in ipairs(peers:get_keys(0)) do
                    if key ~= "generation" then ngx.say(key, " ", peers:get(key)) end
                end
                return
            end
            if method ~= "POST" then return ngx.exit(405) end
            ngx.req.read_body()
            local body = ngx.req.get_body_data()
            if not body then return ngx.exit(400) end
            local peers = ngx.shared.berth_peers
            local generation = body:match("^generation (%d+)\n")
            if not generation then return ngx.exit(400) end
            local seen, sets = {}, {}
            for line in body:gmatch("[^\n]+") do
                if not line:match("^generation ") then
                    local app, rest = line:match("^([a-z0-9]+) ([0-9a-f.:%[%] ]+)$")
                    if not app then return ngx.exit(400) end
                    seen[app] = true
                    sets[#sets + 1] = {app, rest}
                end
            end
            for _, item in ipairs(sets) do
                local ok, err = peers:safe_set(item[1], item[2])
                if not ok then
                    ngx.log(ngx.ERR, "berth: peers: ", err)
                    return ngx.exit(507)
                end
            end
            -- ?keep=1 (before a reload): add, delete nothing, and keep the generation.
            if ngx.var.arg_keep ~= "1" then
                for _, key in ipairs(peers:get_keys(0)) do
                    if key ~= "generation" and not seen[key] then peers:delete(key) end
                end
                peers:set("generation", tonumber(generation))
            end
            ngx.print(#sets)
"""

GENERATION_LUA = r"""
            local stored = ngx.shared.berth_peers:get("generation") or 0
            local conf = tonumber(ngx.var.berth_conf_generation) or 0
            ngx.print(math.max(stored, conf))
"""


def parse_peers(text: str) -> dict[str, tuple[str, ...]]:
    """``GET /peers``'s answer: app id -> its instances' addresses."""
    found: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        app_id, _, rest = line.partition(" ")
        if app_id:
            found[app_id] = tuple(rest.split())
    return found
