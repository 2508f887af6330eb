"""Pushing: names, validation before any engine call, and the push stream's outcome."""

from __future__ import annotations

from typing import Any

import pytest

from berth.errors import InvalidInput, RuntimeFailure
from berth.registry.push import (
    RegistryReadOnly,
    pinned_reference,
    push_image,
    read_push_stream,
    repository_for,
    tag_for,
    validate_repository,
)

DIGEST = "sha256:" + "ab" * 32
IMAGE = "sha256:" + "cd" * 32


def test_repository_per_tenant_and_app() -> None:
    assert repository_for("0a1b2c3d4e5f6071", "web-1") == "t-0a1b2c3d4e5f6071/web-1"
    assert validate_repository("t-0a1b/web-1") == "t-0a1b/web-1"


@pytest.mark.parametrize(
    ("tenant", "app"),
    [("", "web"), ("ABC", "web"), ("0a/..", "web"), ("0a", "Web"), ("0a", "-x"), ("0a", "")],
)
def test_bad_tenant_or_app_is_refused(tenant: str, app: str) -> None:
    with pytest.raises(InvalidInput):
        repository_for(tenant, app)


@pytest.mark.parametrize(
    "repo", ["", "t-0a", "t-0a/web/x", "x-0a/web", "t-0a/WEB", "t-0a/../web", "t-0a/web:tag"]
)
def test_bad_repository_is_refused(repo: str) -> None:
    with pytest.raises(InvalidInput):
        validate_repository(repo)


def test_tag_is_derived_from_the_image_id() -> None:
    assert tag_for(IMAGE) == "id-" + "cd" * 32
    assert len(tag_for(IMAGE)) <= 128  # the registry's tag limit


def test_pinned_reference() -> None:
    assert (
        pinned_reference("127.0.0.1:5000", "t-0a/web", DIGEST)
        == f"127.0.0.1:5000/t-0a/web@{DIGEST}"
    )
    with pytest.raises(RuntimeFailure, match="malformed digest"):
        pinned_reference("127.0.0.1:5000", "t-0a/web", "sha256:short")


class RecordingClient:
    """Records engine calls: a bad input must be refused before any of them."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.api = self

    def tag(self, *args: Any, **kwargs: Any) -> bool:
        self.calls.append("tag")
        return True

    def push(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("push")
        return iter([{"aux": {"Tag": "x", "Digest": DIGEST, "Size": 1}}])


@pytest.mark.parametrize(
    "image_id", ["berth/busybox:latest", "sha256:abc", "cd" * 32, "", IMAGE.upper()]
)
def test_only_a_full_image_id_is_pushed(image_id: str) -> None:
    client = RecordingClient()
    with pytest.raises(InvalidInput, match="image id"):
        push_image(client, "127.0.0.1:5000", image_id, "t-0a/web")
    assert client.calls == []


def test_bad_repository_makes_no_engine_call() -> None:
    client = RecordingClient()
    with pytest.raises(InvalidInput):
        push_image(client, "127.0.0.1:5000", IMAGE, "t-0a/../../x")
    assert client.calls == []


def test_push_returns_the_pinned_reference() -> None:
    client = RecordingClient()
    pushed = push_image(client, "127.0.0.1:5000", IMAGE, "t-0a/web")
    assert pushed.reference == f"127.0.0.1:5000/t-0a/web@{DIGEST}"
    assert client.calls == ["tag", "push"]


def test_stream_counts_pushed_and_existing_layers() -> None:
    lines = [
        {"status": "The push refers to repository [127.0.0.1:5000/t-0a/web]"},
        {"id": "l1", "status": "Preparing"},
        {"id": "l2", "status": "Preparing"},
        {"id": "l3", "status": "Preparing"},
        {"id": "l1", "status": "Layer already exists"},
        {"id": "l2", "status": "Pushing", "progressDetail": {"current": 1, "total": 2}},
        {"id": "l2", "status": "Pushed"},
        {"id": "l3", "status": "Mounted from t-0a/other"},
        {"status": f"id-x: digest: {DIGEST} size: 527"},
        {"progressDetail": {}, "aux": {"Tag": "id-x", "Digest": DIGEST, "Size": 527}},
    ]
    outcome = read_push_stream(lines)
    assert (outcome.digest, outcome.pushed, outcome.existing) == (DIGEST, 1, 2)


def test_stream_error_is_a_runtime_failure() -> None:
    lines = [
        {"id": "l1", "status": "Preparing"},
        {"errorDetail": {"message": "unknown blob"}, "error": "unknown blob"},
    ]
    with pytest.raises(RuntimeFailure, match="unknown blob"):
        read_push_stream(lines)


def test_a_read_only_registry_is_told_apart() -> None:
    # The engine's words when the registry answers 405 to a write (read-only mode).
    lines = [
        {
            "error": "error parsing HTTP 405 response body: invalid character 'M' looking for "
            'beginning of value: "Method not allowed\\n"'
        }
    ]
    with pytest.raises(RegistryReadOnly, match="read-only"):
        read_push_stream(lines)


def test_stream_without_digest_is_a_runtime_failure() -> None:
    with pytest.raises(RuntimeFailure, match="digest"):
        read_push_stream([{"id": "l1", "status": "Pushed"}])
