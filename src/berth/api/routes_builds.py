"""Builds: upload a build context (tar or tar.gz), build it, release it, roll it out.

The upload is read with a size cap and unpacked with every archive check *before* the response
starts, so a bad context gets a clean 4xx. The build then streams as NDJSON events:
``{"type": "log", "line": ...}``, then ``{"type": "release", ...}`` or ``{"type": "error", ...}``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from berth.api.deps import PlatformDep, Writer
from berth.builds.context import extract_context
from berth.errors import BerthError, EngineError, PayloadTooLarge
from berth.platform import Platform
from berth.services import apps as svc
from berth.services.auth import Principal
from berth.store.tables import new_id

router = APIRouter(prefix="/apps", tags=["builds"])


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

    def check_app() -> str:
        with platform.sessions() as session:
            return svc.get_app(session, who.tenant_id, name).id

    app_id = await run_in_threadpool(check_app)
    settings.builds_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=settings.builds_dir))
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
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    events = _build_events(platform, who, name, app_id, workdir, context)
    return StreamingResponse(events, media_type="application/x-ndjson")


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


def _line(obj: dict[str, object]) -> str:
    return json.dumps(obj) + "\n"


def _build_events(
    platform: Platform, who: Principal, name: str, app_id: str, workdir: Path, context: Path
) -> Iterator[str]:
    assert platform.builder is not None
    tag = f"berth-app/{name}:{new_id()}"
    # Not the container labels: containers inherit image labels, and a container someone
    # starts by hand from this image must never look like one Berth manages.
    labels = {
        "berth.build.installation": platform.installation,
        "berth.build.tenant": who.tenant_id,
        "berth.build.app": app_id,
    }
    try:
        yield _line({"type": "status", "message": f"building {tag}"})
        image_id = None
        for event in platform.builder.build(context, tag, labels):
            if event.kind == "log":
                yield _line({"type": "log", "line": event.text})
            elif event.kind == "error":
                yield _line(
                    {"type": "error", "error": {"code": "build_failed", "message": event.text}}
                )
                return
            else:
                image_id = event.image_id
        if image_id is None:
            yield _line(
                {"type": "error", "error": {"code": "build_failed", "message": "no image built"}}
            )
            return
        with platform.sessions() as session:
            release, dep = svc.deploy_image(
                session,
                platform.settings,
                who.tenant_id,
                name,
                tag,
                lambda _ref: image_id,
                description="build",
            )
            yield _line(
                {
                    "type": "release",
                    "version": release.version,
                    "image": tag,
                    "image_id": image_id,
                    "deployment_id": dep.id,
                }
            )
        platform.trigger()
    except BerthError as exc:
        yield _line({"type": "error", "error": {"code": exc.code, "message": exc.message}})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
