"""A pure double-entry ledger in integer minor units.

Every movement of money is a :class:`Transaction` of at least two :class:`Entry` lines whose
amounts are non-zero ``int`` and sum to zero. An account's balance is the sum of its entries and
nothing else, so a balance never changes without a ledger entry, and the balances of all accounts
always sum to zero.

Sign convention: a tenant's balance is what the tenant may still spend. A top-up adds to
``tenant:<id>:balance`` and subtracts the same from its source (``platform:payments`` for money that
came in from outside, ``platform:operator_credit`` for credit the operator gave away), so those
accounts go negative as money comes in. A charge moves money from the tenant to
``platform:revenue``. A tenant balance may go below zero; :mod:`berth.billing.arrears` decides what
then happens.

Idempotency: each transaction has a caller-chosen key (the payment provider's event id, the API's
``Idempotency-Key``, ``charge:{tenant}:{hour}``). :func:`apply` of a key already in the book is a
no-op when the content (kind, currency, entries, period) is the same, and raises ``Conflict`` when
it differs. ``at`` and ``memo`` are bookkeeping, not content: a retried webhook arrives later.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

from berth.billing.keys import check_idempotency_key, check_ref
from berth.billing.money import Currency
from berth.errors import Conflict, InvalidInput

TransactionKind = Literal["topup", "charge", "adjustment", "refund"]
TopupSource = Literal["payment", "operator"]

PLATFORM_REVENUE = "platform:revenue"
PLATFORM_PAYMENTS = "platform:payments"
PLATFORM_OPERATOR_CREDIT = "platform:operator_credit"
PLATFORM_ADJUSTMENTS = "platform:adjustments"
PLATFORM_ACCOUNTS = frozenset(
    {PLATFORM_REVENUE, PLATFORM_PAYMENTS, PLATFORM_OPERATOR_CREDIT, PLATFORM_ADJUSTMENTS}
)
_TOPUP_SOURCES: dict[str, str] = {
    "payment": PLATFORM_PAYMENTS,
    "operator": PLATFORM_OPERATOR_CREDIT,
}
_MAX_MEMO = 500


def tenant_account(tenant_id: str) -> str:
    """The balance account of a tenant: ``tenant:<id>:balance``."""
    return f"tenant:{check_ref('tenant', tenant_id)}:balance"


def tenant_of(account: str) -> str | None:
    """The tenant id of a tenant balance account, ``None`` for platform accounts."""
    parts = account.split(":")
    if len(parts) == 3 and parts[0] == "tenant" and parts[2] == "balance":
        return parts[1]
    return None


def _check_account(account: str) -> None:
    if not isinstance(account, str) or (
        account not in PLATFORM_ACCOUNTS and tenant_of(account) is None
    ):
        raise InvalidInput(f"unknown ledger account {account!r}", code="invalid_transaction")
    tenant_id = tenant_of(account)
    if tenant_id is not None:
        check_ref("tenant", tenant_id)


def _check_amount(amount: int) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidInput(
            f"amount must be a positive integer of minor units, got {amount!r}",
            code="invalid_amount",
        )
    return amount


@dataclass(frozen=True)
class Entry:
    """One line of a transaction: a signed, non-zero amount in minor units on one account."""

    account: str
    amount_minor: int

    def __post_init__(self) -> None:
        _check_account(self.account)
        amount = self.amount_minor
        if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
            raise InvalidInput(
                f"entry amount must be a non-zero integer, got {amount!r}",
                code="invalid_transaction",
            )


@dataclass(frozen=True)
class Transaction:
    """A balanced set of entries, identified by its idempotency ``key``.

    ``period_start`` is the usage hour a charge is for (it may be posted later, after an outage);
    invoices group charges by it, not by ``at``.
    """

    key: str
    kind: TransactionKind
    currency: Currency
    entries: tuple[Entry, ...]
    at: float
    memo: str = ""
    period_start: int | None = None

    def __post_init__(self) -> None:
        check_idempotency_key(self.key)
        if self.kind not in get_args(TransactionKind):
            raise InvalidInput(
                f"unknown transaction kind {self.kind!r}", code="invalid_transaction"
            )
        if not isinstance(self.currency, Currency):
            raise InvalidInput(
                "transaction currency must be a Currency", code="invalid_transaction"
            )
        self._check_entries()
        if isinstance(self.at, bool) or not isinstance(self.at, int | float):
            raise InvalidInput("transaction time must be a number", code="invalid_transaction")
        if not math.isfinite(self.at):
            raise InvalidInput("transaction time must be finite", code="invalid_transaction")
        if not isinstance(self.memo, str) or len(self.memo) > _MAX_MEMO:
            raise InvalidInput(f"memo must be at most {_MAX_MEMO} characters", code="invalid_memo")

    def _check_entries(self) -> None:
        entries = self.entries
        if not isinstance(entries, tuple) or not all(isinstance(e, Entry) for e in entries):
            raise InvalidInput("entries must be a tuple of Entry", code="invalid_transaction")
        if len(entries) < 2:
            raise InvalidInput(
                "a transaction needs at least two entries", code="invalid_transaction"
            )
        if len({e.account for e in entries}) != len(entries):
            raise InvalidInput(
                "an account appears twice in one transaction", code="invalid_transaction"
            )
        if sum(e.amount_minor for e in entries) != 0:
            raise InvalidInput("transaction entries must sum to zero", code="invalid_transaction")

    def content(self) -> tuple[object, ...]:
        """What must match for a repeated key to be a harmless retry."""
        return (
            self.kind,
            self.currency,
            tuple(sorted((e.account, e.amount_minor) for e in self.entries)),
            self.period_start,
        )

    def amount_on(self, account: str) -> int:
        """This transaction's effect on ``account`` (0 when it does not touch it)."""
        return sum(e.amount_minor for e in self.entries if e.account == account)


def topup(
    tenant_id: str,
    amount_minor: int,
    key: str,
    at: float,
    source: TopupSource,
    *,
    currency: Currency,
    memo: str = "",
) -> Transaction:
    """Credit a tenant: from a verified payment (``"payment"``) or as operator credit."""
    contra = _TOPUP_SOURCES.get(source)
    if contra is None:
        raise InvalidInput(f"unknown top-up source {source!r}", code="invalid_transaction")
    amount = _check_amount(amount_minor)
    entries = (Entry(tenant_account(tenant_id), amount), Entry(contra, -amount))
    return Transaction(key, "topup", currency, entries, at, memo)


def charge(
    tenant_id: str,
    amount_minor: int,
    key: str,
    at: float,
    memo: str = "",
    *,
    currency: Currency,
    period_start: int | None = None,
) -> Transaction:
    """Debit a tenant for usage; the money goes to ``platform:revenue``."""
    amount = _check_amount(amount_minor)
    entries = (Entry(tenant_account(tenant_id), -amount), Entry(PLATFORM_REVENUE, amount))
    return Transaction(key, "charge", currency, entries, at, memo, period_start)


def refund(
    tenant_id: str, amount_minor: int, key: str, at: float, memo: str = "", *, currency: Currency
) -> Transaction:
    """Pay money back out to a tenant: it leaves the balance towards ``platform:payments``."""
    amount = _check_amount(amount_minor)
    entries = (Entry(tenant_account(tenant_id), -amount), Entry(PLATFORM_PAYMENTS, amount))
    return Transaction(key, "refund", currency, entries, at, memo)


def adjustment(
    tenant_id: str, amount_minor: int, key: str, at: float, memo: str, *, currency: Currency
) -> Transaction:
    """An operator's correction, positive (credit) or negative (debit), with a required memo."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor == 0:
        raise InvalidInput("adjustment must be a non-zero integer", code="invalid_amount")
    if not memo.strip():
        raise InvalidInput("an adjustment needs a memo saying why", code="invalid_memo")
    entries = (
        Entry(tenant_account(tenant_id), amount_minor),
        Entry(PLATFORM_ADJUSTMENTS, -amount_minor),
    )
    return Transaction(key, "adjustment", currency, entries, at, memo)


def balance(transactions: Iterable[Transaction], account: str) -> int:
    """The sum of ``account``'s entries over ``transactions`` (assumed distinct, as in a book)."""
    return sum(tx.amount_on(account) for tx in transactions)


@dataclass(frozen=True)
class LedgerState:
    """An immutable book in one currency: transactions by key (in the order applied).

    ``balances`` is not an argument: it is always derived from the transactions, so no balance
    can exist without the entries that explain it. ``LedgerState(EUR, loaded)`` rebuilds a book
    from stored transactions; :func:`apply` and :func:`apply_all` extend it.
    """

    currency: Currency
    transactions: Mapping[str, Transaction] = field(default_factory=dict)
    balances: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        transactions: dict[str, Transaction] = {}
        for key, tx in self.transactions.items():
            if key != tx.key:
                raise InvalidInput(
                    f"transaction {tx.key} is filed under {key}", code="invalid_book"
                )
            _is_new(transactions, tx, self.currency)
            transactions[key] = tx
        self._freeze(transactions, _sum_entries(transactions.values()))

    def _freeze(self, transactions: dict[str, Transaction], balances: dict[str, int]) -> None:
        object.__setattr__(self, "transactions", MappingProxyType(transactions))
        object.__setattr__(self, "balances", MappingProxyType(balances))

    @classmethod
    def _extended(
        cls, currency: Currency, transactions: dict[str, Transaction], balances: dict[str, int]
    ) -> LedgerState:
        """A book whose balances the caller has just summed from the same entries (O(new))."""
        book = object.__new__(cls)
        object.__setattr__(book, "currency", currency)
        book._freeze(transactions, balances)
        return book

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def __contains__(self, key: object) -> bool:
        return key in self.transactions


def _sum_entries(transactions: Iterable[Transaction]) -> dict[str, int]:
    balances: Counter[str] = Counter()
    for tx in transactions:
        for entry in tx.entries:
            balances[entry.account] += entry.amount_minor
    return dict(balances)


def apply(book: LedgerState, tx: Transaction) -> LedgerState:
    """``book`` with ``tx`` applied once; a repeated key is a no-op or a ``Conflict``."""
    return apply_all(book, (tx,))


def apply_all(book: LedgerState, txs: Iterable[Transaction]) -> LedgerState:
    """Apply transactions in order with :func:`apply`'s rules (copies the book once).

    All or nothing: if one transaction conflicts or is invalid, ``book`` is unchanged.
    """
    transactions = dict(book.transactions)
    added: list[Transaction] = []
    for tx in txs:
        if _is_new(transactions, tx, book.currency):
            transactions[tx.key] = tx
            added.append(tx)
    balances = Counter(book.balances)
    balances.update(_sum_entries(added))
    return LedgerState._extended(book.currency, transactions, dict(balances))


def _is_new(transactions: Mapping[str, Transaction], tx: Transaction, currency: Currency) -> bool:
    if tx.currency != currency:
        raise InvalidInput(
            f"transaction {tx.key} is in {tx.currency}, the ledger in {currency}",
            code="currency_mismatch",
        )
    existing = transactions.get(tx.key)
    if existing is None:
        return True
    if existing.content() != tx.content():
        raise Conflict(
            f"idempotency key {tx.key!r} was already used for a different transaction",
            code="idempotency_conflict",
        )
    return False
