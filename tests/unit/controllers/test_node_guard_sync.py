"""The node guard's sync over the fake Swarm: it creates the guard, updates it when a node
joins or leaves or an ingress label changes, keeps it otherwise, runs only as the leader, and
an image that cannot be made is a clear error, tried again later (not at every pass)."""

from __future__ import annotations

from typing import Any

import pytest

from berth.controllers.node_guard_sync import GuardSettings, NodeGuardSync
from berth.errors import BerthError
from berth.swarm.fake import FakeSwarmAPI
from berth.swarm.guard_service import LABEL_GUARD, SERVICE_NAME

IMAGE = "10.0.0.254:5000/berth/node-guard@sha256:" + "b" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def swarm() -> FakeSwarmAPI:
    api = FakeSwarmAPI()
    # A real manager has the node-local "host" network predefined; the fake knows only the
    # networks made through it.
    api.ensure_overlay("host", {})
    api.add_node("m1", role="manager", availability="drain", addr="10.0.0.2")
    api.add_node("w1", addr="10.0.0.11")
    api.add_node("w2", addr="10.0.0.12")
    return api


def sync_of(api: FakeSwarmAPI, **kwargs: Any) -> NodeGuardSync:
    settings = GuardSettings(server_addresses=(), protected=("10.240.0.0/16",), join_from=())
    return NodeGuardSync(
        api, "inst1", settings, lambda: IMAGE, route_source=lambda addr: "10.0.0.254", **kwargs
    )


def guard_args(api: FakeSwarmAPI) -> list[str]:
    (service,) = api.services(labels={LABEL_GUARD: "true"})
    args: list[str] = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"]
    return args


def values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_creates_then_keeps_the_guard() -> None:
    api = swarm()
    sync = sync_of(api)
    first = sync.sync()
    assert first.action.kind == "create"
    args = guard_args(api)
    assert values(args, "--nodes") == ["10.0.0.2", "10.0.0.11", "10.0.0.12"]
    assert values(args, "--ingress") == ["10.0.0.254"]  # this server, toward the manager
    writes = api.writes
    assert sync.sync().action.kind == "keep"
    assert api.writes == writes


def test_a_join_a_removal_and_an_ingress_label_update_it() -> None:
    api = swarm()
    sync = sync_of(api)
    sync.sync()
    w3 = api.add_node("w3", addr="10.0.0.13")
    assert sync.sync().action.kind == "update"
    assert "10.0.0.13" in values(guard_args(api), "--nodes")
    node = next(n for n in api.nodes() if n["ID"] == w3)
    api.update_node(w3, node["Version"]["Index"], {**node["Spec"], "Labels": {"ingress": "true"}})
    assert sync.sync().action.kind == "update"
    assert values(guard_args(api), "--ingress") == ["10.0.0.13", "10.0.0.254"]
    (service,) = api.services(labels={LABEL_GUARD: "true"})
    assert service["Spec"]["Name"] == SERVICE_NAME


def test_configured_server_addresses_win_over_the_route() -> None:
    api = swarm()
    settings = GuardSettings(("10.0.0.250", "10.0.0.251"), (), ())
    sync = NodeGuardSync(api, "inst1", settings, lambda: IMAGE, route_source=lambda a: "x")
    sync.sync()
    assert values(guard_args(api), "--ingress") == ["10.0.0.250", "10.0.0.251"]


def test_only_the_leader_on_the_swarm_backend_acts() -> None:
    api = swarm()
    assert sync_of(api, is_leader=lambda: False).pass_once() is None
    assert sync_of(api, wanted=lambda: False).pass_once() is None
    assert api.services(labels={LABEL_GUARD: "true"}) == []


def test_an_image_that_cannot_be_made_is_retried_later_not_every_pass() -> None:
    api = swarm()
    clock = Clock()
    calls: list[int] = []

    def image() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise BerthError("berth/python:3 is missing on the engine Berth talks to")
        return IMAGE

    settings = GuardSettings((), (), ())
    sync = NodeGuardSync(
        api, "inst1", settings, image, route_source=lambda a: "10.0.0.254", clock=clock
    )
    with pytest.raises(BerthError, match="berth/python:3 is missing"):
        sync.sync()
    with pytest.raises(BerthError, match="not ready: berth/python:3 is missing"):
        sync.sync()
    assert len(calls) == 1
    clock.now += 31
    assert sync.sync().action.kind == "create"
    assert api.services(labels={LABEL_GUARD: "true"})


def test_facts_the_guard_would_refuse_write_nothing() -> None:
    api = swarm()
    settings = GuardSettings((), ("10.0.0.1/8",), ())  # host bits set
    sync = NodeGuardSync(api, "inst1", settings, lambda: IMAGE, route_source=lambda a: "10.0.0.9")
    with pytest.raises(BerthError, match="refused: protected"):
        sync.sync()
    assert api.services(labels={LABEL_GUARD: "true"}) == []
