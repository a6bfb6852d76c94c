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
                    elif (amount < 0 and balance + amount < -overdraft) or (kind == "refund" and refunded.get(entry_ref, 0) + n > purchases.get(entry_ref, 0)):
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


LOT_OPS = st.lists(st.tuples(
    st.sampled_from(["purchase", "grant", "debit", "revoke", "refund", "expiry"]),
    st.integers(0, 4),          # which lot a refund or expiry names
    st.integers(1, 40),         # credits
    st.sampled_from([None, 1, 5, 30]),  # a purchase's or grant's days to expiry
), max_size=30)


@settings(max_examples=300, deadline=None)
@given(ops=LOT_OPS)
def test_lots_account_for_every_credit(ops) -> None:
    """``tiers.credits.lots``: whatever the rows, what is left of the lots less the deficit is the
    balance, no lot has less than 0 or more than it brought, and spending never takes from a lot
    that had expired by then while a live one had credits."""
    from tiers.credits import lots

    rows: list[LedgerEntry] = []
    balance = 0
    for i, (kind, ref, n, days) in enumerate(ops):
        ts = T0 + timedelta(days=i)
        lot_keys = [r.key for r in rows if r.amount > 0]
        if kind in ("purchase", "grant"):
            rows.append(LedgerEntry(f"{kind}:{i}", "user", 1, kind, n, ts=ts,
                                    expires=ts + timedelta(days=days) if days else None))
            balance += n
            continue
        if kind in ("refund", "expiry") and not lot_keys:
            continue
        named = lot_keys[ref % len(lot_keys)] if kind in ("refund", "expiry") else None
        rows.append(LedgerEntry(f"{kind}:{i}", "user", 1, kind, -n, ts=ts, ref=named))
        balance -= n
    found, deficit = lots(rows)
    assert sum(lot.remaining for lot in found) - deficit == balance
    assert deficit >= 0 and all(0 <= lot.remaining <= lot.amount for lot in found)


@pytest.mark.anyio
async def test_expiry_and_refund_take_only_what_is_left_of_their_lot(tmp_path: Path) -> None:
    """A pack's unspent credits expire once (spent soonest-expiring first); a refunded purchase takes
    its unspent credits, never below zero, once; an expiry row never makes a balance negative."""
    from tiers.credits import expire_due, lots, refund_purchase

    clock = [T0]
    async with DuckDBStore(tmp_path / "kith.duckdb") as store:
        ledger = await Ledger(store, clock=lambda: clock[0]).open()
        await ledger.append(LedgerEntry("grant:base", "user", 1, "grant", 10))  # never expires
        await ledger.append(LedgerEntry(purchase_key("c1"), "user", 1, "purchase", 100, charge_id="c1",
                                        expires=T0 + timedelta(days=30)))
        await ledger.append(buy("c2", 50))
        await ledger.append(debit(1, 1, 30))  # from c1: it expires first
        found, _ = lots(await ledger.entries("user", 1))
        assert {lot.key: lot.remaining for lot in found} == {"grant:base": 10, "purchase:c1": 70, "purchase:c2": 50}
        assert await expire_due(ledger, "user", 1) == 0  # not yet
        clock[0] = T0 + timedelta(days=31)
        assert await expire_due(ledger, "user", 1) == 70
        assert await expire_due(ledger, "user", 1) == 0  # once
        assert await ledger.balance("user", 1) == 60
        await ledger.append(debit(1, 2, 55))  # the grant (oldest never-expiring), then c2
        refund = await refund_purchase(ledger, "user", 1, "c2")
        assert refund.added and refund.entry.amount == -5 and refund.balance == 0
        assert (await refund_purchase(ledger, "user", 1, "c2")).status == "duplicate"
        with pytest.raises(Exception, match="no credit purchase"):
            await refund_purchase(ledger, "user", 1, "nope")
        # spent into an overdraft: nothing of an expired lot is left to take
        await ledger.append(LedgerEntry(purchase_key("c3"), "user", 2, "purchase", 20, charge_id="c3",
                                        expires=clock[0] + timedelta(days=1)))
        await ledger.append(debit(2, 1, 25, sid=2), overdraft=10)
        clock[0] += timedelta(days=2)
        assert await expire_due(ledger, "user", 2) == 0 and await ledger.balance("user", 2) == -5


KILLED_AFTER_A_JOURNALED_DEBIT = """
import os, signal, sys
from pathlib import Path

import anyio

from memory.duckdb_store import DuckDBStore
from memory.ledger import Ledger, LedgerEntry, debit_key


async def main():
    async with DuckDBStore(Path(sys.argv[1]), flush_interval_s=30) as store:
        ledger = await Ledger(store).open()
        await ledger.append(LedgerEntry("grant:g", "user", 1, "grant", 10))  # committed
        commits = store.commits
        await store.note_delivery(1, 7)  # the turn: the delivery, then its debit, then the first byte
        posting = await ledger.append(LedgerEntry(debit_key(1, 7), "user", 1, "debit", -3, chat_id=1, message_id=7),
                                      journaled=True)
        refused = await ledger.append(LedgerEntry(debit_key(1, 8), "user", 1, "debit", -8, chat_id=1, message_id=8),
                                      journaled=True)
        assert store.commits == commits, "a commit ran"
        print(f"DEBITED {posting.status} {posting.balance} {refused.status}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


anyio.run(main)
"""


@pytest.mark.anyio
async def test_a_journaled_debit_is_in_the_reserve_before_any_commit_and_kept_after_a_kill(tmp_path: Path) -> None:
    """The turn's debit (``append(journaled=True)``): floor checked in memory, no commit, in the
    store's reserve in order after the delivery record; a ``kill -9`` loses neither."""
    import os
    import sys

    script = tmp_path / "killed.py"
    script.write_text(KILLED_AFTER_A_JOURNALED_DEBIT, encoding="utf-8")
    db = tmp_path / "kith.duckdb"
    root = Path(__file__).resolve().parents[1]
    r = await anyio.run_process([sys.executable, str(script), str(db)], cwd=root,
                                env={**os.environ, "PYTHONPATH": str(root)}, check=False)
    out = r.stdout.decode()
    assert r.returncode == -9, out + r.stderr.decode()[-3000:]
    assert "DEBITED added 7 insufficient" in out
    async with DuckDBStore(db) as store:
        ledger = await Ledger(store).open()
        assert await store.messages.answered_ids(1) == {7}
        assert await ledger.balance("user", 1) == 7
        assert (await ledger.get(debit_key(1, 7))).amount == -3  # type: ignore[union-attr]
        assert await ledger.get(debit_key(1, 8)) is None
