"""The double-entry ledger: balanced transactions, idempotent keys, no cent lost or created."""

from __future__ import annotations

import random
from collections import defaultdict
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.billing.ledger import (
    PLATFORM_ADJUSTMENTS,
    PLATFORM_OPERATOR_CREDIT,
    PLATFORM_PAYMENTS,
    PLATFORM_REVENUE,
    Entry,
    LedgerState,
    Transaction,
    adjustment,
    apply,
    apply_all,
    balance,
    charge,
    refund,
    tenant_account,
    tenant_of,
    topup,
)
from berth.billing.money import EUR, USD
from berth.errors import Conflict, InvalidInput

from .factories import T0

ACME = tenant_account("acme")


def empty_book() -> LedgerState:
    return LedgerState(EUR)


def test_accounts_are_named_by_tenant() -> None:
    assert ACME == "tenant:acme:balance"
    assert tenant_of(ACME) == "acme"
    assert tenant_of(PLATFORM_REVENUE) is None
    with pytest.raises(InvalidInput):
        tenant_account("a:b")


def test_a_payment_topup_credits_the_tenant_from_payments() -> None:
    tx = topup("acme", 5000, "stripe:evt_1", T0, "payment", currency=EUR)
    assert tx.kind == "topup"
    assert set(tx.entries) == {Entry(ACME, 5000), Entry(PLATFORM_PAYMENTS, -5000)}
    book = apply(empty_book(), tx)
    assert book.balance(ACME) == 5000
    assert book.balance(PLATFORM_PAYMENTS) == -5000
    assert sum(book.balances.values()) == 0


def test_operator_credit_comes_from_its_own_account() -> None:
    tx = topup("acme", 700, "credit-1", T0, "operator", currency=EUR, memo="welcome")
    assert tx.amount_on(PLATFORM_OPERATOR_CREDIT) == -700
    assert tx.memo == "welcome"


def test_a_charge_moves_money_to_revenue_and_may_overdraw() -> None:
    book = apply_all(
        empty_book(),
        [
            topup("acme", 1000, "p1", T0, "payment", currency=EUR),
            charge(
                "acme", 1500, f"charge:acme:{T0}", T0 + 5, "usage", currency=EUR, period_start=T0
            ),
        ],
    )
    assert book.balance(ACME) == -500
    assert book.balance(PLATFORM_REVENUE) == 1500
    assert book.transactions[f"charge:acme:{T0}"].period_start == T0
    assert sum(book.balances.values()) == 0


def test_refund_and_adjustment() -> None:
    book = apply_all(
        empty_book(),
        [
            topup("acme", 1000, "p1", T0, "payment", currency=EUR),
            refund("acme", 300, "r1", T0 + 1, "unused credit", currency=EUR),
            adjustment("acme", -50, "adj1", T0 + 2, "manual correction", currency=EUR),
            adjustment("acme", 20, "adj2", T0 + 3, "goodwill", currency=EUR),
        ],
    )
    assert book.balance(ACME) == 1000 - 300 - 50 + 20
    assert book.balance(PLATFORM_PAYMENTS) == -1000 + 300
    assert book.balance(PLATFORM_ADJUSTMENTS) == 30
    assert sum(book.balances.values()) == 0


def test_an_adjustment_needs_a_reason() -> None:
    with pytest.raises(InvalidInput, match="memo"):
        adjustment("acme", 10, "adj", T0, "  ", currency=EUR)


@pytest.mark.parametrize("amount", [0, -1, 1.5, True, "10"])
def test_topups_and_charges_need_positive_integer_amounts(amount: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        topup("acme", amount, "k", T0, "payment", currency=EUR)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_amount"
    with pytest.raises(InvalidInput):
        charge("acme", amount, "k", T0, currency=EUR)  # type: ignore[arg-type]


def test_unknown_topup_source_is_refused() -> None:
    with pytest.raises(InvalidInput, match="source"):
        topup("acme", 1, "k", T0, "gift", currency=EUR)  # type: ignore[arg-type]


def raw(entries: tuple[Entry, ...], **overrides: object) -> Transaction:
    fields: dict[str, object] = {
        "key": "k1",
        "kind": "adjustment",
        "currency": EUR,
        "entries": entries,
        "at": T0,
    }
    fields.update(overrides)
    return Transaction(**fields)  # type: ignore[arg-type]


BALANCED = (Entry(ACME, 10), Entry(PLATFORM_ADJUSTMENTS, -10))


@pytest.mark.parametrize(
    ("entries", "overrides", "message"),
    [
        ((Entry(ACME, 10),), {}, "at least two"),
        ((), {}, "at least two"),
        ((Entry(ACME, 10), Entry(PLATFORM_ADJUSTMENTS, -9)), {}, "sum to zero"),
        ((Entry(ACME, 10), Entry(ACME, -10)), {}, "twice"),
        (list(BALANCED), {}, "tuple"),
        (BALANCED, {"kind": "gift"}, "kind"),
        (BALANCED, {"key": ""}, "idempotency key"),
        (BALANCED, {"key": "has space"}, "idempotency key"),
        (BALANCED, {"key": "x" * 201}, "idempotency key"),
        (BALANCED, {"currency": "EUR"}, "Currency"),
        (BALANCED, {"at": float("nan")}, "finite"),
        (BALANCED, {"at": None}, "number"),
        (BALANCED, {"memo": "x" * 501}, "memo"),
    ],
)
def test_invalid_transactions_are_refused(
    entries: tuple[Entry, ...], overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        raw(entries, **overrides)


@pytest.mark.parametrize(
    ("account", "amount"),
    [
        (ACME, 0),
        (ACME, 1.0),
        (ACME, True),
        ("tenant:acme", 1),
        ("platform:cash", 1),
        ("tenant::balance", 1),
        ("tenant:a b:balance", 1),
    ],
)
def test_invalid_entries_are_refused(account: str, amount: int) -> None:
    with pytest.raises(InvalidInput):
        Entry(account, amount)


def test_a_repeated_key_with_the_same_content_is_a_no_op() -> None:
    first = topup("acme", 5000, "evt_1", T0, "payment", currency=EUR, memo="first delivery")
    retried = topup("acme", 5000, "evt_1", T0 + 60, "payment", currency=EUR, memo="retry")
    book = apply(apply(empty_book(), first), retried)
    assert book.balance(ACME) == 5000
    assert list(book.transactions.values()) == [first]  # the first one is kept
    assert "evt_1" in book


def test_a_repeated_key_with_different_content_is_a_conflict_and_changes_nothing() -> None:
    book = apply(empty_book(), topup("acme", 5000, "evt_1", T0, "payment", currency=EUR))
    for different in [
        topup("acme", 5001, "evt_1", T0, "payment", currency=EUR),
        topup("other", 5000, "evt_1", T0, "payment", currency=EUR),
        topup("acme", 5000, "evt_1", T0, "operator", currency=EUR),
        charge("acme", 5000, "evt_1", T0, currency=EUR),
    ]:
        with pytest.raises(Conflict) as caught:
            apply(book, different)
        assert caught.value.code == "idempotency_conflict"
        assert caught.value.status == 409
    assert book.balance(ACME) == 5000


def test_apply_all_is_all_or_nothing() -> None:
    book = apply(empty_book(), topup("acme", 100, "a", T0, "payment", currency=EUR))
    batch = [
        topup("acme", 200, "b", T0, "payment", currency=EUR),
        topup("acme", 999, "a", T0, "payment", currency=EUR),  # conflicts
    ]
    with pytest.raises(Conflict):
        apply_all(book, batch)
    assert book.balance(ACME) == 100
    assert "b" not in book


def test_the_ledger_refuses_another_currency() -> None:
    with pytest.raises(InvalidInput) as caught:
        apply(empty_book(), topup("acme", 100, "a", T0, "payment", currency=USD))
    assert caught.value.code == "currency_mismatch"


def test_the_book_is_immutable() -> None:
    book = apply(empty_book(), topup("acme", 100, "a", T0, "payment", currency=EUR))
    assert isinstance(book.balances, MappingProxyType)
    with pytest.raises(TypeError):
        book.balances[ACME] = 10**9  # type: ignore[index]
    later = apply(book, charge("acme", 40, "c", T0, currency=EUR))
    assert book.balance(ACME) == 100
    assert later.balance(ACME) == 60


def test_balance_of_a_list_of_transactions_matches_the_book() -> None:
    txs = [
        topup("acme", 100, "a", T0, "payment", currency=EUR),
        charge("acme", 30, "c1", T0, currency=EUR),
        topup("other", 5, "b", T0, "operator", currency=EUR),
    ]
    book = apply_all(empty_book(), txs)
    for account in [ACME, tenant_account("other"), PLATFORM_REVENUE, PLATFORM_PAYMENTS]:
        assert balance(txs, account) == book.balance(account)
    assert balance([], ACME) == 0


# --- property: money is never lost or created ---------------------------------------------------

TENANTS = ["t1", "t2", "t3"]


@st.composite
def operations(draw: st.DrawFn) -> list[Transaction]:
    """Distinct keyed operations, each possibly delivered several times, in a shuffled order."""
    unique: list[Transaction] = []
    for n in range(draw(st.integers(1, 40))):
        tenant = draw(st.sampled_from(TENANTS))
        amount = draw(st.integers(1, 10**9))
        at = T0 + draw(st.integers(0, 10**6))
        kind = draw(st.sampled_from(["payment", "operator", "charge"]))
        if kind == "charge":
            unique.append(charge(tenant, amount, f"charge:{tenant}:{n}", at, currency=EUR))
        else:
            unique.append(topup(tenant, amount, f"evt_{n}", at, kind, currency=EUR))
    deliveries = [tx for tx in unique for _ in range(draw(st.integers(1, 3)))]
    random.Random(draw(st.integers(0, 2**32))).shuffle(deliveries)  # concurrent interleavings
    return deliveries


@settings(max_examples=300)
@given(operations())
def test_no_cent_is_ever_lost_or_created(deliveries: list[Transaction]) -> None:
    book = empty_book()
    for tx in deliveries:
        book = apply(book, tx)
        assert sum(book.balances.values()) == 0

    expected: dict[str, int] = defaultdict(int)
    for tx in {tx.key: tx for tx in deliveries}.values():  # each key counted once
        sign = -1 if tx.kind == "charge" else 1
        tenant = next(tenant_of(e.account) for e in tx.entries if tenant_of(e.account))
        expected[tenant] += sign * abs(tx.entries[0].amount_minor)
    for tenant in TENANTS:
        assert book.balance(tenant_account(tenant)) == expected[tenant]
    assert len(book.transactions) == len({tx.key for tx in deliveries})
    # Balances are exactly what the entries say, nothing else.
    for account, amount in book.balances.items():
        assert balance(book.transactions.values(), account) == amount


@settings(max_examples=100)
@given(operations(), st.integers(0, 2**32))
def test_the_order_of_delivery_does_not_matter(deliveries: list[Transaction], seed: int) -> None:
    shuffled = list(deliveries)
    random.Random(seed).shuffle(shuffled)
    a = apply_all(empty_book(), deliveries)
    b = apply_all(empty_book(), shuffled)
    assert dict(a.balances) == dict(b.balances)
    assert set(a.transactions) == set(b.transactions)


@settings(max_examples=100)
@given(operations(), st.integers(1, 10**6))
def test_a_conflicting_redelivery_never_changes_a_balance(
    deliveries: list[Transaction], extra: int
) -> None:
    book = apply_all(empty_book(), deliveries)
    victim = deliveries[0]
    tenant = next(t for e in victim.entries if (t := tenant_of(e.account)))
    amount = abs(victim.entries[0].amount_minor) + extra
    forged = (
        charge(tenant, amount, victim.key, T0, currency=EUR)
        if victim.kind == "charge"
        else topup(tenant, amount, victim.key, T0, "payment", currency=EUR)
    )
    with pytest.raises(Conflict):
        apply(book, forged)


def test_a_book_rebuilt_from_stored_transactions_has_the_same_balances() -> None:
    txs = [
        topup("acme", 1000, "p1", T0, "payment", currency=EUR),
        charge("acme", 250, "c1", T0 + 1, currency=EUR),
        topup("other", 40, "p2", T0 + 2, "operator", currency=EUR),
    ]
    incremental = apply_all(empty_book(), txs)
    rebuilt = LedgerState(EUR, {tx.key: tx for tx in txs})
    assert dict(rebuilt.balances) == dict(incremental.balances)
    assert rebuilt == incremental


def test_balances_cannot_be_passed_in_without_entries() -> None:
    with pytest.raises(TypeError):
        LedgerState(EUR, {}, {ACME: 10**6})  # type: ignore[call-arg]


def test_a_loaded_book_is_checked() -> None:
    tx = topup("acme", 1000, "p1", T0, "payment", currency=EUR)
    with pytest.raises(InvalidInput):
        LedgerState(EUR, {"another-key": tx})
    with pytest.raises(InvalidInput):
        LedgerState(USD, {"p1": tx})
