"""Benchmark: certificate issuance latency against a real pebble, on loopback.

Each row is the median (and min/max) of N orders for fresh domains, after one warm-up order:

- ``berth issuer``: berth.certs.AcmeIssuer.obtain (directory, account, order, HTTP-01 answered
  through the ChallengeStore and the responder, polling, finalize with a fresh key, download);
- ``berth manager``: the same through CertManager.reconcile (plan, order, key + chain written
  atomically, state saved);
- ``acme library (baseline)``: the same order with certbot's ``acme`` library called directly,
  one client reused, its own poll_and_finalize, no Berth around it.

pebble runs with PEBBLE_VA_NOSLEEP=1, so the figures are the client's and the protocol's cost,
not a real CA's validation delay. Prints a table and writes bench/results/cert_issuance.json.

    python bench/cert_issuance.py [--runs 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from acme import challenges, client, crypto_util, messages  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from josepy.jwk import JWKRSA  # noqa: E402
from tests.certs.pebble import Pebble  # noqa: E402

from berth.certs.acme_client import AcmeIssuer, Issued, load_or_create_account_key  # noqa: E402
from berth.certs.challenge_server import ChallengeServer  # noqa: E402
from berth.certs.challenges import ChallengeStore  # noqa: E402
from berth.certs.manager import CertManager  # noqa: E402
from berth.certs.model import CertState  # noqa: E402


def unique_domain(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}.berth.test"  # .test: resolved by challtestsrv only


def _baseline(pebble: Pebble, store: ChallengeStore, key_path: Path) -> Callable[[str], None]:
    key: JWKRSA = load_or_create_account_key(key_path)
    net = client.ClientNetwork(key, user_agent="bench-baseline")
    net.verify_ssl = str(pebble.trust)  # type: ignore[assignment]
    net.session.trust_env = False
    acme = client.ClientV2(client.ClientV2.get_directory(pebble.directory_url, net), net)
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))

    def order(domain: str) -> None:
        cert_key = ec.generate_private_key(ec.SECP256R1())
        pem = cert_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        orderr = acme.new_order(crypto_util.make_csr(pem, [domain]))
        for authzr in orderr.authorizations:
            challb = next(
                c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01)
            )
            response, validation = challb.response_and_validation(net.key)
            store.put(challb.chall.encode("token"), validation)
            acme.answer_challenge(challb, response)
        done = acme.poll_and_finalize(orderr, dt.datetime.now() + dt.timedelta(seconds=60))
        if "BEGIN CERTIFICATE" not in done.fullchain_pem:
            raise RuntimeError("baseline got no certificate")

    return order


def _time(label: str, order: Callable[[str], None], runs: int) -> dict[str, object]:
    order(unique_domain("warmup"))
    samples = []
    for _ in range(runs):
        domain = unique_domain("bench")
        start = time.perf_counter()
        order(domain)
        samples.append((time.perf_counter() - start) * 1000)
    return {
        "case": label,
        "runs": runs,
        "median_ms": round(statistics.median(samples), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "cert_issuance.json"
    )
    args = parser.parse_args()

    store = ChallengeStore()
    with (
        tempfile.TemporaryDirectory(prefix="berth-bench-certs-") as tmp,
        ChallengeServer(store) as responder,
    ):
        pebble = Pebble(http_port=responder.port)
        try:
            pebble.start()
            issuer = AcmeIssuer(
                pebble.directory_url, Path(tmp) / "account.key", store, trust=pebble.trust
            )

            def berth_issuer(domain: str) -> None:
                if not isinstance(issuer.obtain(domain), Issued):
                    raise RuntimeError(f"berth issuer failed for {domain}")

            manager = CertManager(issuer, Path(tmp) / "certs")

            def berth_manager(domain: str) -> None:
                if manager.reconcile([domain])[domain].state is not CertState.ISSUED:
                    raise RuntimeError(f"berth manager failed for {domain}")

            rows = [
                _time("berth issuer (AcmeIssuer.obtain)", berth_issuer, args.runs),
                _time("berth manager (reconcile, files written)", berth_manager, args.runs),
                _time(
                    "acme library (baseline)",
                    _baseline(pebble, store, Path(tmp) / "baseline.key"),
                    args.runs,
                ),
            ]
        finally:
            pebble.stop()

    print(f"certificate issuance against pebble on loopback, median of {args.runs}")
    print(f"{'case':<44} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    for row in rows:
        print(f"{row['case']:<44} {row['median_ms']:>10} {row['min_ms']:>8} {row['max_ms']:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": args.runs, "cases": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
