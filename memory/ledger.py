"""Credits: the append-only ledger (the ``credit_ledger`` table, issue #26).

Every movement of credits is one row — a ``purchase`` (with Telegram's charge id), a ``debit`` (the
answered message it paid for), a ``refund`` (of a purchase), a ``grant`` or ``revoke`` (the host's
``kith credits``), an ``expiry`` — and a balance is the sum of its scope's rows: no row is ever
changed or deleted, and no total is kept beside them (nothing to drift from the rows).

Like ``memory.reminders``, one SQL text runs on DuckDB and PostgreSQL (``sql_transaction``), each
write committed before the call returns, and the table is created at ``open`` (``IF NOT EXISTS``).

**Idempotent**: each row has a unique ``key`` — ``purchase:<charge id>``, ``debit:<chat>:<message>``
(the answered message: one answer is paid once, whoever pays), ``grant:<id>``… — so appending the
same movement twice (a payment delivered twice, a turn handled again after a restart) adds one row.

**Never below the floor**: a row that takes credits (negative ``amount``) is added only when the
scope's balance stays at or above ``-overdraft`` (checked in the very statement that inserts it),
and a refund only up to what its purchase brought in, less the refunds before it. Appends through one
``Ledger`` run one at a time (an anyio lock), and on PostgreSQL each append's transaction first takes
an advisory lock on its balance (``pg_advisory_xact_lock``), so the check-and-insert of several
processes sharing the database is not raced either.

**Expiry**: a purchase or grant may carry ``expires_us``; what is left of it then (``tiers.credits``
reads the rows as lots, spent soonest-expiring first) is taken by one ``expiry`` row keyed by it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import anyio

from .schema import from_us, to_us
from .sql_domain import SqlBackend, SqlDomainStore

__all__ = ["KINDS", "SCOPES", "Ledger", "LedgerEntry", "Posting", "debit_key", "expiry_key", "purchase_key", "refund_key"]

SCOPES = ("user", "chat")
KINDS = ("purchase", "debit", "refund", "grant", "revoke", "expiry")
_IN = frozenset({"purchase", "grant"})   # kinds that add credits (amount > 0)
_OUT = frozenset({"debit", "refund", "revoke", "expiry"})  # kinds that take credits (amount < 0)
_TAKES = frozenset({"debit", "revoke"})  # … and never 0 (a refund or an expiry may be 0: everything it brought was spent)

_DDL = (
    """
    CREATE TABLE IF NOT EXISTS credit_ledger (
        key         VARCHAR PRIMARY KEY,      -- what makes the movement unique (idempotency)
        scope       VARCHAR NOT NULL,         -- user | chat
        scope_id    BIGINT NOT NULL,
        kind        VARCHAR NOT NULL,         -- purchase | debit | refund | grant | revoke | expiry
        amount      BIGINT NOT NULL,          -- credits, signed: in > 0, out < 0
        ts_us       BIGINT NOT NULL,          -- microseconds since the epoch (UTC)
        user_id     BIGINT,                   -- who: the payer, the member answered
        chat_id     BIGINT,                   -- where (a debit: the answered message's chat)
        message_id  BIGINT,                   -- a debit: the answered message
        charge_id   VARCHAR,                  -- a purchase: telegram_payment_charge_id
        ref         VARCHAR,                  -- a refund: the purchase's key
        note        VARCHAR,                  -- the host's note, a pack's name, a model alias
        expires_us  BIGINT                    -- a purchase or grant: when its unspent credits expire (NULL: never)
    )
    """,
    "CREATE INDEX IF NOT EXISTS credit_ledger_scope ON credit_ledger (scope, scope_id)",
    # (a table made before expiry existed gains the column; both engines know ADD COLUMN IF NOT EXISTS)
    "ALTER TABLE credit_ledger ADD COLUMN IF NOT EXISTS expires_us BIGINT",
)
_COLS = "key, scope, scope_id, kind, amount, ts_us, user_id, chat_id, message_id, charge_id, ref, note, expires_us"


def purchase_key(charge_id: str) -> str:
    """The key of the purchase paid with ``charge_id`` (one row per charge, however often delivered)."""
    return f"purchase:{charge_id}"


def expiry_key(lot_key: str) -> str:
    """The key of the expiry of the purchase or grant ``lot_key`` (it expires once)."""
    return f"expiry:{lot_key}"


def refund_key(charge_id: str) -> str:
    """The key of the refund of the purchase paid with ``charge_id`` (refunded once)."""
    return f"refund:{charge_id}"


def debit_key(chat_id: int, message_id: int) -> str:
    """The key of the debit for the answer to ``message_id`` of ``chat_id`` (one per answered message)."""
    return f"debit:{int(chat_id)}:{int(message_id)}"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One movement. amount: credits, > 0 for ``purchase``/``grant``, < 0 for the other kinds.
    ts: set by ``append`` when None (tz-aware UTC)."""

    key: str
    scope: str
    scope_id: int
    kind: str
    amount: int
    ts: datetime | None = None
    user_id: int | None = None
    chat_id: int | None = None
    message_id: int | None = None
    charge_id: str | None = None
    ref: str | None = None
    note: str | None = None
    expires: datetime | None = None  # a purchase or grant: when its unspent credits expire (None: never)


@dataclass(frozen=True, slots=True)
class Posting:
    """What ``append`` did. status: ``"added"``; ``"duplicate"`` (a row with that key exists: nothing
    changed; ``entry`` is the stored row); ``"insufficient"`` (the balance would fall below the
    floor, or a refund exceed its purchase: nothing changed). balance: the scope's balance after."""

    status: Literal["added", "duplicate", "insufficient"]
    entry: LedgerEntry
    balance: int

    @property
    def added(self) -> bool:
        return self.status == "added"


def _row(r: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(key=r[0], scope=r[1], scope_id=int(r[2]), kind=r[3], amount=int(r[4]), ts=from_us(r[5]),
                       user_id=r[6], chat_id=r[7], message_id=r[8], charge_id=r[9], ref=r[10], note=r[11],
                       expires=from_us(r[12]) if r[12] is not None else None)


def _check(e: LedgerEntry) -> None:
    if e.scope not in SCOPES:
        raise ValueError(f"scope must be 'user' or 'chat', not {e.scope!r}")
    if e.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {e.kind!r}")
    if not isinstance(e.amount, int) or isinstance(e.amount, bool):
        raise ValueError(f"amount must be an int, not {e.amount!r}")
    if (e.kind in _IN and e.amount <= 0) or (e.kind in _OUT and e.amount > 0) or (e.kind in _TAKES and e.amount == 0):
        raise ValueError(f"a {e.kind} must {'add' if e.kind in _IN else 'take'} credits, not {e.amount}")
    if not e.key:
        raise ValueError("a ledger entry needs a key")
    if e.kind in ("refund", "expiry") and not e.ref:
        raise ValueError(f"a {e.kind} names its purchase or grant (ref)")
    if e.expires is not None and e.kind not in _IN:
        raise ValueError(f"only a purchase or grant expires, not a {e.kind}")


class Ledger(SqlDomainStore):
    """The credit ledger over an open dialogue store's database (``SqlBackend``).

    ``await Ledger(store).open()`` creates the table when missing. clock: the current tz-aware UTC
    time (the rows' ``ts`` when not given). raises MemoryStoreError when the database fails.
    """

    DOMAIN = "credits"
    DDL = _DDL

    def __init__(self, backend: SqlBackend, clock: Callable[[], datetime] | None = None, *, cache: bool | None = None) -> None:
        super().__init__(backend)
        self.clock = clock
        self._lock = anyio.Lock()
        # balances and next expiries kept in memory, updated by each append — exact where this process
        # is the database's only writer (a DuckDB file); default: unless the backend says it is shared
        self.cache = (not getattr(backend, "shared", False)) if cache is None else cache
        self._balances: dict[tuple[str, int], int] = {}
        self._queued = False  # debits queued into the store's reserve since the last flush
        self._expiries: dict[tuple[str, int], int | None] = {}  # the soonest expires_us not yet expired (None: none)

    def now(self) -> datetime:
        if self.clock is not None:
            return self.clock()

        return datetime.now(UTC)

    @property
    def journals(self) -> bool:
        """Whether ``append(journaled=True)`` queues into the store's reserve (``queue_sql``) — where
        this process is the database's only writer and keeps the balances — instead of committing."""
        return self.cache and hasattr(self.backend, "queue_sql")

    async def append(self, entry: LedgerEntry, *, overdraft: int = 0, journaled: bool = False) -> Posting:
        """Add ``entry`` once (by its ``key``), committed. A row taking credits is refused when the
        balance would go below ``-overdraft``; a refund also when it would exceed its purchase
        (``ref``) less earlier refunds. raises ValueError for a malformed entry.

        ``journaled`` (a debit on the reply path, where ``journals``): the floor is checked against
        the balance in memory and the row queued into the store's reserve — as durable against a
        ``kill -9`` as a commit, in order with the delivery record noted before it — and committed
        by the store's writer with its next batch (the same statement, so the same checks, run
        then). The caller guarantees the key is new (the turn: one debit per delivery record); a
        duplicate all the same is ignored by the commit. Elsewhere it commits as without it."""
        _check(entry)
        e = entry if entry.ts is not None else replace(entry, ts=self.now())
        assert e.ts is not None
        if journaled and self.journals and e.kind == "debit":
            return await self._append_journaled(e, overdraft)
        insert, params = self._insert(e, overdraft)
        async with self._lock:
            await self._flush_journaled()
            inserted, existing, balance = await self._tx(
                (insert, params),
                (f"SELECT {_COLS} FROM credit_ledger WHERE key = ?", [e.key]),
                ("SELECT COALESCE(SUM(amount), 0) FROM credit_ledger WHERE scope = ? AND scope_id = ?", [e.scope, e.scope_id]),
                lock=f"credit_ledger:{e.scope}:{e.scope_id}")
        total = int(balance[0][0])
        if self.cache:
            self._balances[(e.scope, e.scope_id)] = total
            if e.kind == "expiry":
                self._expiries.pop((e.scope, e.scope_id), None)  # read again
            elif inserted and e.expires is not None and (e.scope, e.scope_id) in self._expiries:
                soonest = self._expiries[(e.scope, e.scope_id)]
                us = to_us(e.expires)
                self._expiries[(e.scope, e.scope_id)] = us if soonest is None else min(soonest, us)
        if inserted:
            return Posting("added", _row(existing[0]), total)
        if existing:
            return Posting("duplicate", _row(existing[0]), total)
        return Posting("insufficient", e, total)

    async def _append_journaled(self, e: LedgerEntry, overdraft: int) -> Posting:
        async with self._lock:
            balance = await self._balance_locked(e.scope, e.scope_id)
            if balance + e.amount < -max(0, int(overdraft)):
                return Posting("insufficient", e, balance)
            insert, params = self._insert(e, overdraft)
            await self.backend.queue_sql(insert, params)  # type: ignore[attr-defined]
            self._queued = True
            self._balances[(e.scope, e.scope_id)] = balance + e.amount
            return Posting("added", e, balance + e.amount)

    async def _flush_journaled(self) -> None:
        """Commit the debits queued by ``append(journaled=True)`` before reading the table."""
        if self._queued:
            self._queued = False
            await self.backend.flush()  # type: ignore[attr-defined]

    @staticmethod
    def _insert(e: LedgerEntry, overdraft: int) -> tuple[str, list[Any]]:
        """The one statement that adds ``e`` when its key is new and the floor (and a refund's
        purchase) allow it, and its parameters."""
        assert e.ts is not None
        scope_sum = "(SELECT COALESCE(SUM(amount), 0) FROM credit_ledger WHERE scope = ? AND scope_id = ?)"
        refund_room = ("(SELECT COALESCE(SUM(CASE WHEN key = ? AND kind = 'purchase' THEN amount ELSE 0 END), 0)"
                       " + COALESCE(SUM(CASE WHEN kind = 'refund' AND ref = ? THEN amount ELSE 0 END), 0)"
                       " FROM credit_ledger WHERE key = ? OR ref = ?)")
        insert = (
            f"INSERT INTO credit_ledger ({_COLS}) SELECT CAST(? AS VARCHAR), CAST(? AS VARCHAR), CAST(? AS BIGINT),"
            " CAST(? AS VARCHAR), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT),"
            " CAST(? AS BIGINT), CAST(? AS VARCHAR), CAST(? AS VARCHAR), CAST(? AS VARCHAR), CAST(? AS BIGINT)"
            " WHERE NOT EXISTS (SELECT 1 FROM credit_ledger WHERE key = ?)"
            f" AND (CAST(? AS BIGINT) >= 0 OR {scope_sum} + CAST(? AS BIGINT) >= CAST(? AS BIGINT))"
            f" AND (CAST(? AS VARCHAR) <> 'refund' OR {refund_room} + CAST(? AS BIGINT) >= 0)"
            " ON CONFLICT DO NOTHING RETURNING key")
        params = [e.key, e.scope, e.scope_id, e.kind, e.amount, to_us(e.ts), e.user_id, e.chat_id, e.message_id,
                  e.charge_id, e.ref, e.note, to_us(e.expires) if e.expires is not None else None,
                  e.key,
                  e.amount, e.scope, e.scope_id, e.amount, -max(0, int(overdraft)),
                  e.kind, e.ref or "", e.ref or "", e.ref or "", e.ref or "", e.amount]
        return insert, params

    async def balance(self, scope: str, scope_id: int) -> int:
        """The sum of ``scope:scope_id``'s rows (0 when it has none); from memory once read (``cache``)."""
        if self.cache and (scope, scope_id) in self._balances:
            return self._balances[(scope, scope_id)]
        async with self._lock:
            return await self._balance_locked(scope, scope_id)

    async def _balance_locked(self, scope: str, scope_id: int) -> int:
        key = (scope, scope_id)
        if self.cache and key in self._balances:
            return self._balances[key]
        await self._flush_journaled()
        rows = (await self._tx(("SELECT COALESCE(SUM(amount), 0) FROM credit_ledger WHERE scope = ? AND scope_id = ?",
                                [scope, scope_id])))[0]
        total = int(rows[0][0])
        if self.cache:
            self._balances[key] = total
        return total

    async def may_expire(self, scope: str, scope_id: int, now: datetime) -> bool:
        """Whether ``scope:scope_id`` may hold a purchase or grant expired by ``now`` and not yet taken
        (then ``expiring`` says for sure); from memory once read (``cache``)."""
        key = (scope, scope_id)
        if not self.cache:
            return bool(await self.expiring(now, scope, scope_id))
        if key not in self._expiries:
            await self._flush_journaled()
            rows = (await self._tx((
                "SELECT MIN(expires_us) FROM credit_ledger l WHERE scope = ? AND scope_id = ? AND expires_us IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM credit_ledger x WHERE x.kind = 'expiry' AND x.ref = l.key)",
                [scope, scope_id])))[0]
            self._expiries[key] = int(rows[0][0]) if rows and rows[0][0] is not None else None
        soonest = self._expiries[key]
        return soonest is not None and soonest <= to_us(now)

    async def history(self, scope: str, scope_id: int, limit: int = 20) -> list[LedgerEntry]:
        """``scope:scope_id``'s newest ``limit`` rows, newest first."""
        await self._flush_journaled()
        rows = (await self._tx((f"SELECT {_COLS} FROM credit_ledger WHERE scope = ? AND scope_id = ?"
                                " ORDER BY ts_us DESC, key DESC LIMIT ?", [scope, scope_id, max(0, int(limit))])))[0]
        return [_row(r) for r in rows]

    async def entries(self, scope: str, scope_id: int) -> list[LedgerEntry]:
        """Every row of ``scope:scope_id``, oldest first (what ``tiers.credits.lots`` reads); rows of
        the same microsecond: those adding credits first."""
        await self._flush_journaled()
        rows = (await self._tx((f"SELECT {_COLS} FROM credit_ledger WHERE scope = ? AND scope_id = ?"
                                " ORDER BY ts_us, CASE WHEN amount > 0 THEN 0 ELSE 1 END, key", [scope, scope_id])))[0]
        return [_row(r) for r in rows]

    async def expiring(self, now: datetime, scope: str | None = None, scope_id: int | None = None) -> list[tuple[str, int]]:
        """``(scope, scope_id)`` of the balances holding a purchase or grant that expired by ``now``
        and has no expiry row yet (all balances, or only ``scope:scope_id``)."""
        await self._flush_journaled()
        sql = ("SELECT DISTINCT scope, scope_id FROM credit_ledger l WHERE expires_us IS NOT NULL AND expires_us <= ?"
               " AND NOT EXISTS (SELECT 1 FROM credit_ledger x WHERE x.kind = 'expiry' AND x.ref = l.key)")
        params: list[Any] = [to_us(now)]
        if scope is not None:
            sql += " AND scope = ? AND scope_id = ?"
            params += [scope, scope_id]
        rows = (await self._tx((sql + " ORDER BY scope, scope_id", params)))[0]
        return [(r[0], int(r[1])) for r in rows]

    async def get(self, key: str) -> LedgerEntry | None:
        """The row with ``key``, or None."""
        await self._flush_journaled()
        rows = (await self._tx((f"SELECT {_COLS} FROM credit_ledger WHERE key = ?", [key])))[0]
        return _row(rows[0]) if rows else None

    async def balances(self) -> list[tuple[str, int, int]]:
        """``(scope, scope_id, balance)`` of every scope with rows, by scope and id."""
        await self._flush_journaled()
        rows = (await self._tx(("SELECT scope, scope_id, SUM(amount) FROM credit_ledger GROUP BY scope, scope_id"
                                " ORDER BY scope, scope_id", [])))[0]
        return [(r[0], int(r[1]), int(r[2])) for r in rows]
