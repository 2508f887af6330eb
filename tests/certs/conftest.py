"""One pebble (and one HTTP-01 responder it validates against) per test module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from berth.certs.challenge_server import ChallengeServer
from berth.certs.challenges import ChallengeStore
from tests.certs.pebble import Pebble


@dataclass
class AcmeEnv:
    pebble: Pebble
    store: ChallengeStore  # what the responder serves
    responder: ChallengeServer


@pytest.fixture(scope="module")
def acme_env() -> Iterator[AcmeEnv]:
    store = ChallengeStore()
    responder = ChallengeServer(store).start()
    pebble = Pebble(http_port=responder.port)
    try:
        pebble.start()
        yield AcmeEnv(pebble=pebble, store=store, responder=responder)
    finally:
        pebble.stop()
        responder.stop()


def unique_domain(prefix: str = "app") -> str:
    # challtestsrv answers 127.0.0.1 for any name; .test is reserved (RFC 2606) and never real.
    return f"{prefix}-{uuid.uuid4().hex[:10]}.berth.test"
