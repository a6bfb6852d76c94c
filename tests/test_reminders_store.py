"""The reminders' store (``memory.reminders.ReminderStore``): one SQL text on DuckDB and PostgreSQL,
committed on return, chat-scoped reads and cancels, claim → confirm, and the delivery journal."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from memory.duckdb_store import DuckDBStore
from memory.reminders import CLAIMED, Confirmation, DeliveryJournal, Reminder, ReminderStore

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
CHAT, OTHER = -100, 5


@pytest.fixture(params=["duckdb", "postgresql"])
def open_backend(request, tmp_path: Path):
    """``open_backend()`` → a new, not yet entered dialogue store on this test's storage (reopened
    by calling it again)."""
    if request.param == "postgresql":
        from memory.postgres_store import PostgresStore

        url = request.getfixturevalue("pg_url")
        return lambda: PostgresStore(url, dump_dir=tmp_path)
    return lambda: DuckDBStore(tmp_path / "kith.duckdb")


def rem(chat: int = CHAT, user: int = 1, text: str = "call Anna", due: datetime = T0, **kw) -> Reminder:
    return Reminder(chat, user, text, due, "Europe/Berlin", **kw)


async def test_add_is_durable_and_reads_are_chat_scoped(open_backend) -> None:
    async with open_backend() as backend:
        store = await ReminderStore(backend).open()
        await store.open()  # twice: IF NOT EXISTS
        a = await store.add(rem(), now=T0)
        b = await store.add(rem(user=2, text="standup", due=T0 + timedelta(hours=1), recurrence="0 9 * * 1-5",
                                thread_id=7, language="ru"), now=T0)
        c = await store.add(rem(chat=OTHER, text="other chat"), now=T0)
        assert 0 < a.id < b.id < c.id
    async with open_backend() as backend:  # reopened: everything was committed
        store = await ReminderStore(backend).open()
        mine = await store.pending(CHAT)
        assert [r.id for r in mine] == [a.id, b.id]
        got = mine[1]
        assert (got.due_at, got.recurrence, got.thread_id, got.language, got.timezone, got.created_at) == (
            T0 + timedelta(hours=1), "0 9 * * 1-5", 7, "ru", "Europe/Berlin", T0)
        assert got.due_at.tzinfo is not None
        assert [r.id for r in await store.pending(CHAT, user_id=2)] == [b.id]
        assert await store.get(CHAT, c.id) is None  # another chat's
        assert (await store.get(OTHER, c.id)).text == "other chat"
        assert await store.count_pending(CHAT, 1) == 1
        # a cancel names the chat (and the member): another chat's or member's id does nothing
        assert await store.cancel(CHAT, c.id) is None
        assert await store.cancel(CHAT, b.id, user_id=1) is None
        assert (await store.cancel(CHAT, b.id, user_id=2)).id == b.id
        assert await store.cancel(CHAT, b.id) is None  # not waiting any more
        assert [r.id for r in await store.pending(CHAT)] == [a.id]


async def test_claim_confirm_and_recurrence(open_backend) -> None:
    async with open_backend() as backend:
        store = await ReminderStore(backend).open()
        once = await store.add(rem(due=T0), now=T0)
        daily = await store.add(rem(due=T0 + timedelta(seconds=1), recurrence="0 12 * * *"), now=T0)
        later = await store.add(rem(due=T0 + timedelta(hours=5)), now=T0)
        assert await store.next_due() == T0
        assert await store.claim_due(T0 - timedelta(seconds=1), 10) == []
        claimed = await store.claim_due(T0 + timedelta(seconds=2), 10)
        assert [r.id for r in claimed] == [once.id, daily.id]
        assert await store.claim_due(T0 + timedelta(seconds=2), 10) == []  # claimed once only
        assert [r.id for r in await store.claimed()] == [once.id, daily.id]
        assert await store.next_due() == later.due_at
        nxt = T0 + timedelta(days=1)
        n = await store.confirm([Confirmation(claimed[0].key, T0 + timedelta(seconds=3)),
                                 Confirmation(claimed[1].key, T0 + timedelta(seconds=3), late=True, next_due=nxt)])
        assert n == 2
        assert await store.confirm([Confirmation(claimed[0].key, T0)]) == 0  # confirmed already: nothing
        assert (await store.get(CHAT, once.id)).state == "sent"
        d = await store.get(CHAT, daily.id)
        assert (d.state, d.due_at, d.sent_count, d.late) == ("pending", nxt, 1, True)
        assert [r.id for r in await store.pending(CHAT)] == [later.id, daily.id]
        # a claim put back (not sent) is pending again; a cancelled claim is not confirmed
        c = await store.claim_due(T0 + timedelta(days=2), 10)
        assert {r.id for r in c} == {daily.id, later.id}
        assert await store.release([r.key for r in c if r.id == later.id]) == 1
        assert (await store.get(CHAT, later.id)).state == "pending"
        await store.cancel(CHAT, daily.id)
        assert await store.confirm([Confirmation(next(r for r in c if r.id == daily.id).key, T0)]) == 0
        assert (await store.get(CHAT, daily.id)).state == "cancelled"
        assert await store.stats() == {"sent": 1, "pending": 1, "cancelled": 1}


async def test_claims_survive_a_reopen(open_backend) -> None:
    async with open_backend() as backend:
        store = await ReminderStore(backend).open()
        for i in range(5):
            await store.add(rem(due=T0 + timedelta(seconds=i)), now=T0)
        assert len(await store.claim_due(T0 + timedelta(seconds=2), 10)) == 3
    async with open_backend() as backend:
        store = await ReminderStore(backend).open()
        left = await store.claimed()
        assert len(left) == 3 and all(r.state == CLAIMED for r in left)


async def test_many_in_one_confirm(open_backend) -> None:
    async with open_backend() as backend:
        store = await ReminderStore(backend).open()
        for i in range(300):
            await store.add(rem(chat=i, due=T0), now=T0)
        got = await store.claim_due(T0, 1000)
        assert len(got) == 300
        assert await store.confirm([Confirmation(r.key, T0) for r in got]) == 300
        assert await store.stats() == {"sent": 300}


def test_journal_reads_begun_and_done_and_ignores_a_torn_line(tmp_path: Path) -> None:
    j = DeliveryJournal(tmp_path / "j").open()
    j.begin((1, 10))
    j.done((1, 10))
    j.begin((2, 20))
    j.close()
    with open(tmp_path / "j", "a") as f:
        f.write("D 3 3")  # torn: no newline is fine, but a half number is not
        f.write("0\nD 4")
    begun, done = DeliveryJournal(tmp_path / "j").read()
    assert begun == {(1, 10), (2, 20)}
    assert (1, 10) in done and (3, 30) in done
    j2 = DeliveryJournal(tmp_path / "j").open()
    j2.clear()
    assert DeliveryJournal(tmp_path / "j").read() == (set(), set())
    j2.close()
