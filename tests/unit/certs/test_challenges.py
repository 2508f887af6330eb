"""The challenge store and the tiny responder, on loopback."""

from __future__ import annotations

import http.client
import threading

import pytest

from berth.certs.challenge_server import ChallengeServer
from berth.certs.challenges import ChallengeStore

TOKEN = "tok_EN-123"
ANSWER = "tok_EN-123.thumbprint_AB-c"


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_store_refuses_malformed_entries_and_answers_only_good_tokens() -> None:
    store = ChallengeStore()
    for token, answer in [("../etc", ANSWER), ("a" * 129, ANSWER), (TOKEN, "x\ny"), ("", ANSWER)]:
        with pytest.raises(ValueError):
            store.put(token, answer)
    store.put(TOKEN, ANSWER)
    assert store.get(TOKEN) == ANSWER and store.get("../" + TOKEN) is None
    store.remove(TOKEN)
    assert store.get(TOKEN) is None and len(store) == 0


def test_the_store_is_safe_across_threads() -> None:
    store = ChallengeStore()

    def work(n: int) -> None:
        for i in range(200):
            token = f"t{n}-{i}"
            store.put(token, f"{token}.x")
            assert store.get(token) == f"{token}.x"
            store.remove(token)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 0


def test_the_responder_serves_only_challenges() -> None:
    store = ChallengeStore()
    store.put(TOKEN, ANSWER)
    with ChallengeServer(store) as server:
        assert _get(server.port, f"/.well-known/acme-challenge/{TOKEN}") == (200, ANSWER.encode())
        assert _get(server.port, f"/.well-known/acme-challenge/{TOKEN}?x=1")[0] == 200
        status, body = _get(server.port, f"/.well-known/acme-challenge/{TOKEN}", "HEAD")
        assert (status, body) == (200, b"")
        for path in [
            "/",
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/unknown",
            f"/.well-known/acme-challenge/{TOKEN}/x",
            f"/.well-known/acme-challenge/..%2f{TOKEN}",
            f"/other/{TOKEN}",
            "/.well-known/acme-challenge/" + "a" * 129,
        ]:
            assert _get(server.port, path)[0] == 404, path
        assert _get(server.port, f"/.well-known/acme-challenge/{TOKEN}", "POST")[0] == 501
