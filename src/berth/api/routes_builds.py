"""Builds: upload a build context (tar or tar.gz), build it, release it, roll it out.

Admission comes first: a tenant with too many builds waiting gets 429 before its upload is
read. The upload is then read with a size cap and unpacked with every archive check *before*
the response starts, so a bad context gets a clean 4xx. The build streams as NDJSON events:
``{"type": "status", "message": ...}`` (the queue position while it waits), ``{"type": "log",
"line": ...}``, and always exactly one final ``{"type": "release", ...}`` or
``{"type": "error", ...}``. The work directory is removed whatever happens.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from berth.api.deps import PlatformDep, Writer
from berth.builds.context import extract_context
from berth.builds.limits import TenantBuildPolicy, tenant_build_policy
from berth.builds.protocol import BuildRequest
from berth.builds.queue import BuildQueue, Ticket
from berth.errors import BerthError, EngineError, PayloadTooLarge
from berth.fsutil import remove_tree
from berth.platform import Platform
from berth.registry.wiring import push_summary
from berth.services import apps as svc
from berth.services.auth import Principal
from berth.services.billing import plan_row_of
from berth.store.tables import new_id

log = logging.getLogger(__name__)
router = APIRouter(prefix="/apps", tags=["builds"])
NDJSON = "application/x-ndjson"
QUEUE_UPDATE_SECONDS = 10.0  # a waiting stream says where it stands at least this often
_queue_lock = threading.Lock()


def build_queue(platform: Platform) -> BuildQueue:
    """The platform's one build queue (made on first use, sized by the settings)."""
    with _queue_lock:
        if platform.build_queue is None:
            platform.build_queue = BuildQueue(platform.settings.max_concurrent_builds)
        return platform.build_queue


@router.post(
    "/{name}/builds",
    response_class=StreamingResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-tar": {}, "application/gzip": {}},
        }
    },
)
async def build(
    name: str, request: Request, platform: PlatformDep, who: Writer
) -> StreamingResponse:
    if platform.builder is None:
        raise EngineError("no image builder is configured")
    settings = platform.settings

    def check_app() -> tuple[str, TenantBuildPolicy]:
        with platform.sessions() as session:
            app_id = svc.get_app(session, who.tenant_id, name).id
            return app_id, tenant_build_policy(settings, plan_row_of(session, who.tenant_id))

    app_id, policy = await run_in_threadpool(check_app)
    queue = build_queue(platform)
    ticket = queue.enter(who.tenant_id, policy.concurrent, settings.max_queued_builds_per_tenant)
    try:
        settings.builds_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=settings.builds_dir))
    except BaseException:
        queue.leave(ticket)
        raise
    try:
        upload = workdir / "context.upload"
        await _receive(request, upload, settings.max_build_context_bytes)
        context = workdir / "context"
        with upload.open("rb") as fh:
            await run_in_threadpool(
                extract_context,
                fh,
                context,
                settings.max_build_context_bytes,
                settings.max_build_files,
            )
        upload.unlink()
    except BaseException:
        queue.leave(ticket)
        _remove_workdir(workdir)
        raise
    build_request = BuildRequest(
        context_dir=context,
        tag=f"berth-app/{name}:{new_id()}",
        # Not the container labels: containers inherit image labels, and a container someone
        # starts by hand from this image must never look like one Berth manages.
        labels={
            "berth.build.installation": platform.installation,
            "berth.build.tenant": who.tenant_id,
            "berth.build.app": app_id,
        },
        tenant_id=who.tenant_id,
        limits=policy.limits,
        registry=settings.registry,
    )
    events = _build_events(platform, who, name, build_request, queue, ticket, workdir)
    return StreamingResponse(BuildStream(events, queue, ticket, workdir), media_type=NDJSON)


async def _receive(request: Request, dest: Path, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"build context is larger than {max_bytes} bytes")
    total = 0
    with dest.open("wb") as fh:
        stream: AsyncIterator[bytes] = request.stream()
        async for chunk in stream:
            total += len(chunk)
            if total > max_bytes:
                raise PayloadTooLarge(f"build context is larger than {max_bytes} bytes")
            fh.write(chunk)
    if total == 0:
        raise BerthError("the build context is empty; send a tar archive", code="invalid_context")


class BuildStream:
    """The response body: the build's lines, with a guarantee for a stream never started.

    A client that goes away before the first line is sent leaves the generator unstarted, and
    an unstarted generator's ``finally`` never runs: the queue place and the work directory
    would stay taken. When this object is collected, they are freed anyway (at most once).
    """

    def __init__(self, lines: Iterator[str], queue: BuildQueue, ticket: Ticket, workdir: Path):
        self._lines = lines
        self._finalizer = weakref.finalize(self, _release, queue, ticket, workdir)

    def __iter__(self) -> BuildStream:
        return self

    def __next__(self) -> str:
        return next(self._lines)

    def close(self) -> None:
        close = getattr(self._lines, "close", None)
        if close is not None:
            close()
        self._finalizer()


def _release(queue: BuildQueue, ticket: Ticket, workdir: Path) -> None:
    queue.leave(ticket)
    _remove_workdir(workdir)


def _remove_workdir(workdir: Path) -> None:
    try:
        remove_tree(workdir)
    except OSError as exc:  # the sweep at the next start gets it
        log.warning("could not remove build directory %s: %s", workdir, exc)


def _line(obj: dict[str, object]) -> str:
    return json.dumps(obj) + "\n"


def _error(code: str, message: str) -> str:
    return _line({"type": "error", "error": {"code": code, "message": message}})


def _wait_for_turn(queue: BuildQueue, ticket: Ticket) -> Iterator[str]:
    state = queue.state(ticket)
    while not state.running:
        yield _line({"type": "status", "message": state.message()})
        state = queue.wait(ticket, QUEUE_UPDATE_SECONDS)


def _build_events(
    platform: Platform,
    who: Principal,
    name: str,
    request: BuildRequest,
    queue: BuildQueue,
    ticket: Ticket,
    workdir: Path,
) -> Iterator[str]:
    """The build's NDJSON lines: whatever happens, exactly one final release or error.

    The queue place and the work directory are freed *before* the final line is sent, so a
    client that has read the result finds the build's traces gone (releasing is idempotent:
    the ``finally`` does it again for a reader that went away)."""
    assert platform.builder is not None
    finished = False

    def free_slot() -> None:
        _release(queue, ticket, workdir)

    try:
        yield from _wait_for_turn(queue, ticket)
        yield _line({"type": "status", "message": f"building {request.tag}"})
        image_id = None
        steps = platform.builder.build(request)
        try:
            for event in steps:
                if event.kind == "log":
                    yield _line({"type": "log", "line": event.text})
                elif event.kind == "error":
                    finished = True
                    free_slot()
                    yield _error("build_failed", event.text)
                    return
                else:
                    image_id = event.image_id
                    break
        finally:
            # Stops the build (and removes its containers) when the reader went away.
            close = getattr(steps, "close", None)
            if close is not None:
                close()
        if image_id is None:
            finished = True
            free_slot()
            yield _error("build_failed", "the build ended without an image")
            return
        pinned = None
        registry = platform.registry
        if registry is not None and registry.wanted():
            # On a swarm every node pulls the build from the platform registry, by digest. A
            # push that fails is the build's error: no release names an image nodes lack.
            yield _line({"type": "status", "message": f"pushing to {registry.address}"})
            pushed = registry.publish(who.tenant_id, name, image_id)
            pinned = pushed.reference
            yield _line({"type": "log", "line": push_summary(pushed)})
        with platform.sessions() as session:
            release, dep = svc.deploy_image(
                session,
                platform.settings,
                who.tenant_id,
                name,
                request.tag,
                lambda _ref: image_id,
                description="build",
                pinned_image=pinned,
            )
            line = _line(
                {
                    "type": "release",
                    "version": release.version,
                    "image": request.tag,
                    "image_id": image_id,
                    "pinned_image": pinned,
                    "deployment_id": dep.id,
                }
            )
        finished = True
        platform.trigger()
        free_slot()
        yield line
    except BerthError as exc:
        if not finished:
            finished = True
            free_slot()
            yield _error(exc.code, exc.message)
    except Exception:
        log.exception("build of %s for tenant %s failed unexpectedly", name, who.tenant_id)
        if not finished:
            finished = True
            free_slot()
            yield _error("build_failed", "the build failed unexpectedly; try again")
    finally:
        free_slot()
