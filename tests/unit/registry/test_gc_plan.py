"""The pure halves of garbage collection: which manifests and which node images go."""

from __future__ import annotations

from berth.builds.image_policy import LABEL_BUILD_INSTALLATION
from berth.registry.gc import (
    EngineImage,
    HeldManifest,
    kept_manifests,
    plan_node_images,
    plan_registry_gc,
)

ADDR = "127.0.0.1:5000"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
NOW = 1_000_000.0


def test_kept_manifests_reads_only_pinned_references_into_this_registry() -> None:
    refs = [
        f"{ADDR}/t-0a/web@{D1}",
        f"{ADDR}/t-0a/web:id-x",  # unpinned: names no manifest for sure
        f"10.0.0.1:5000/t-0a/web@{D2}",  # another registry
        "berth-app/web:v3",  # a local image
        f"{ADDR}/t-0a/api@sha256:short",
    ]
    assert kept_manifests(refs, ADDR) == {("t-0a/web", D1)}


def test_plan_keeps_what_releases_name_and_what_is_young() -> None:
    held = [
        HeldManifest("t-0a/web", D1, ("id-1",), NOW - 7200),
        HeldManifest("t-0a/web", D2, ("id-2",), NOW - 7200),
        HeldManifest("t-0a/web", D3, ("id-3",), NOW - 60),  # pushed, its release not yet written
        HeldManifest("t-0b/web", D1, ("id-1",), NOW - 7200),  # same bytes, another tenant's repo
        HeldManifest("t-0b/api", D2, ("id-2",), None),  # age unknown: old
    ]
    plan = plan_registry_gc(held, frozenset({("t-0a/web", D1)}), NOW, grace_seconds=3600)
    assert [(m.repository, m.digest) for m in plan.kept] == [("t-0a/web", D1)]
    assert [(m.repository, m.digest) for m in plan.young] == [("t-0a/web", D3)]
    assert [(m.repository, m.digest) for m in plan.delete] == [
        ("t-0a/web", D2),
        ("t-0b/api", D2),
        ("t-0b/web", D1),
    ]


def test_plan_with_everything_kept_deletes_nothing() -> None:
    held = [HeldManifest("t-0a/web", D1), HeldManifest("t-0a/web", D2)]
    keep = frozenset({("t-0a/web", D1), ("t-0a/web", D2)})
    assert plan_registry_gc(held, keep, NOW).delete == ()


INST = "abc123"


def _image(id_: str, **kw: object) -> EngineImage:
    kw.setdefault("created", NOW - 7200)
    return EngineImage(id=id_, **kw)  # type: ignore[arg-type]


def _plan(images: list[EngineImage], **kw: object) -> list[str]:
    args: dict[str, object] = {
        "installation": INST,
        "registry_address": ADDR,
        "keep_references": [f"{ADDR}/t-0a/web@{D1}", "berth-app/web:v7"],
        "keep_image_ids": ["sha256:kept-id"],
        "used_image_ids": ["sha256:used"],
        "now": NOW,
        "grace_seconds": 3600,
    }
    args.update(kw)
    return [i.id for i in plan_node_images(images, **args)]  # type: ignore[arg-type]


def test_node_plan_removes_only_this_installations_unkept_images() -> None:
    ours = {LABEL_BUILD_INSTALLATION: INST}
    images = [
        _image("sha256:pulled-kept", repo_digests=(f"{ADDR}/t-0a/web@{D1}",)),
        _image("sha256:pulled-old", repo_digests=(f"{ADDR}/t-0a/web@{D2}",)),
        _image("sha256:built-old", repo_tags=("berth-app/web:v1",), labels=ours),
        _image("sha256:built-kept-tag", repo_tags=("berth-app/web:v7",), labels=ours),
        _image("sha256:kept-id", labels=ours),
        _image("sha256:used", labels=ours),
        _image("sha256:young", labels=ours, created=NOW - 10),  # type: ignore[arg-type]
        _image("sha256:other-inst", labels={LABEL_BUILD_INSTALLATION: "zzz"}),
        _image("sha256:base", repo_tags=("berth/python:3",), labels=ours),
        _image("sha256:base-untagged", labels={"berth.base": "busybox"}),
        # Built FROM a base: it inherits the base's label, and is still an app image.
        _image("sha256:built-on-base", labels={**ours, "berth.base": "busybox"}),
        _image("sha256:foreign", repo_tags=("nginx:latest",)),
        _image("sha256:other-registry", repo_digests=(f"10.0.0.9:5000/t-0a/web@{D2}",)),
        # The platform's own images pulled from its registry: the one a guard runs stays.
        _image("sha256:guard-old", repo_digests=(f"{ADDR}/berth/node-guard@{D2}",)),
        _image("sha256:used", repo_digests=(f"{ADDR}/berth/ingress@{D1}",)),
    ]
    assert sorted(_plan(images)) == [
        "sha256:built-old",
        "sha256:built-on-base",
        "sha256:guard-old",
        "sha256:pulled-old",
    ]


def test_node_plan_oldest_first() -> None:
    ours = {LABEL_BUILD_INSTALLATION: INST}
    images = [
        _image("sha256:b", labels=ours, created=NOW - 5000),  # type: ignore[arg-type]
        _image("sha256:a", labels=ours, created=NOW - 9000),  # type: ignore[arg-type]
    ]
    assert _plan(images) == ["sha256:a", "sha256:b"]
