"""The ledger in the real store (SQLite here, PostgreSQL under `make test-postgres`): amounts are
parsed strictly, idempotency keys post once, and concurrent writers never lose or make a cent."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from berth.billing import ledger
from berth.billing.money import EUR
from berth.errors import Conflict
from berth.services import billing as bsvc
from berth.store.tables import LedgerEntryRow, LedgerTx
from tests.api.conftest import Account, Env, assert_error

pytestmark = pytest.mark.store


def ledger_size(env: Env) -> tuple[int, int]:
    with env.db() as session:
        txs = session.scalar(select(func.count(LedgerTx.id))) or 0
        entries = session.scalar(select(func.count(LedgerEntryRow.id))) or 0
    return int(txs), int(entries)


def total_of_all_entries(env: Env) -> int:
    with env.db() as session:
        return int(session.scalar(select(func.coalesce(func.sum(LedgerEntryRow.amount_minor), 0))))


@pytest.fixture(scope="module")
def payer(env: Env) -> Account:
    return env.signup("ledger")


BAD_AMOUNTS = [
    "-5",
    "-0.01",
    "0",
    "0.00",
    "1.234",
    "0.001",
    "abc",
    "1e5",
    "1E5",
    "1000000000001",
    "99999999999999999999999999",
    "",
    " 5",
    "5 ",
    "1,000",
    "1 000",
    "NaN",
    "nan",
    "Infinity",
    "inf",
    "0x10",
    "+5",
    "007",
    "5.",
    ".5",
    "\u0663",  # an Arabic-Indic digit three
    "5\n",
]


@pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=repr)
def test_bad_credit_amounts_are_422_and_change_nothing(
    env: Env, payer: Account, amount: str
) -> None:
    before, size = env.balance(payer.tenant), ledger_size(env)
    resp = env.call(
        "POST", f"/admin/tenants/{payer.tenant}/credit", env.admin, json={"amount": amount}
    )
    assert_error(resp, 422, ("invalid_amount", "invalid"))
    assert env.balance(payer.tenant) == before
    assert ledger_size(env) == size


@pytest.mark.parametrize("amount", [5, 5.5, None, ["5"], {"v": "5"}, True], ids=repr)
def test_amounts_must_be_text(env: Env, payer: Account, amount: object) -> None:
    before = env.balance(payer.tenant)
    resp = env.call(
        "POST", f"/admin/tenants/{payer.tenant}/credit", env.admin, json={"amount": amount}
    )
    assert_error(resp, 422, "invalid")
    assert env.balance(payer.tenant) == before


@pytest.mark.parametrize("amount", ["abc", "0", "-0", "--5", "+5", "- 5", "1.234", "-1e3", ""])
def test_bad_adjustments_are_422_and_change_nothing(env: Env, payer: Account, amount: str) -> None:
    before, size = env.balance(payer.tenant), ledger_size(env)
    resp = env.call(
        "POST",
        f"/admin/tenants/{payer.tenant}/adjust",
        env.admin,
        json={"amount": amount, "memo": "test"},
    )
    assert_error(resp, 422)
    assert env.balance(payer.tenant) == before
    assert ledger_size(env) == size


def test_good_amounts_credit_exactly(env: Env, payer: Account) -> None:
    before = env.balance(payer.tenant)
    for amount, minor in (("1", 100), ("0.01", 1), ("12.5", 1250), ("1000000000000", 10**14)):
        result = env.credit(payer.tenant, amount)
        assert result["created"] is True
        assert env.balance(payer.tenant) == before + minor
        before += minor
    adjusted = env.ok(
        "POST",
        f"/admin/tenants/{payer.tenant}/adjust",
        env.admin,
        json={"amount": "-1000000000000", "memo": "undo the huge test credit"},
        status=201,
    )
    assert adjusted["balance_minor"] == before - 10**14
    assert total_of_all_entries(env) == 0


def test_same_idempotency_key_credits_once(env: Env, payer: Account) -> None:
    before = env.balance(payer.tenant)
    body = {"amount": "7.25", "idempotency_key": "order-4711", "memo": "first"}
    path = f"/admin/tenants/{payer.tenant}/credit"
    first = env.ok("POST", path, env.admin, json=body, status=201)
    assert first["created"] is True and first["balance_minor"] == before + 725
    again = env.ok("POST", path, env.admin, json={**body, "memo": "retried"}, status=201)
    assert again["created"] is False
    assert again["transaction_id"] == first["transaction_id"]
    assert env.balance(payer.tenant) == before + 725
    # The same key for a different amount is a conflict, not a second credit.
    err = assert_error(env.call("POST", path, env.admin, json={**body, "amount": "7.26"}), 409)
    assert err["code"] == "idempotency_conflict"
    assert env.balance(payer.tenant) == before + 725
    # ... and so is the same key for another tenant.
    other = env.signup("other-ledger")
    resp = env.call("POST", f"/admin/tenants/{other.tenant}/credit", env.admin, json=body)
    assert_error(resp, 409, "idempotency_conflict")
    assert env.balance(other.tenant) == 0
    for bad_key in ("has space", "", "x" * 151, "tab\there"):
        resp = env.call("POST", path, env.admin, json={**body, "idempotency_key": bad_key})
        assert_error(resp, 422)
    assert env.balance(payer.tenant) == before + 725


# -- concurrency: a property test over the real store ------------------------------------------


@dataclass(frozen=True)
class Op:
    key: str
    tenant: int
    kind: str  # topup / charge
    amount: int

    def transaction(self, tenant_id: str) -> ledger.Transaction:
        if self.kind == "topup":
            return ledger.topup(
                tenant_id, self.amount, self.key, time.time(), "payment", currency=EUR
            )
        return ledger.charge(tenant_id, self.amount, self.key, time.time(), currency=EUR)

    def signed(self) -> int:
        return self.amount if self.kind == "topup" else -self.amount


@st.composite
def workloads(draw: st.DrawFn) -> list[list[Op]]:
    """Per thread, a list of postings. Keys repeat (retries, within and across threads); now and
    then a key comes back with different content (a client bug: must be refused)."""
    keys = draw(st.integers(min_value=1, max_value=12))
    canonical = [
        Op(
            f"k{i}",
            draw(st.integers(0, 2)),
            draw(st.sampled_from(["topup", "charge"])),
            draw(st.integers(1, 10**6)),
        )
        for i in range(keys)
    ]
    threads = draw(st.integers(min_value=2, max_value=4))
    out: list[list[Op]] = []
    for _ in range(threads):
        ops = []
        for _ in range(draw(st.integers(min_value=1, max_value=8))):
            op = canonical[draw(st.integers(0, keys - 1))]
            if draw(st.integers(0, 9)) == 0:
                op = Op(op.key, op.tenant, op.kind, op.amount + 1)  # same key, other content
            ops.append(op)
        out.append(ops)
    return out


@dataclass
class Outcome:
    op: Op
    created: bool | None  # None: refused as a conflict


def post_all(
    env: Env, tenant_ids: list[str], prefix: str, workload: list[list[Op]]
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(len(workload))

    def worker(ops: list[Op]) -> None:
        try:
            with env.platform.sessions() as session:
                start.wait(timeout=30)
                for op in ops:
                    keyed = Op(f"{prefix}:{op.key}", op.tenant, op.kind, op.amount)
                    tx = keyed.transaction(tenant_ids[op.tenant])
                    for attempt in range(50):
                        try:
                            _, created = bsvc.post(session, tx, tenant_ids[op.tenant])
                            session.commit()
                            result: bool | None = created
                            break
                        except Conflict:
                            session.rollback()
                            result = None
                            break
                        except OperationalError:
                            # SQLite's single writer may be busy: a client retries the same key.
                            session.rollback()
                            time.sleep(0.01 * (attempt + 1))
                    else:
                        raise AssertionError(f"could not post {keyed}")
                    with lock:
                        outcomes.append(Outcome(keyed, result))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(ops,)) for ops in workload]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return outcomes


@pytest.fixture(scope="module")
def ledger_tenants(env: Env) -> list[str]:
    return [env.tenant_id(env.signup(f"concurrent{i}").tenant) for i in range(3)]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(workload=workloads())
def test_concurrent_postings_never_lose_or_make_a_cent(
    env: Env, ledger_tenants: list[str], workload: list[list[Op]]
) -> None:
    prefix = f"prop{time.monotonic_ns()}"
    before = {t: bsvc_balance(env, t) for t in ledger_tenants}
    outcomes = post_all(env, ledger_tenants, prefix, workload)
    assert len(outcomes) == sum(len(ops) for ops in workload)

    with env.db() as session:
        stored = {
            tx.key: tx
            for tx in session.scalars(select(LedgerTx).where(LedgerTx.key.like(f"{prefix}:%")))
        }
        entries: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for tx_id, account, amount in session.execute(
            select(LedgerEntryRow.tx_id, LedgerEntryRow.account, LedgerEntryRow.amount_minor)
            .join(LedgerTx, LedgerTx.id == LedgerEntryRow.tx_id)
            .where(LedgerTx.key.like(f"{prefix}:%"))
        ):
            entries[tx_id].append((account, int(amount)))
        key_counts = session.execute(
            select(LedgerTx.key, func.count(LedgerTx.id))
            .where(LedgerTx.key.like(f"{prefix}:%"))
            .group_by(LedgerTx.key)
        ).all()
    assert all(count == 1 for _, count in key_counts), key_counts
    assert {o.op.key for o in outcomes} == set(stored)

    # Exactly one posting per key was new; retries agree with it, different content was refused.
    by_key: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_key[outcome.op.key].append(outcome)
    expected: dict[str, int] = defaultdict(int)
    for key, tries in by_key.items():
        row = stored[key]
        tenant_id = ledger_tenants[tries[0].op.tenant]
        winner = dict(entries[row.id])[ledger.tenant_account(tenant_id)]
        assert len(entries[row.id]) == 2 and sum(a for _, a in entries[row.id]) == 0
        assert sum(1 for t in tries if t.created) == 1, tries
        for t in tries:
            same = t.op.signed() == winner and row.kind == t.op.kind
            assert (t.created is not None) == same, (t, winner)
        expected[tenant_id] += winner
    for tenant_id in ledger_tenants:
        assert bsvc_balance(env, tenant_id) == before[tenant_id] + expected[tenant_id]
    assert total_of_all_entries(env) == 0


def bsvc_balance(env: Env, tenant_id: str) -> int:
    with env.db() as session:
        return bsvc.balance(session, tenant_id)
