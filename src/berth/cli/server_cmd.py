"""Commands that run on the Berth machine itself: the server, and the offline base images."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import typer

from berth.cli.client import CliConfig, CliError
from berth.cli.output import console, err_console
from berth.settings import Settings

server_app = typer.Typer(
    help="Run the Berth server (API, controllers and the local node agent).",
    invoke_without_command=True,
)
images_app = typer.Typer(help="Offline base images for apps.", no_args_is_help=True)


def _settings() -> Settings:
    return Settings()


def _pid_file() -> Path:
    return _settings().home / "server.pid"


def _api_url() -> str:
    s = _settings()
    return f"http://{s.api_host}:{s.api_port}"


@server_app.callback()
def server(ctx: typer.Context) -> None:
    """Run the server in the foreground (Ctrl-C stops it; apps and nginx keep serving)."""
    if ctx.invoked_subcommand is not None:
        return
    run_foreground()


def run_foreground() -> None:
    import uvicorn

    from berth.api.app import create_app
    from berth.platform import build_platform

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = _settings()
    try:
        platform = build_platform(settings)
    except Exception as exc:
        raise CliError(f"cannot start the server: {exc}") from None
    _write_pid(os.getpid())
    console.print(
        f"Berth API on http://{settings.api_host}:{settings.api_port}, ingress on port "
        f"{settings.ingress_port}, admin token in {platform.admin_token_file}"
    )
    uvicorn.run(
        create_app(platform, run_loops=True),
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        # h11, not httptools: only h11 caps the request line and headers (64 KiB here), so
        # that no request can grow the server's memory before the body limit even applies.
        http="h11",
        h11_max_incomplete_event_size=64 * 1024,
        # Past this many open connections the server answers 503 at once instead of taking
        # more memory and file descriptors (log streams and builds each hold one).
        limit_concurrency=512,
        timeout_keep_alive=5,  # an idle keep-alive connection is closed after 5 s
        # A proxy on this machine (only) may say who the client is and that it came over TLS:
        # the login and sign-up limits then count real client addresses.
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
    )


def _write_pid(pid: int) -> None:
    path = _pid_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")


def _running_pid() -> int | None:
    try:
        pid = int(_pid_file().read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid if _is_server_process(pid) else None


def _is_server_process(pid: int) -> bool:
    """A killed server stays a zombie until reaped, and a stale pid file may name a recycled
    pid: neither is a running server. (Without /proc, trust the signal check.)"""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True
    try:
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    # A zombie's command line is empty.
    return b"berth" in cmdline and b"server" in cmdline


@server_app.command("start")
def start(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the API.")] = 60.0,
) -> None:
    """Start the server in the background, wait until it answers, and log this CLI in."""
    settings = _settings()
    url = _api_url()
    pid = _running_pid()
    if pid is None:
        settings.home.mkdir(parents=True, exist_ok=True)
        log_path = settings.home / "server.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "berth.cli.main", "server"],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in this shell must not reach the server
            )
        pid = proc.pid
        console.print(f"Starting the Berth server (pid {pid}, log {log_path})")

        def alive() -> bool:
            # The child writes the pid file only once it is set up: watch the child itself.
            return proc.poll() is None

    else:
        console.print(f"The Berth server is already running (pid {pid})")

        def alive() -> bool:
            return _running_pid() is not None

    _wait_healthy(url, timeout, settings.home / "server.log", alive)
    token_file = settings.home / "admin-token"
    token = token_file.read_text().strip()
    cfg_path = CliConfig(url, token).save()
    console.print(f"API:          {url}/api/v1  (OpenAPI at {url}/openapi.json)")
    console.print(
        f"Ingress:      port {settings.ingress_port}, apps at NAME.{settings.base_domain}"
    )
    console.print(f"Admin token:  {token_file}")
    console.print(f"CLI login:    {cfg_path}")


def _wait_healthy(url: str, timeout: float, log_path: Path, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not alive():
            break
        time.sleep(0.3)
    raise CliError(f"the server did not come up at {url}; see {log_path}")


@server_app.command("stop")
def stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait before SIGKILL.")] = 20.0,
    with_ingress: Annotated[
        bool, typer.Option(help="Also stop Berth's nginx (apps stop being reachable).")
    ] = False,
) -> None:
    """Stop the background server. Apps and nginx keep serving unless --with-ingress."""
    pid = _running_pid()
    if pid is None:
        console.print("The Berth server is not running")
    else:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _running_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if _running_pid() is not None:
            os.kill(pid, signal.SIGKILL)
        console.print(f"Stopped the Berth server (pid {pid}); apps keep serving")
    if with_ingress:
        from berth.proxy.nginx import NginxManager

        s = _settings()
        NginxManager(s.nginx_dir, s.nginx_binary, s.ingress_listen, s.ingress_port).stop()
        console.print("Stopped Berth's nginx")


@images_app.command("bootstrap")
def images_bootstrap(
    force: Annotated[bool, typer.Option(help="Rebuild even if the images exist.")] = False,
    only: Annotated[str | None, typer.Option(help="busybox, python or memcached")] = None,
) -> None:
    """Build berth/busybox, berth/python and berth/memcached locally, without a registry (runs on
    this machine)."""
    from berth.images.__main__ import main as images_main

    argv = (["--force"] if force else []) + (["--only", only] if only else [])
    code = images_main(argv)
    if code != 0:
        err_console.print("image bootstrap failed")
        raise typer.Exit(code)
