"""The credit ledger (``memory.ledger.Ledger``, issue #26): one SQL text on DuckDB and PostgreSQL, and
its invariants under Hypothesis — a balance is the sum of its rows, never below ``-overdraft``, a
duplicate charge id credits once, a refund never exceeds its purchase."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory.duckdb_store import DuckDBStore
from memory.ledger import Ledger, LedgerEntry, debit_key, purchase_key

T0 = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["duckdb", "postgresql"])
def open_backend(request, tmp_path: Path):
    if request.param == "postgresql":
        from memory.postgres_store import PostgresStore

        url = request.getfixturevalue("pg_url")
        return lambda: PostgresStore(url, dump_dir=tmp_path)
    return lambda: DuckDBStore(tmp_path / "kith.duckdb")


def buy(charge: str, n: int, uid: int = 1) -> LedgerEntry:
    return LedgerEntry(purchase_key(charge), "user", uid, "purchase", n, charge_id=charge, user_id=uid)


def debit(chat: int, msg: int, n: int, scope: str = "user", sid: int = 1) -> LedgerEntry:
    return LedgerEntry(debit_key(chat, msg), scope, sid, "debit", -n, chat_id=chat, message_id=msg)


@pytest.mark.anyio
async def test_appends_are_idempotent_floored_and_durable(open_backend) -> None:
    async with open_backend() as backend:
        ledger = await Ledger(backend, clock=lambda: T0).open()
        await ledger.open()
        assert (await ledger.append(buy("c1", 100))).status == "added"
        again = await ledger.append(buy("c1", 100))  # Telegram delivered the payment twice
        assert again.status == "duplicate" and again.balance == 100
        assert (await ledger.append(debit(5, 1, 101))).status == "insufficient"
        assert (await ledger.append(debit(5, 1, 101), overdraft=1)).balance == -1
        assert (await ledger.append(debit(5, 1, 3), overdraft=50)).status == "duplicate"  # one debit per answered message
        # a refund: only up to its purchase, and only of a purchase
        assert (await ledger.append(LedgerEntry("refund:a", "user", 1, "refund", -60, ref=purchase_key("c1")),
                                    overdraft=1000)).added
        assert (await ledger.append(LedgerEntry("refund:b", "user", 1, "refund", -41, ref=purchase_key("c1")),
                                    overdraft=1000)).status == "insufficient"
        assert (await ledger.append(LedgerEntry("refund:c", "user", 1, "refund", -1, ref=debit_key(5, 1)),
                                    overdraft=1000)).status == "insufficient"
        await ledger.append(LedgerEntry("grant:x", "chat", -100, "grant", 7, ts=T0 + timedelta(seconds=1)))
        with pytest.raises(ValueError):
            await ledger.append(LedgerEntry("grant:y", "user", 1, "grant", -7))
        with pytest.raises(ValueError):
            await ledger.append(LedgerEntry("x", "guild", 1, "grant", 7))
    async with open_backend() as backend:  # committed: a new process sees it all
        ledger = await Ledger(backend).open()
        assert await ledger.balance("user", 1) == -61
        assert await ledger.balance("chat", -100) == 7
        assert await ledger.balance("user", 2) == 0
        # newest first (the same time here: then by key, for a stable order)
        assert [e.key for e in await ledger.history("user", 1)] == ["refund:a", purchase_key("c1"), debit_key(5, 1)]
        assert [e.key for e in await ledger.history("user", 1, limit=1)] == ["refund:a"]
        assert (await ledger.get(purchase_key("c1"))).charge_id == "c1"  # type: ignore[union-attr]
        assert await ledger.balances() == [("chat", -100, 7), ("user", 1, -61)]


@pytest.mark.anyio
async def test_concurrent_debits_never_pass_the_floor(open_backend) -> None:
    async with open_backend() as backend:
        ledger = await Ledger(backend).open()
        await ledger.append(buy("c", 10))
        results = []

        async def take(i: int) -> None:
            results.append(await ledger.append(debit(9, i, 3)))

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(take, i)
        assert sum(r.added for r in results) == 3
        assert await ledger.balance("user", 1) == 1


# ---------------------------------------------------------------- invariants (Hypothesis)

OPS = st.lists(st.one_of(
    st.tuples(st.just("purchase"), st.sampled_from("abcd"), st.integers(1, 100)),
    st.tuples(st.just("debit"), st.integers(1, 6), st.integers(1, 60)),
    st.tuples(st.just("refund"), st.sampled_from("abcdz"), st.integers(1, 120)),
    st.tuples(st.just("grant"), st.sampled_from("xy"), st.integers(1, 50)),
    st.tuples(st.just("revoke"), st.sampled_from("pq"), st.integers(1, 50)),
), max_size=25)


def test_ledger_invariants(tmp_path: Path) -> None:
    """For any sequence of movements (duplicates included), the ledger agrees with a plain model of
    the rules, and its balance is the sum of its rows, never below -overdraft."""
    scopes = itertools.count(1)
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(DuckDBStore(tmp_path / "kith.duckdb")) as store:
            ledger = portal.call(Ledger(store).open)

            @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
            @given(ops=OPS, overdraft=st.sampled_from([0, 0, 10]))
            def check(ops, overdraft: int) -> None:
                uid = next(scopes)  # each example on a scope of its own
                keys: dict[str, int] = {}
                purchases: dict[str, int] = {}
                refunded: dict[str, int] = {}
                balance = 0
                for i, (kind, ref, n) in enumerate(ops):
                    if kind == "purchase":
                        key, amount, entry_ref = f"purchase:{uid}:{ref}", n, None
                    elif kind == "debit":
                        key, amount, entry_ref = f"debit:{uid}:{ref}", -n, None
                    elif kind == "refund":
                        key, amount, entry_ref = f"refund:{uid}:{i}", -n, f"purchase:{uid}:{ref}"
                    else:
                        key, amount, entry_ref = f"{kind}:{uid}:{ref}", n if kind == "grant" else -n, None
                    entry = LedgerEntry(key, "user", uid, kind, amount, ref=entry_ref,
                                        charge_id=f"{uid}:{ref}" if kind == "purchase" else None)
                    posting = portal.call(lambda e=entry: ledger.append(e, overdraft=overdraft))
                    # the model
                    if key in keys:
                        expect = "duplicate"
                    elif amount < 0 and balance + amount < -overdraft:
                        expect = "insufficient"
                    elif kind == "refund" and refunded.get(entry_ref, 0) + n > purchases.get(entry_ref, 0):  # type: ignore[arg-type]
                        expect = "insufficient"
                    else:
                        expect = "added"
                        keys[key] = amount
                        balance += amount
                        if kind == "purchase":
                            purchases[key] = n
                        if kind == "refund":
                            refunded[entry_ref] = refunded.get(entry_ref, 0) + n  # type: ignore[index]
                    assert posting.status == expect, (kind, key, amount, posting)
                    assert posting.balance == balance >= -overdraft
                rows = portal.call(lambda: ledger.history("user", uid, 1000))
                assert sum(r.amount for r in rows) == balance == portal.call(lambda: ledger.balance("user", uid))
                assert len({r.key for r in rows}) == len(rows) == len(keys)  # a duplicate key never adds a row
                assert sum(1 for r in rows if r.kind == "purchase") == len(purchases)  # a charge id credits once
                for pkey, paid in purchases.items():
                    assert -sum(r.amount for r in rows if r.kind == "refund" and r.ref == pkey) <= paid

            check()
