"""The CLI's HTTP client: the API is the only way the CLI changes anything."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_API_URL = "http://127.0.0.1:8700"


class CliError(Exception):
    """A failure to show the user as one clear line (exit code 1), never a traceback."""

    def __init__(self, message: str, code: str = "error", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "berth" / "cli.json"


@dataclass(frozen=True)
class CliConfig:
    api_url: str
    token: str | None
    tenant: str | None = None
    minted: bool = False  # the token was created by `berth login`: logout revokes it

    @staticmethod
    def load() -> CliConfig:
        data: dict[str, Any] = {}
        path = config_path()
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                raise CliError(
                    f"cannot read the CLI config {path}; run `berth login` again"
                ) from None
        return CliConfig(
            api_url=os.environ.get("BERTH_API_URL") or data.get("api_url") or DEFAULT_API_URL,
            token=os.environ.get("BERTH_TOKEN") or data.get("token"),
            tenant=os.environ.get("BERTH_TENANT") or data.get("tenant"),
            minted=bool(data.get("minted")) and not os.environ.get("BERTH_TOKEN"),
        )

    def save(self) -> Path:
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            data = {
                "api_url": self.api_url,
                "token": self.token,
                "tenant": self.tenant,
                "minted": self.minted,
            }
            json.dump(data, fh, indent=2)
        return path


class ApiClient:
    def __init__(self, config: CliConfig, timeout: float = 60.0):
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        if config.tenant:
            headers["X-Berth-Tenant"] = config.tenant
        self.base = config.api_url.rstrip("/") + "/api/v1"
        self.http = httpx.Client(headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, self.base + path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the Berth API at {self.base}: {exc}") from None
        _raise_for_error(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def stream_lines(self, method: str, path: str, **kwargs: Any) -> Iterator[str]:
        try:
            with self.http.stream(method, self.base + path, timeout=None, **kwargs) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for_error(resp)
                yield from resp.iter_lines()
        except httpx.HTTPError as exc:
            raise CliError(f"connection to the Berth API failed: {exc}") from None


def _raise_for_error(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json()["error"]
        raise CliError(err["message"], err.get("code", "error"), resp.status_code)
    except (ValueError, KeyError, TypeError):
        raise CliError(
            f"HTTP {resp.status_code}: {resp.text[:200]}", status=resp.status_code
        ) from None


def client() -> ApiClient:
    """An API client with the saved (or environment) URL, token and tenant."""
    return ApiClient(CliConfig.load())
