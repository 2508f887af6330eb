"""The build route's event stream: always exactly one final event, and nothing left behind.

Drives ``_build_events`` with stand-in builders (no engine, no store: every case here ends
before a release would be written).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from berth.api.routes_builds import _build_events
from berth.builds.protocol import BuildEvent, BuildRequest
from berth.builds.queue import BuildQueue
from berth.platform import Platform
from berth.services.auth import Principal


class StubPlatform:
    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.closed = False


class Who:
    tenant_id = "tenant-a"


def stream(
    tmp_path: Path, builder: Any, queue: BuildQueue | None = None
) -> tuple[Iterator[str], Path, BuildQueue]:
    workdir = tmp_path / f"build-{uuid.uuid4().hex[:6]}"
    (workdir / "context" / "deep").mkdir(parents=True)
    (workdir / "context" / "Dockerfile").write_text("FROM berth/busybox\n")
    queue = queue or BuildQueue(1)
    ticket = queue.enter("tenant-a", 1, 5)
    request = BuildRequest(workdir / "context", "berth-app/x:1", {}, "tenant-a")
    lines = _build_events(
        cast(Platform, StubPlatform(builder)),
        cast(Principal, Who()),
        "x",
        request,
        queue,
        ticket,
        workdir,
    )
    return lines, workdir, queue


def events_of(lines: Iterator[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


class RaisingBuilder:
    def build(self, request: BuildRequest) -> Iterator[BuildEvent]:
        yield BuildEvent("log", "Step 1/1 : FROM berth/busybox")
        raise RuntimeError("something nobody expected, with /secret/host/paths")


class SilentBuilder:
    def build(self, request: BuildRequest) -> Iterator[BuildEvent]:
        yield BuildEvent("log", "Step 1/1 : FROM berth/busybox")


class FailingBuilder:
    def build(self, request: BuildRequest) -> Iterator[BuildEvent]:
        yield BuildEvent("error", "The command '/bin/sh -c false' returned a non-zero code: 1")
        yield BuildEvent("error", "a second error is never sent")


class SlowBuilder:
    def __init__(self) -> None:
        self.closed = False

    def build(self, request: BuildRequest) -> Iterator[BuildEvent]:
        try:
            for i in range(1000):
                yield BuildEvent("log", f"line {i}")
        finally:
            self.closed = True


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (RaisingBuilder(), "the build failed unexpectedly; try again"),
        (SilentBuilder(), "the build ended without an image"),
        (FailingBuilder(), "returned a non-zero code: 1"),
    ],
)
def test_the_stream_always_ends_with_one_error(tmp_path: Path, builder: Any, message: str) -> None:
    lines, workdir, queue = stream(tmp_path, builder)
    events = events_of(lines)
    finals = [e for e in events if e["type"] in ("error", "release")]
    assert len(finals) == 1 and events[-1] is finals[0]
    assert finals[0]["error"]["code"] == "build_failed"
    assert message in finals[0]["error"]["message"]
    assert "/secret/host/paths" not in json.dumps(events)
    assert not workdir.exists()
    assert queue.running == 0


def test_a_reader_going_away_stops_the_build_and_cleans_up(tmp_path: Path) -> None:
    builder = SlowBuilder()
    lines, workdir, queue = stream(tmp_path, builder)
    assert json.loads(next(lines))["type"] == "status"
    assert json.loads(next(lines))["type"] == "log"
    lines.close()  # type: ignore[attr-defined]
    assert builder.closed
    assert not workdir.exists()
    assert queue.running == 0


def test_a_queued_build_says_its_position_then_runs(tmp_path: Path) -> None:
    queue = BuildQueue(1)
    first = queue.enter("tenant-a", 1, 5)
    lines, _workdir, _ = stream(tmp_path, FailingBuilder(), queue)
    status = json.loads(next(lines))
    assert status == {"type": "status", "message": "queued: position 1 (1 build of yours running)"}
    queue.leave(first)
    rest = events_of(lines)
    assert rest[0] == {"type": "status", "message": "building berth-app/x:1"}
    assert rest[-1]["type"] == "error"


def test_a_stream_never_started_still_frees_its_place(tmp_path: Path) -> None:
    import gc

    from berth.api.routes_builds import BuildStream

    queue = BuildQueue(1)
    lines, workdir, _ = stream(tmp_path, SlowBuilder(), queue)
    ticket = next(iter(queue._running))
    body = BuildStream(lines, queue, ticket, workdir)
    del body, lines
    gc.collect()
    assert queue.running == 0
    assert not workdir.exists()
    assert queue.enter("tenant-a", 1, 0) is not None  # the place is free again
