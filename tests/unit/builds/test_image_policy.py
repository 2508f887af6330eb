"""Which images a tenant may use (pure, with an in-memory image store)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.builds import image_policy as policy
from berth.errors import InvalidInput, NotFound

INST = "inst-1"
IDS = {
    "berth/python:latest": "sha256:" + "1" * 64,
    "berth/busybox:latest": "sha256:" + "2" * 64,
    "berth-app/mine:v1": "sha256:" + "3" * 64,
    "berth-app/theirs:v1": "sha256:" + "4" * 64,
    "registry.example:5000/team/app:v2": "sha256:" + "5" * 64,
}
TENANT_OF = {"berth-app/mine:v1": "tenant-a", "berth-app/theirs:v1": "tenant-b"}


class Store:
    def inspect_image(self, name: str) -> Mapping[str, Any] | None:
        if name not in IDS:
            return None
        labels = {}
        if name in TENANT_OF:
            labels = {
                policy.LABEL_BUILD_TENANT: TENANT_OF[name],
                policy.LABEL_BUILD_INSTALLATION: INST,
            }
        return {"Id": IDS[name], "Config": {"Labels": labels, "Cmd": ["sh"]}}

    def base_images(self) -> list[str]:
        return ["berth/busybox:latest", "berth/python:latest"]


def resolve(ref: str, registry: str = "", **kwargs: Any) -> policy.ResolvedImage:
    return policy.resolve(ref, Store(), "tenant-a", INST, registry=registry, **kwargs)


def test_base_images_default_to_latest() -> None:
    assert policy.classify("berth/python") == policy.ImageRef("base", "berth/python:latest")
    assert policy.classify("berth/python:3") == policy.ImageRef("base", "berth/python:3")
    assert resolve("berth/python").image_id == IDS["berth/python:latest"]
    assert resolve("berth/busybox:latest").config["Cmd"] == ["sh"]


def test_own_build_is_allowed() -> None:
    assert resolve("berth-app/mine:v1").image_id == IDS["berth-app/mine:v1"]


@pytest.mark.parametrize(
    "ref",
    [
        "sha256:" + "4" * 64,
        "4" * 64,
        "44",
        "4",
        "ABCDEF12",
        "Sha256:abc",
        "ubuntu",
        "alpine:3",
        "library/ubuntu:22.04",
        "docker.io/library/ubuntu",
        "berth-evil/x",
        "berth-test/does-not-exist:1",
        "localhost/x",
        "berth/../x",
        "",
        "a b",
        "x" * 300,
    ],
)
def test_refused_references_say_what_is_allowed(ref: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        resolve(ref)
    assert caught.value.code == policy.ERR_NOT_ALLOWED
    assert "berth/<name>" in caught.value.message
    assert "berth-app/<app>" in caught.value.message


def test_another_tenants_image_is_like_a_missing_one() -> None:
    with pytest.raises(NotFound) as theirs:
        resolve("berth-app/theirs:v1")
    with pytest.raises(NotFound) as missing:
        resolve("berth-app/theirs:v2")
    assert theirs.value.code == missing.value.code == policy.ERR_NOT_FOUND
    assert theirs.value.message.replace("v1", "v2") == missing.value.message
    assert "berth/busybox:latest, berth/python:latest" in missing.value.message


def test_another_installations_image_is_refused() -> None:
    class Other(Store):
        def inspect_image(self, name: str) -> Mapping[str, Any] | None:
            attrs = super().inspect_image(name)
            assert attrs is not None
            attrs["Config"]["Labels"][policy.LABEL_BUILD_INSTALLATION] = "elsewhere"
            return attrs

    with pytest.raises(NotFound, match="not on this machine"):
        policy.resolve("berth-app/mine:v1", Other(), "tenant-a", INST)


def test_missing_base_image_lists_the_bases_and_nothing_of_the_host() -> None:
    with pytest.raises(NotFound) as caught:
        resolve("berth/ruby:3")
    message = caught.value.message
    assert caught.value.code == policy.ERR_NOT_FOUND
    assert "berth/ruby:3" in message and "berth/python:latest" in message
    assert "/" not in message.replace("berth/", "").replace("berth-app/", "")


def test_registry_only_when_configured_and_matching() -> None:
    ref = "registry.example:5000/team/app:v2"
    with pytest.raises(InvalidInput, match="no registry is configured"):
        resolve(ref)
    with pytest.raises(InvalidInput, match=r"only the registry other\.example"):
        resolve(ref, registry="other.example")
    assert resolve(ref, registry="registry.example:5000").image_id == IDS[ref]
    assert policy.classify("registry.example/x", registry="registry.example").name == (
        "registry.example/x:latest"
    )
    with pytest.raises(InvalidInput) as hub:
        policy.classify("team/app:1", registry="registry.example")
    assert "registry" not in hub.value.message.split(". Use")[0]
    digest = "registry.example/x@sha256:" + "a" * 64
    assert policy.classify(digest, registry="registry.example").name == digest


def test_stage_names_only_in_builds() -> None:
    resolved = resolve("build", stages={"build": "sha256:" + "9" * 64}, builds=True)
    assert resolved.ref.kind == "stage" and resolved.image_id == "sha256:" + "9" * 64
    with pytest.raises(InvalidInput) as caught:
        resolve("build")
    assert "earlier stage" not in caught.value.message
    with pytest.raises(InvalidInput) as in_build:
        resolve("nope", stages={"build": "x"}, builds=True)
    assert "earlier stage" in in_build.value.message


def test_deploy_resolver_raises_the_policy_errors() -> None:
    resolve_for_deploy = policy.deploy_resolver(Store(), "tenant-a", INST, "")
    assert resolve_for_deploy("berth-app/mine:v1") == IDS["berth-app/mine:v1"]
    with pytest.raises(NotFound) as caught:
        resolve_for_deploy("berth-app/theirs:v1")
    assert caught.value.code == policy.ERR_NOT_FOUND


@given(st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=64))
def test_no_hex_string_is_ever_an_image(ref: str) -> None:
    with pytest.raises(InvalidInput):
        policy.classify(ref, registry="registry.example")
