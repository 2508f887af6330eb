"""One driver per candidate: start the proxy with routes, change them its own way, stop it.

Every driver keeps the route table it has applied (domain -> upstream ports) and changes it
through the candidate's own mechanism: nginx re-renders and reloads, nginx+Lua posts to its
control location, HAProxy speaks its runtime API, Caddy its admin API.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from bench.edge.configs import (
    LOOPBACK,
    caddy_route,
    caddy_route_id,
    haproxy_backend,
    haproxy_server,
    lua_routes_body,
    render_caddy,
    render_haproxy,
    render_nginx_lua,
    render_nginx_reload,
)
from bench.edge.procs import Proc, free_ports, http_get, wait_until

NGINX = "/usr/sbin/nginx"


class Driver:
    name = "?"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.routes: dict[str, list[int]] = {}
        self.proc: Proc | None = None
        self.port = 0

    # -- the changes: each updates self.routes, then applies it the candidate's way
    def add_upstream(self, domain: str, port: int) -> None:
        self.routes[domain].append(port)
        self._add_upstream(domain, port)

    def remove_upstream(self, domain: str, port: int) -> None:
        self.routes[domain].remove(port)
        self._remove_upstream(domain, port)

    def add_domain(self, domain: str, ports: list[int]) -> None:
        self.routes[domain] = list(ports)
        self._add_domain(domain, ports)

    def remove_domain(self, domain: str) -> None:
        del self.routes[domain]
        self._remove_domain(domain)

    def start(self, routes: dict[str, list[int]]) -> None:
        self.routes = {d: list(p) for d, p in routes.items()}
        self._start()
        probe = next(iter(self.routes))
        assert self.proc is not None
        wait_until(lambda: http_get(self.port, probe)[0] == 200, 120, self.name, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def _start(self) -> None:
        raise NotImplementedError

    def _add_upstream(self, domain: str, port: int) -> None:
        raise NotImplementedError

    def _remove_upstream(self, domain: str, port: int) -> None:
        raise NotImplementedError

    def _add_domain(self, domain: str, ports: list[int]) -> None:
        raise NotImplementedError

    def _remove_domain(self, domain: str) -> None:
        raise NotImplementedError


def _nginx_dirs(prefix: Path) -> None:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(exist_ok=True)


class NginxReload(Driver):
    """Today's way: every change re-renders the whole config and reloads (SIGHUP) the master.

    The master checks the new config itself (as Berth's NginxManager relies on since it runs
    ``nginx -t`` alongside); a rejected config would leave the old workers serving.
    """

    name = "nginx-reload"

    def _start(self) -> None:
        (self.port,) = free_ports(1)
        _nginx_dirs(self.workdir)
        self._write()
        self.proc = Proc(
            "nginx-reload",
            [NGINX, "-p", str(self.workdir), "-c", str(self.conf), "-g", "daemon off;"],
            self.workdir,
        )

    @property
    def conf(self) -> Path:
        return self.workdir / "nginx.conf"

    def _write(self) -> None:
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(render_nginx_reload(str(self.workdir), self.port, self.routes))
        os.replace(tmp, self.conf)

    def _apply(self, *_: object) -> None:
        self._write()
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    _add_upstream = _remove_upstream = _add_domain = _remove_domain = _apply  # type: ignore[assignment]


class NginxLua(Driver):
    """nginx + lua: routes in a lua_shared_dict, set through a loopback control location."""

    name = "nginx-lua"

    def _start(self) -> None:
        self.port, self.control = free_ports(2)
        _nginx_dirs(self.workdir)
        conf = self.workdir / "nginx.conf"
        conf.write_text(render_nginx_lua(str(self.workdir), self.port, self.control))
        self.proc = Proc(
            "nginx-lua",
            [NGINX, "-p", str(self.workdir), "-c", str(conf), "-g", "daemon off;"],
            self.workdir,
        )
        wait_until(lambda: self._control("DELETE", "/routes?domain=x") == 204, 30, "lua control")
        self._set(self.routes)

    def _control(self, method: str, path: str, body: bytes | None = None) -> int:
        conn = http.client.HTTPConnection(LOOPBACK, self.control, timeout=30)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def _set(self, routes: dict[str, list[int]]) -> None:
        status = self._control("POST", "/routes", lua_routes_body(routes))
        if status != 200:
            raise RuntimeError(f"lua control: {status}")

    def _add_upstream(self, domain: str, port: int) -> None:
        self._set({domain: self.routes[domain]})

    _remove_upstream = _add_upstream

    def _add_domain(self, domain: str, ports: list[int]) -> None:
        self._set({domain: ports})

    def _remove_domain(self, domain: str) -> None:
        if self._control("DELETE", f"/routes?domain={domain}") != 204:
            raise RuntimeError("lua control: delete refused")


class HAProxy(Driver):
    """HAProxy 2.6, runtime API: add/del server, and the Host -> backend map (add/del map).

    Backends cannot be created at run time in 2.6, so new domains take an empty backend from
    a pool made at start.
    """

    name = "haproxy"
    SLOTS = 64

    def _start(self) -> None:
        (self.port,) = free_ports(1)
        cfg, hosts = render_haproxy(str(self.workdir), self.port, self.routes, self.SLOTS)
        (self.workdir / "haproxy.cfg").write_text(cfg)
        (self.workdir / "hosts.map").write_text(hosts)
        self.free_slots = [f"slot_{k}" for k in range(self.SLOTS)]
        self.backend_of = {d: haproxy_backend(d) for d in self.routes}
        self.slot_ports: dict[str, list[int]] = {}
        self.undeleted = 0  # servers del server kept refusing (left in maintenance)
        self.proc = Proc(
            "haproxy",
            [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", "haproxy.cfg"],
            self.workdir,
        )

    def api(self, command: str) -> str:
        """One runtime API command on a fresh connection to the admin socket."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.workdir / "admin.sock"))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace").strip()

    def _ok(self, command: str, expect: str = "") -> None:
        out = self.api(command)
        if expect not in out or "rror" in out or "nknown" in out or "not " in out.lower():
            raise RuntimeError(f"haproxy {command!r}: {out!r}")

    def _add_server(self, backend: str, port: int) -> None:
        server = f"{backend}/{haproxy_server(port)}"
        self._ok(f"add server {server} {LOOPBACK}:{port}", "New server registered")
        # A server added at run time starts in maintenance.
        self.api(f"enable server {server}")

    def _del_server(self, backend: str, port: int) -> None:
        server = f"{backend}/{haproxy_server(port)}"
        self.api(f"disable server {server}")
        # del server refuses while the server holds connections (idle ones to it included):
        # draining is the price; bounded retry, then leave it in maintenance.
        for _ in range(200):
            out = self.api(f"del server {server}")
            if "Server deleted" in out:
                return
            time.sleep(0.01)
        self.undeleted += 1

    def _add_upstream(self, domain: str, port: int) -> None:
        self._add_server(self.backend_of[domain], port)

    def _remove_upstream(self, domain: str, port: int) -> None:
        self._del_server(self.backend_of[domain], port)

    def _add_domain(self, domain: str, ports: list[int]) -> None:
        backend = self.free_slots.pop()
        self.backend_of[domain] = backend
        for p in ports:
            self._add_server(backend, p)
        self.api(f"add map {self.workdir}/hosts.map {domain} {backend}")

    def _remove_domain(self, domain: str) -> None:
        backend = self.backend_of.pop(domain)
        self.api(f"del map {self.workdir}/hosts.map {domain}")
        # The routes table no longer has the domain; the slot's servers are the ones added.
        for p in self.slot_ports.pop(backend, []):
            self._del_server(backend, p)
        self.free_slots.append(backend)

    def add_domain(self, domain: str, ports: list[int]) -> None:
        super().add_domain(domain, ports)
        self.slot_ports[self.backend_of[domain]] = list(ports)


class Caddy(Driver):
    """Caddy 2.6, admin API: routes by @id, upstreams appended/deleted by array path."""

    name = "caddy"

    def _start(self) -> None:
        self.port, self.admin = free_ports(2)
        config = self.workdir / "caddy.json"
        config.write_text(render_caddy(self.port, self.admin, self.routes))
        env = {
            "HOME": str(self.workdir),
            "XDG_DATA_HOME": str(self.workdir / "data"),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
            "GOMAXPROCS": "1",  # one core, like the single nginx worker and haproxy thread
        }
        self.proc = Proc(
            "caddy",
            [shutil.which("caddy") or "/usr/bin/caddy", "run", "--config", str(config)],
            self.workdir,
            env,
        )

    def _admin(self, method: str, path: str, body: object | None = None) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, self.admin, timeout=60)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            out = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"caddy {method} {path}: {resp.status} {out[:300]!r}")
        finally:
            conn.close()

    def _add_upstream(self, domain: str, port: int) -> None:
        self._admin(
            "POST",
            f"/id/{caddy_route_id(domain)}/handle/0/upstreams",
            {"dial": f"{LOOPBACK}:{port}"},
        )

    def remove_upstream(self, domain: str, port: int) -> None:
        index = self.routes[domain].index(port)
        self.routes[domain].remove(port)
        self._admin("DELETE", f"/id/{caddy_route_id(domain)}/handle/0/upstreams/{index}")

    def _add_domain(self, domain: str, ports: list[int]) -> None:
        # PUT on an array index inserts: before the final 404 route.
        self._admin("PUT", "/config/apps/http/servers/edge/routes/0", caddy_route(domain, ports))

    def _remove_domain(self, domain: str) -> None:
        self._admin("DELETE", f"/id/{caddy_route_id(domain)}")


DRIVERS: dict[str, type[Driver]] = {d.name: d for d in (NginxReload, NginxLua, HAProxy, Caddy)}
