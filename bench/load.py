"""Bounded HTTP load against one loopback URL: ``wrk`` when installed, else Python clients.

Both report the same figures: requests/s, p50 and p99 latency (ms), and failed requests.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class LoadFigures:
    tool: str
    seconds: float
    connections: int
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_load(
    url: str, host: str | None, seconds: float, connections: int, force_python: bool = False
) -> LoadFigures:
    """Load ``url`` (with ``Host: host`` if given) for ``seconds`` over ``connections``."""
    if shutil.which("wrk") and not force_python:
        return _wrk(url, host, seconds, connections)
    return _python_clients(url, host, seconds, connections)


def _wrk(url: str, host: str | None, seconds: float, connections: int) -> LoadFigures:
    threads = max(1, min(connections, 2))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    requests = int(_find(r"(\d+) requests in", out))
    failures = int(_find(r"Non-2xx or 3xx responses: (\d+)", out, "0"))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        # A read error is a connection the server closed after answering (HTTP/1.0), not a
        # failed request; the others are.
        failures += int(errors.group(1)) + int(errors.group(3)) + int(errors.group(4))
    return LoadFigures(
        tool="wrk",
        seconds=seconds,
        connections=connections,
        requests=requests,
        failures=failures,
        rps=float(_find(r"Requests/sec:\s+([\d.]+)", out)),
        p50_ms=_latency_ms(_find(r"\n\s+50%\s+(\S+)", out)),
        p99_ms=_latency_ms(_find(r"\n\s+99%\s+(\S+)", out)),
    )


def _find(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match:
        return match.group(1)
    if default is not None:
        return default
    raise ValueError(f"wrk output has no {pattern!r}:\n{text}")


def _latency_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not match:
        raise ValueError(f"cannot read the latency {value!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def _python_clients(url: str, host: str | None, seconds: float, connections: int) -> LoadFigures:
    latencies: list[list[float]] = [[] for _ in range(connections)]
    failures = [0] * connections
    headers = {"Host": host} if host else {}
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(timeout=10.0, trust_env=False) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    ok = http.get(url, headers=headers).status_code < 400
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies[i].append((time.perf_counter() - started) * 1000)
                else:
                    failures[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    samples = sorted(x for per_client in latencies for x in per_client)
    return LoadFigures(
        tool="python-httpx",
        seconds=seconds,
        connections=connections,
        requests=len(samples) + sum(failures),
        failures=sum(failures),
        rps=len(samples) / elapsed,
        p50_ms=statistics.median(samples) if samples else float("nan"),
        p99_ms=samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        if samples
        else float("nan"),
    )
