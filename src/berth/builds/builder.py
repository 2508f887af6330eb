"""Image builds: run ``docker build`` on an extracted context and stream what happens.

The low-level API streams JSON messages: ``stream`` (build output), ``status`` (progress),
``aux`` (the image id) and ``error``. :func:`build_image` turns them into :class:`BuildEvent`
values. A build that fails (bad Dockerfile, failing ``RUN``, missing base image) ends with an
"error" event carrying the daemon's message and the last lines of output; only an engine that
cannot be reached raises (:class:`berth.errors.EngineError`). The layer cache is on (no
``nocache``, no ``pull``), so rebuilding an unchanged context is quick.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import requests
import urllib3

from berth.errors import EngineError

BuildEventKind = Literal["log", "error", "done"]
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class BuildEvent:
    """One step of a build's story: a log line, the final error, or the built image."""

    kind: BuildEventKind
    text: str
    image_id: str | None = None


class _BuildState:
    """What the stream has told us so far: the image id and the last lines of output."""

    def __init__(self) -> None:
        self.image_id: str | None = None
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    def error_event(self, message: str) -> BuildEvent:
        text = message.strip() or "the build failed"
        if self.tail:
            text += "\n\nLast build output:\n" + "\n".join(self.tail)
        return BuildEvent("error", text)


def _log_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _events_from_message(message: Any, state: _BuildState) -> Iterator[BuildEvent]:
    """Log events for one decoded stream message (errors are handled by the caller)."""
    if not isinstance(message, dict):
        return
    aux = message.get("aux")
    if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
        state.image_id = aux["ID"]
    text = message.get("stream") or message.get("status") or ""
    if not isinstance(text, str):
        return
    for line in _log_lines(text):
        state.tail.append(line)
        yield BuildEvent("log", line)


def _error_message(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    if message.get("error"):
        return str(message["error"])
    detail = message.get("errorDetail")
    if isinstance(detail, dict) and detail.get("message"):
        return str(detail["message"])
    return None


def _start_build(
    client: docker.DockerClient, context_dir: Path, tag: str, labels: Mapping[str, str]
) -> Iterable[Any]:
    stream: Iterable[Any] = client.api.build(
        path=str(context_dir),
        tag=tag,
        rm=True,
        forcerm=True,
        decode=True,
        labels=dict(labels),
        pull=False,
        nocache=False,
    )
    return stream


def _api_error_text(exc: docker.errors.APIError) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


def _built_image_id(client: docker.DockerClient, tag: str, state: _BuildState) -> str | None:
    if state.image_id:
        return state.image_id
    try:
        attrs: dict[str, Any] = client.api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return None
    return str(attrs["Id"])


def build_image(
    client: docker.DockerClient, context_dir: Path, tag: str, labels: dict[str, str]
) -> Iterator[BuildEvent]:
    """Build ``context_dir`` as ``tag`` with ``labels``, yielding events as the build runs.

    The last event is "done" (with ``image_id``) or "error" (the daemon's message and the tail
    of the log). Raises EngineError, while iterating, only when the engine cannot be reached.
    """
    if not (context_dir / "Dockerfile").is_file():
        yield BuildEvent("error", f"no Dockerfile in the build context {context_dir}")
        return
    state = _BuildState()
    try:
        for message in _start_build(client, context_dir, tag, labels):
            failure = _error_message(message)
            if failure is not None:
                yield state.error_event(failure)
                return
            yield from _events_from_message(message, state)
        image_id = _built_image_id(client, tag, state)
    except docker.errors.APIError as exc:
        # The daemon answered, so this is the build's fault, not the engine's.
        yield state.error_event(_api_error_text(exc))
        return
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise EngineError(f"the container engine is unreachable during the build: {exc}") from exc
    except docker.errors.DockerException as exc:
        # docker-py refused before asking the engine (an invalid tag, for one).
        yield state.error_event(str(exc))
        return
    except OSError as exc:
        # docker-py reads the context itself; an unreadable file ends the build.
        yield state.error_event(f"cannot read the build context: {exc}")
        return
    if image_id is None:
        yield state.error_event("the build finished without producing an image")
        return
    yield BuildEvent("done", f"built {tag} ({image_id})", image_id)
