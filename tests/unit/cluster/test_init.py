"""`berth cluster init` over the fake engine: found a swarm once, then change nothing; a
worker of another swarm is a 409; the backend recorded in the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from berth.cluster.init import (
    check_advertise_addr,
    current_backend,
    init_swarm,
    record_backend,
)
from berth.errors import Conflict, InvalidInput
from berth.settings import Settings
from berth.store.db import make_engine, make_sessionmaker, migrate
from tests.unit.cluster.fake_swarm import FakeSwarm, api_error


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, swarm_advertise_addr="", swarm_default_addr_pool="10.240.0.0/16")


def test_init_founds_a_swarm_for_this_machine(settings: Settings) -> None:
    engine = FakeSwarm()
    result = init_swarm(engine, settings, "10.0.0.11")
    assert result.changed and result.address == "10.0.0.11:2377"
    assert result.next_step == "berth nodes join-command"
    call = engine.init_calls[0]
    assert call["advertise_addr"] == "10.0.0.11" and call["listen_addr"] == "10.0.0.11:2377"
    assert call["default_addr_pool"] == ["10.240.0.0/16"] and call["subnet_size"] == 24
    assert call["swarm_spec"] == {
        "Orchestration": {"TaskHistoryRetentionLimit": 5},
        "Dispatcher": {"HeartbeatPeriod": 2_000_000_000},
    }


def test_init_twice_changes_nothing(settings: Settings) -> None:
    engine = FakeSwarm()
    first = init_swarm(engine, settings, "10.0.0.11")
    again = init_swarm(engine, settings, "10.0.0.11")
    assert not again.changed and again.node_id == first.node_id
    assert "already a manager" in again.message
    assert len(engine.init_calls) == 1


def test_a_worker_of_another_swarm_is_a_clear_409(settings: Settings) -> None:
    engine = FakeSwarm().as_worker_of("192.0.2.7:2377")
    with pytest.raises(Conflict) as err:
        init_swarm(engine, settings, "10.0.0.11")
    assert err.value.status == 409 and "worker of another swarm" in err.value.message
    assert "192.0.2.7:2377" in err.value.message
    assert engine.init_calls == []


@pytest.mark.parametrize("state", ["pending", "locked", "error"])
def test_other_swarm_states_are_409(settings: Settings, state: str) -> None:
    engine = FakeSwarm()
    engine.state = state
    with pytest.raises(Conflict):
        init_swarm(engine, settings)


def test_the_engines_address_complaint_is_a_422(settings: Settings) -> None:
    engine = FakeSwarm()
    engine.init_error = api_error(
        400,
        "could not choose an IP address to advertise since this system has multiple addresses "
        "on different interfaces",
    )
    with pytest.raises(InvalidInput) as err:
        init_swarm(engine, settings)
    assert "--advertise-addr" in err.value.message and engine.state == "inactive"


def test_settings_give_the_address_and_heartbeat(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, swarm_advertise_addr="eth1", swarm_dispatcher_heartbeat_seconds=3
    )
    engine = FakeSwarm()
    init_swarm(engine, settings)
    call = engine.init_calls[0]
    assert call["advertise_addr"] == "eth1" and call["listen_addr"] == "eth1:2377"
    assert call["swarm_spec"]["Dispatcher"] == {"HeartbeatPeriod": 3_000_000_000}


def test_a_heartbeat_under_2s_is_refused_by_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Settings(home=tmp_path, swarm_dispatcher_heartbeat_seconds=1)


@pytest.mark.parametrize("addr", ["10.0.0.5", "fd00::5", "eth0", "enp3s0"])
def test_good_advertise_addresses(addr: str) -> None:
    assert check_advertise_addr(addr) == addr


@pytest.mark.parametrize(
    "addr", ["127.0.0.1", "::1", "0.0.0.0", "224.0.0.1", "10.0.0.1; rm -rf /", "-x", "a" * 20]
)
def test_bad_advertise_addresses(addr: str) -> None:
    with pytest.raises(InvalidInput):
        check_advertise_addr(addr)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    migrate(engine)
    with make_sessionmaker(engine)() as s:
        yield s
    engine.dispose()


def test_the_backend_is_local_until_recorded(session: Session) -> None:
    assert current_backend(session) == "local"
    assert record_backend(session, "swarm") is True
    assert current_backend(session) == "swarm"
    assert record_backend(session, "swarm") is False
