"""The DialogueStore contract (``memory.store``), run against every store implementation.

Each test gets a fresh, real store (a DuckDB file in tmp_path; PostgreSQL when its server can run
here) through ``open_store``, which opens the same store again when called again (restarts).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from memory.duckdb_store import DuckDBStore
from memory.errors import MemoryStoreError
from memory.settings_store import SettingsStore
from memory.store import DialogueStore
from memory.transcripts import read_transcript
from memory.types import (
    DOC_ID_BASE,
    ROLE_ASSISTANT,
    USAGE_GROUPINGS,
    ChatInfo,
    DocumentChunk,
    DocumentInfo,
    MemoryHit,
    PaymentRecord,
    StoredMessage,
    SubscriptionRecord,
    UsageRecord,
    chunk_memory_id,
    migrated_id,
)
from tests.task_groups import StartFailed, first_start_fails, live_tasks

ROOT = Path(__file__).resolve().parents[1]
IRC = ROOT.parent / "shared" / "data" / "ubuntu-irc"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
CHAT = -1001234567890
OTHER = -1009876543210

Opener = Callable[..., DialogueStore]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(params=["duckdb", "postgresql"])
def open_store(request, tmp_path: Path) -> Opener:
    """``open_store(**options)`` → a new, not yet entered store on this test's own storage: a DuckDB
    file, or a new database of the session's PostgreSQL server (``pg_url``)."""
    if request.param == "postgresql":
        from memory.postgres_store import PostgresStore

        url = request.getfixturevalue("pg_url")
        return lambda **kw: PostgresStore(url, dump_dir=tmp_path, **kw)
    path = tmp_path / "data" / "kith.duckdb"
    return lambda **kw: DuckDBStore(path, **kw)


def msg(i: int, *, chat: int = CHAT, user: int = 1, text: str | None = None, thread: int | None = None, **kw) -> StoredMessage:
    return StoredMessage(
        chat_id=chat,
        message_id=i,
        user_id=user,
        user_name=f"user{user}",
        text=f"message {i}" if text is None else text,
        date=T0 + timedelta(seconds=i),
        thread_id=thread,
        **kw,
    )


@pytest.mark.anyio
async def test_the_store_is_a_dialogue_store_and_takes_no_sql(open_store: Opener) -> None:
    async with open_store() as store:
        assert isinstance(store, DialogueStore)
        assert not hasattr(store, "execute")  # every statement sits behind a named method


@pytest.mark.anyio
async def test_same_messages_twice_are_stored_once_first_write_wins(open_store: Opener) -> None:
    async with open_store() as store:
        store.add_many(msg(i) for i in range(50))
        await store.flush()
        # re-delivered (with other text: first write wins), across batches and inside one batch
        store.add_many(msg(i, text="changed") for i in range(50))
        store.add(msg(60))
        store.add(msg(60, text="dup in same batch"))
        assert await store.messages.count(CHAT) == 51
        got = await store.messages.get(CHAT, [0, 49, 60])
        assert [m.text for m in got] == ["message 0", "message 49", "message 60"]


@pytest.mark.anyio
async def test_reads_see_queued_writes_without_explicit_flush(open_store: Opener) -> None:
    # a long flush interval proves the read itself forces the commit
    async with open_store(flush_interval_s=30.0) as store:
        store.add(msg(1))
        with anyio.fail_after(5):
            assert [m.message_id for m in await store.messages.recent(CHAT, 10)] == [1]
            store.add(msg(2))
            assert await store.messages.max_id(CHAT) == 2
            store.add(msg(3, user=7))
            assert await store.messages.count(user_id=7) == 1


@pytest.mark.anyio
async def test_shutdown_flushes_queued_rows(open_store: Opener) -> None:
    async with open_store(flush_interval_s=30.0) as store:
        store.add_many(msg(i) for i in range(10))
        store.record_usage(UsageRecord(T0, CHAT, 1, "chat", "fast", 10, 5, None, 12.5))
    async with open_store() as store:
        assert await store.messages.count() == 10
        assert len(await store.usage.rows()) == 1


@pytest.mark.anyio
async def test_a_writer_start_that_fails_half_way_closes_the_store_and_raises_its_own_error(open_store: Opener) -> None:
    before = live_tasks()
    store = open_store()
    with first_start_fails() as error, pytest.raises(StartFailed) as raised:
        async with store:
            pytest.fail("the body ran after a failed start")
    assert raised.value is error  # itself, not inside an ExceptionGroup
    assert live_tasks() == before  # the writer it had started has returned
    with pytest.raises(MemoryStoreError):
        store.add(msg(1))  # closed
    async with open_store() as again:  # the database was closed too: it opens again (DuckDB: not "already open")
        again.add(msg(1))
        await again.flush()
        assert await again.messages.count() == 1


@pytest.mark.anyio
async def test_leaving_the_store_awaits_its_writer(open_store: Opener) -> None:
    before = live_tasks()
    async with open_store() as store:
        assert any(t.get_name().endswith("-writer") for t in live_tasks() - before)
        store.add(msg(1))
    assert live_tasks() == before


@pytest.mark.anyio
async def test_recent_orders_oldest_to_newest_and_filters_thread_and_before(open_store: Opener) -> None:
    async with open_store() as store:
        # inserted out of order, threads 10/20 interleaved, plus another chat
        store.add_many(msg(i, thread=10 if i % 2 else 20) for i in reversed(range(1, 31)))
        store.add_many(msg(i, chat=OTHER) for i in range(100, 110))
        assert [m.message_id for m in await store.messages.recent(CHAT, 5)] == [26, 27, 28, 29, 30]
        assert [m.message_id for m in await store.messages.recent(CHAT, 3, thread_id=10)] == [25, 27, 29]
        assert [m.message_id for m in await store.messages.recent(CHAT, 3, before_id=10)] == [7, 8, 9]
        assert [m.message_id for m in await store.messages.recent(CHAT, 2, thread_id=20, before_id=10)] == [6, 8]
        assert len(await store.messages.recent(CHAT, 1000)) == 30
        assert await store.messages.recent(CHAT, 0) == []
        assert await store.messages.recent(12345, 10) == []
        assert all(m.chat_id == OTHER for m in await store.messages.recent(OTHER, 100))


@pytest.mark.anyio
async def test_around_returns_neighbours_by_message_id_within_the_chat(open_store: Opener) -> None:
    async with open_store() as store:
        ids = [1, 2, 5, 9, 10, 11, 20]  # gaps, as in a private chat
        store.add_many(msg(i) for i in ids)
        store.add_many(msg(i, chat=OTHER) for i in range(30))  # must not leak in
        ctx = await store.messages.around(CHAT, [5, 20, 1, 7], before=2, after=1)
        assert {k: [m.message_id for m in v] for k, v in ctx.items()} == {
            1: [1, 2],
            5: [1, 2, 5, 9],
            20: [10, 11, 20],
        }  # 7 is not stored: absent
        assert all(m.chat_id == CHAT for v in ctx.values() for m in v)
        assert await store.messages.around(CHAT, [], 3, 3) == {}
        only = await store.messages.around(CHAT, [10], 0, 0)
        assert [m.message_id for m in only[10]] == [10]


@pytest.mark.anyio
async def test_get_messages_count_max_and_iter(open_store: Opener) -> None:
    async with open_store() as store:
        assert await store.messages.max_id(CHAT) is None
        store.add_many(msg(i, user=i % 3) for i in range(1, 101))
        store.add_many(msg(i, chat=OTHER) for i in range(1, 21))
        got = await store.messages.get(CHAT, [50, 3, 999, 3])
        assert [m.message_id for m in got] == [3, 50]
        assert await store.messages.max_id(CHAT) == 100
        assert await store.messages.count() == 120
        assert await store.messages.count(CHAT) == 100
        assert await store.messages.count(CHAT, user_id=0) == 33
        pages = [p async for p in store.messages.iter(batch=32)]
        assert [len(p) for p in pages] == [32, 32, 32, 24]
        keys = [(m.chat_id, m.message_id) for p in pages for m in p]
        assert keys == sorted(keys) and len(set(keys)) == 120
        one = [m for p in [p async for p in store.messages.iter(OTHER, batch=7)] for m in p]
        assert [m.message_id for m in one] == list(range(1, 21))


@pytest.mark.anyio
async def test_delete_by_user_and_ids_removes_only_those_and_their_recalls(open_store: Opener) -> None:
    async with open_store() as store:
        store.add_many(msg(i, user=1 if i % 2 else 2) for i in range(1, 21))
        store.add_many(msg(i, chat=OTHER, user=1) for i in range(1, 21))
        bot_reply = msg(21, user=999, role=ROLE_ASSISTANT)
        store.add(bot_reply)
        hits = [MemoryHit(CHAT, 3, 1, "user1", "message 3", T0, 0.9), MemoryHit(CHAT, 4, 2, "user2", "message 4", T0, 0.5)]
        store.record_recall(CHAT, 21, hits)

        deleted = await store.messages.delete(CHAT, user_id=1)
        assert deleted == list(range(1, 21, 2))
        assert await store.messages.count(CHAT) == 11  # user 2's ten and the reply
        assert await store.messages.count(OTHER) == 20  # other chat untouched
        assert await store.usage.recalls_for(CHAT, 21) == [(4, 0.5)]

        assert await store.messages.delete(CHAT, user_id=2, message_ids=[2, 4, 5]) == [2, 4]
        assert await store.messages.delete(CHAT, message_ids=[]) == []
        assert await store.usage.recalls_for(CHAT, 21) == []
        assert len(await store.messages.delete(CHAT)) == 9  # everything left in the chat
        assert await store.messages.count(CHAT) == 0


@pytest.mark.anyio
async def test_chat_and_user_settings_round_trip(open_store: Opener) -> None:
    async with open_store() as store:
        assert await store.settings.chat(CHAT) == {}
        assert await store.settings.user(42) == {}
        await store.upsert_chat(CHAT, "supergroup", "Ubuntu help")
        settings = {"persona": "Ты — помощник 🤖", "keywords": ["kith", "бот"], "always_on": False, "n": 3, "nested": {"a": None}}
        await store.settings.set_chat(CHAT, settings)
        await store.upsert_chat(CHAT, "supergroup", None)  # keeps title and settings
        assert await store.settings.chat(CHAT) == settings
        await store.settings.set_user(42, {"model": "fast", "role": "pirate"}, username="alice", name="Alice")
        await store.settings.set_user(42, {"model": "smart"})  # username/name kept
        assert await store.settings.user(42) == {"model": "smart"}
        await store.settings.set_chat(OTHER, {"x": 1})  # creates an 'unknown' chat row
        with pytest.raises(TypeError):
            await store.settings.set_chat(CHAT, ["not", "a", "dict"])  # type: ignore[arg-type]
        store.add_many(msg(i) for i in range(5))
        store.add(msg(1, chat=555))
        chats = {c.chat_id: c for c in await store.settings.chats()}
        assert chats[CHAT] == ChatInfo(CHAT, "supergroup", "Ubuntu help", 5, T0, T0 + timedelta(seconds=4))
        assert chats[OTHER].type == "unknown" and chats[OTHER].messages == 0 and chats[OTHER].first_date is None
        assert chats[555].messages == 1 and chats[555].title is None
    async with open_store() as store:
        assert await store.settings.user(42) == {"model": "smart"}
        stats = await store.stats()
        assert stats["users"] == 1 and stats["chats"] == 2



@pytest.mark.anyio
async def test_directory_of_chats_and_users_survives_restart_and_renames(open_store: Opener) -> None:
    async with open_store() as store:
        await store.upsert_chat(CHAT, "group", "Old name")
        await store.upsert_chat(CHAT, "supergroup", "New name")  # same batch: merged into one row
        await store.upsert_chat(CHAT, "supergroup", None)
        await store.settings.set_chat(CHAT, {"always_on": True})
        await store.settings.set_user(7, {"model": "smart"})
        await store.settings.set_user(8, {"model": "fast"})
        await store.settings.set_user(8, {})  # cleared
        store.add(msg(1))
    async with open_store() as store:
        assert await store.settings.chat(CHAT) == {"always_on": True}
        assert await store.settings.user(7) == {"model": "smart"}
        assert await store.settings.user(8) == {}
        assert [m.message_id for m in await store.messages.recent(CHAT, 5)] == [1]
        info = {c.chat_id: c for c in await store.settings.chats()}[CHAT]
        assert (info.type, info.title, info.messages) == ("supergroup", "New name", 1)


@pytest.mark.anyio
async def test_a_read_of_one_chat_does_not_wait_for_another_chats_queued_rows(open_store: Opener) -> None:
    async with open_store(flush_interval_s=3600) as store:  # the writer only commits when asked
        store.add(msg(1))
        await store.flush()
        store.add_many(msg(i, chat=OTHER) for i in range(10))
        with anyio.fail_after(5):
            assert [m.message_id for m in await store.messages.recent(CHAT, 5)] == [1]
            assert await store.messages.recent(555, 5) == []  # a chat never seen: no query at all
        assert store.pending == 10  # nobody flushed OTHER's rows for those reads
        store.add(msg(2))
        with anyio.fail_after(5):  # but this chat's own queued row is read back (read-your-writes)
            assert [m.message_id for m in await store.messages.recent(CHAT, 5)] == [1, 2]
            assert [m.message_id for m in await store.messages.recent(OTHER, 3)] == [7, 8, 9]
        assert store.pending == 0

@pytest.mark.anyio
async def test_usage_rows_round_trip_with_unknown_cost(open_store: Opener) -> None:
    recs = [
        UsageRecord(T0, CHAT, 1, "chat", "fast", 1200, 300, 0.00042, 812.5),
        UsageRecord(T0 + timedelta(hours=1), CHAT, 2, "image", "dalle", 0, 0, None, 5000.0),
        UsageRecord(T0 + timedelta(days=1), 77, 77, "transcription", "whisper", 0, 0, 0.0, 90.25),
    ]
    async with open_store() as store:
        for r in reversed(recs):
            store.record_usage(r)
        assert await store.usage.rows() == recs
        assert await store.usage.rows(since=T0 + timedelta(minutes=30)) == recs[1:]
        rows = await store.usage.rows()
        assert rows[1].cost_usd is None and rows[2].cost_usd == 0.0
        assert all(r.ts.tzinfo is not None and r.ts.utcoffset() == timedelta(0) for r in rows)


@pytest.mark.anyio
async def test_recalls_round_trip_and_never_cross_chats(open_store: Opener) -> None:
    async with open_store() as store:
        hits = [MemoryHit(CHAT, i, 1, "u", "t", T0, s, parts={"rrf": s}) for i, s in [(3, 0.2), (7, 0.9), (5, 0.5)]]
        store.record_recall(CHAT, 100, hits)
        store.record_recall(CHAT, 100, hits[:1])  # recorded twice: kept once
        assert await store.usage.recalls_for(CHAT, 100) == [(7, 0.9), (5, 0.5), (3, 0.2)]
        assert await store.usage.recalls_for(OTHER, 100) == []
        with pytest.raises(ValueError):
            store.record_recall(OTHER, 1, hits)


@pytest.mark.anyio
async def test_texts_round_trip_exactly(open_store: Opener) -> None:
    texts = {
        1: "",
        2: "x" * 100_000,
        3: "مرحبا بالعالم، كيف حالك؟",  # Arabic (RTL)
        4: "你好，世界。日本語のテキストと한국어",  # CJK
        5: "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 skin tone",  # ZWJ sequences, modifiers
        6: "e\u0301 combining, \u200bzero width, nul\x00byte, tab\tnewline\n\r\nend",
        7: "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " + "🙂" * 25_000,  # astral plane, long
        8: "'; DROP TABLE messages; --",
    }
    async with open_store() as store:
        store.add_many(msg(i, text=t) for i, t in texts.items())
        store.add(StoredMessage(CHAT, 9, 5, "Ёжик 🦔 مستخدم", "hi", T0))
    async with open_store() as store:
        got = {m.message_id: m for m in await store.messages.get(CHAT, list(range(1, 10)))}
        back = {i: got[i].text for i in texts}
        # the contract's one exception: a store may keep U+0000 (never sent by Telegram) as U+FFFD
        assert back[6] in (texts[6], texts[6].replace("\x00", "\ufffd"))
        assert {i: t for i, t in back.items() if i != 6} == {i: t for i, t in texts.items() if i != 6}
        assert got[9].user_name == "Ёжик 🦔 مستخدم"


@pytest.mark.anyio
async def test_dates_are_returned_as_utc_instants(open_store: Opener) -> None:
    tokyo = timezone(timedelta(hours=9))
    async with open_store() as store:
        store.add(StoredMessage(CHAT, 1, 1, "a", "t", datetime(2024, 3, 1, 21, 0, 0, 123456, tzinfo=tokyo)))
        store.add(StoredMessage(CHAT, 2, 1, "a", "t", datetime(2024, 3, 1, 12, 0)))  # naive = UTC
        a, b = await store.messages.get(CHAT, [1, 2])
        assert a.date == datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC) and a.date.utcoffset() == timedelta(0)
        assert b.date == datetime(2024, 3, 1, 12, 0, tzinfo=UTC) and b.date.tzinfo is not None


@pytest.mark.anyio
async def test_many_rows_are_committed_in_few_commits(open_store: Opener) -> None:
    # a commit happens at flush_rows queued rows (or after flush_interval_s, made long here so the
    # bound does not depend on machine load): 10,000 single adds → about 5 commits, not 10,000
    async with open_store(flush_rows=2000, flush_interval_s=2.0) as store:
        for i in range(10_000):  # one add per message, like live traffic, yielding now and then
            store.add(msg(i, user=i % 50))
            if i % 500 == 0:
                await anyio.sleep(0)
        await store.flush()
        assert await store.messages.count() == 10_000
        commits = (await store.stats())["commits"]
        assert 1 <= commits <= 8, commits
        store.add_many(msg(i) for i in range(10_000, 60_000))
        before = (await store.stats())["commits"]
        await store.flush()
        assert (await store.stats())["commits"] - before <= 2
        assert (await store.stats())["messages"] == 60_000


@pytest.mark.anyio
async def test_a_bad_row_is_dropped_alone_and_the_batch_survives(open_store: Opener, caplog) -> None:
    async with open_store() as store:
        store.add_many(msg(i) for i in range(100))
        store.add(StoredMessage(CHAT, 2**70, 1, "u", "t", T0))  # beyond BIGINT: can never be stored
        store.add(msg(100, text="lone surrogate \ud800"))  # not valid UTF-8
        store.add_many(msg(i) for i in range(101, 200))
        store.record_usage(UsageRecord(T0, CHAT, 1, "chat", "fast", 1, 1, None, 1.0))
        await store.flush()
        assert await store.messages.count() == 199
        assert (await store.stats())["dropped_rows"] == 2
        assert len(await store.usage.rows()) == 1
    assert any("dropped" in r.message for r in caplog.records)


@pytest.mark.anyio
async def test_closed_store_refuses_writes(open_store: Opener) -> None:
    store = open_store()
    with pytest.raises(MemoryStoreError):
        store.add(msg(1))
    async with store:
        store.add(msg(1))
    with pytest.raises(MemoryStoreError):
        store.add(msg(2))
    with pytest.raises(MemoryStoreError):
        await store.messages.recent(CHAT, 1)


@pytest.mark.anyio
async def test_an_error_in_the_body_propagates_unwrapped_after_flushing(open_store: Opener) -> None:
    with pytest.raises(KeyError):
        async with open_store(flush_interval_s=30.0) as store:
            store.add(msg(1))
            raise KeyError("boom")
    async with open_store() as store:
        assert await store.messages.count() == 1


@pytest.mark.anyio
async def test_outside_cancellation_still_commits_queued_rows(open_store: Opener) -> None:
    async def bot(task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with open_store(flush_interval_s=30.0) as store:
            store.add_many(msg(i) for i in range(100))
            task_status.started()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        await tg.start(bot)
        tg.cancel_scope.cancel()
    async with open_store() as store:
        assert await store.messages.count() == 100


@pytest.mark.anyio
async def test_real_irc_transcript_round_trips_through_the_store(open_store: Opener) -> None:
    path = IRC / "2009-03-03_10.jsonl"
    reader = read_transcript(path)
    msgs = list(reader)
    assert all(isinstance(m, StoredMessage) for m in msgs)
    async with open_store() as store:
        for meta in reader.chats.values():
            await store.upsert_chat(meta.chat_id, meta.type, meta.title)
        store.add_many(msgs)
        store.add_many(msgs)  # a second import changes nothing
        (chat,) = await store.settings.chats()
        assert chat.messages == len(msgs) == 1226 and chat.title == "#ubuntu 2009-03-03_10"
        last = await store.messages.recent(chat.chat_id, 5)
        assert [m.message_id for m in last] == [m.message_id for m in sorted(msgs, key=lambda m: m.message_id)[-5:]]
        by_id = {m.message_id: m for m in msgs}
        assert all(by_id[m.message_id] == m for m in last)
        nick = msgs[0].user_id
        assert await store.messages.count(chat.chat_id, user_id=nick) == sum(m.user_id == nick for m in msgs)


# ---------------------------------------------------------------- named queries of cleanup, tiers, billing


@pytest.mark.anyio
async def test_message_keys_are_oldest_first_by_chat_or_sender_before_a_date(open_store: Opener) -> None:
    async with open_store() as store:
        store.add_many(msg(i, user=1 if i % 2 else 2) for i in reversed(range(10)))
        store.add_many(msg(i, chat=OTHER, user=1) for i in range(100, 103))
        assert await store.messages.keys(chat_id=CHAT) == [(CHAT, i) for i in range(10)]
        assert await store.messages.keys(chat_id=CHAT, before=T0 + timedelta(seconds=4)) == [(CHAT, i) for i in range(4)]
        assert await store.messages.keys(chat_id=CHAT, limit=3) == [(CHAT, 0), (CHAT, 1), (CHAT, 2)]
        assert await store.messages.keys(user_id=1, limit=2) == [(CHAT, 1), (CHAT, 3)]
        mine = await store.messages.keys(user_id=1)
        assert mine[-3:] == [(OTHER, 100), (OTHER, 101), (OTHER, 102)] and len(mine) == 8
        assert await store.messages.keys(chat_id=CHAT, user_id=2, before=T0 + timedelta(seconds=5)) == [
            (CHAT, 0), (CHAT, 2), (CHAT, 4)]
        with pytest.raises(ValueError):
            await store.messages.keys()


@pytest.mark.anyio
async def test_usage_totals_by_every_grouping_and_counts_of_a_window(open_store: Opener) -> None:
    day2 = T0 + timedelta(days=1)
    recs = [
        UsageRecord(T0, CHAT, 1, "chat", "fast", 100, 20, 0.001, 10.0),
        UsageRecord(T0 + timedelta(minutes=1), CHAT, 1, "chat", "fast", 50, 10, None, 10.0),  # unpriced
        UsageRecord(T0 + timedelta(minutes=2), CHAT, 2, "image", "dalle", 0, 0, 0.04, 10.0, images=2),
        UsageRecord(day2, OTHER, 2, "transcription", "whisper", 0, 0, 0.006, 10.0, seconds=61.5),
        UsageRecord(day2, OTHER, 2, "document", "reader", 0, 0, None, 10.0, pages=12),
    ]
    async with open_store() as store:
        for r in recs:
            store.record_usage(r)
        by_model = {t.key: t for t in await store.usage.totals("model")}
        assert sorted(by_model) == ["dalle", "fast", "reader", "whisper"]
        fast = by_model["fast"]
        assert (fast.requests, fast.prompt_tokens, fast.completion_tokens, fast.unpriced) == (2, 150, 30, 1)
        assert fast.cost_usd == pytest.approx(0.001)
        assert by_model["dalle"].images == 2 and by_model["whisper"].seconds == pytest.approx(61.5)
        assert by_model["reader"].pages == 12 and by_model["reader"].cost_usd == 0.0
        assert [(t.key, t.requests) for t in await store.usage.totals("day")] == [("2024-03-01", 3), ("2024-03-02", 2)]
        assert [(t.key, t.requests) for t in await store.usage.totals("user")] == [("1", 2), ("2", 3)]
        assert [(t.key, t.requests) for t in await store.usage.totals("chat")] == sorted(
            [(str(CHAT), 3), (str(OTHER), 2)])
        assert [t.key for t in await store.usage.totals("kind")] == ["chat", "document", "image", "transcription"]
        assert [t.key for t in await store.usage.totals("model", since=day2)] == ["reader", "whisper"]
        with pytest.raises(ValueError):
            await store.usage.totals("weekday")

        counts = await store.usage.counts(T0, day2)
        got = {(c.chat_id, c.user_id, c.model, c.kind): (c.calls, c.tokens, c.images, c.seconds) for c in counts}
        assert got == {(CHAT, 1, "fast", "chat"): (2, 180, 0, 0.0), (CHAT, 2, "dalle", "image"): (1, 0, 2, 0.0)}
        assert await store.usage.counts(day2 + timedelta(days=1), day2 + timedelta(days=2)) == []


@pytest.mark.anyio
async def test_usage_times_are_microsecond_exact_and_days_are_utc(open_store: Opener) -> None:
    midnight = datetime(2024, 3, 2, tzinfo=UTC)
    last = midnight - timedelta(microseconds=1)
    moscow = timezone(timedelta(hours=3))
    recs = [
        UsageRecord(last.astimezone(moscow), CHAT, 1, "chat", "fast", 1, 1, None, 1.0),  # 02:59:59.999999 local
        UsageRecord(midnight, CHAT, 1, "chat", "fast", 2, 2, 0.5, 1.0),
        UsageRecord(midnight + timedelta(microseconds=1), CHAT, 1, "chat", "fast", 4, 4, 0.25, 1.0),
    ]
    async with open_store(flush_interval_s=30.0) as store:
        for r in recs:
            store.record_usage(r)
        with anyio.fail_after(5):  # each read commits the queued rows itself
            rows = await store.usage.rows()
        assert [r.ts for r in rows] == [last, midnight, midnight + timedelta(microseconds=1)]
        assert all(r.ts.tzinfo is UTC for r in rows)
        assert [r.prompt_tokens for r in await store.usage.rows(since=midnight)] == [2, 4]  # since: inclusive
        assert [r.prompt_tokens for r in await store.usage.rows(since=midnight.replace(tzinfo=None))] == [2, 4]  # naive: UTC
        days = await store.usage.totals("day")
        assert [(t.key, t.requests, t.unpriced, t.cost_usd) for t in days] == [
            ("2024-03-01", 1, 1, 0.0), ("2024-03-02", 2, 0, 0.75)]
        assert [t.key for t in await store.usage.totals("day", since=midnight.astimezone(moscow))] == ["2024-03-02"]
        day1 = await store.usage.counts(midnight - timedelta(days=1), midnight)  # [start, end)
        assert [(c.calls, c.tokens) for c in day1] == [(1, 2)]
        day2 = await store.usage.counts(midnight, midnight + timedelta(microseconds=1))
        assert [(c.calls, c.tokens) for c in day2] == [(1, 4)]


@pytest.mark.anyio
async def test_usage_totals_keys_in_code_point_order_and_plugins_are_the_tool_calls(open_store: Opener) -> None:
    recs = [
        UsageRecord(T0, 5, 10, "chat", "beta", 1, 1, 0.0, 1.0),
        UsageRecord(T0, CHAT, 10, "chat", "Zeta", 1, 1, 0.0, 1.0),
        UsageRecord(T0, 5, 9, "tool", "web", 0, 0, None, 1.0),
        UsageRecord(T0, 5, 9, "tool", "calculator", 0, 0, None, 1.0),
        UsageRecord(T0, 5, 9, "tool", "web", 0, 0, None, 1.0),
        UsageRecord(T0, 5, 9, "chat", "alpha-2", 1, 1, 0.0, 1.0),
    ]
    async with open_store() as store:
        for r in recs:
            store.record_usage(r)
        assert [t.key for t in await store.usage.totals("model")] == ["Zeta", "alpha-2", "beta", "calculator", "web"]
        assert [t.key for t in await store.usage.totals("chat")] == [str(CHAT), "5"]
        assert [t.key for t in await store.usage.totals("user")] == ["10", "9"]
        assert [(t.key, t.requests, t.unpriced) for t in await store.usage.totals("plugin")] == [
            ("calculator", 1, 1), ("web", 2, 2)]
        for by in USAGE_GROUPINGS:  # every grouping the reports offer is one the store takes
            assert sum(t.requests for t in await store.usage.totals(by)) == (3 if by == "plugin" else 6)


@pytest.mark.anyio
async def test_subscriptions_are_put_replaced_deleted_and_kept(open_store: Opener) -> None:
    soon = T0 + timedelta(days=30, microseconds=7)
    async with open_store() as store:
        assert await store.billing.subscriptions() == []
        await store.billing.put_subscription(SubscriptionRecord("user", 42, "premium", soon, "cli", T0))
        await store.billing.put_subscription(SubscriptionRecord("chat", CHAT, "premium", None, "cli", T0))
        await store.billing.put_subscription(SubscriptionRecord("user", 42, "gold", None, "payment:x", T0 + timedelta(hours=1)))
        assert await store.billing.delete_subscription("chat", CHAT) is True
        assert await store.billing.delete_subscription("chat", CHAT) is False
    async with open_store() as store:
        assert await store.billing.subscriptions() == [
            SubscriptionRecord("user", 42, "gold", None, "payment:x", T0 + timedelta(hours=1))]
        await store.billing.put_subscription(SubscriptionRecord("user", 42, "gold", soon, "cli", T0))
        (sub,) = await store.billing.subscriptions()
        assert sub.expires_at == soon and sub.expires_at.tzinfo is not None
        assert (sub.renews, sub.charge_id) == (None, None)
        await store.billing.put_subscription(SubscriptionRecord("user", 42, "gold", soon, "payment:c2", T0, False, "c1"))  # Telegram's
    async with open_store() as store:
        (sub,) = await store.billing.subscriptions()
        assert (sub.source, sub.renews, sub.charge_id) == ("payment:c2", False, "c1")


@pytest.mark.anyio
async def test_a_payment_is_recorded_once_per_charge(open_store: Opener) -> None:
    def pay(charge: str, user: int, minutes: int) -> PaymentRecord:
        return PaymentRecord(charge, user, user, "month", "premium", 30, 250, "XTR", "user", user,
                             T0 + timedelta(minutes=minutes))

    async with open_store() as store:
        assert await store.billing.add_payment(pay("c1", 1, 0)) is True
        assert await store.billing.add_payment(pay("c1", 1, 5)) is False  # Telegram re-delivered the update
        assert await store.billing.add_payment(pay("c2", 2, 1)) is True
        assert await store.billing.add_payment(pay("c3", 1, 2)) is True
        assert [p.charge_id for p in await store.billing.payments()] == ["c3", "c2", "c1"]  # newest first
        assert await store.billing.payments(user_id=1) == [pay("c3", 1, 2), pay("c1", 1, 0)]
        assert await store.billing.payment("c2") == pay("c2", 2, 1)  # one payment by its charge id
        assert await store.billing.payment("nope") is None
        await store.billing.delete_payment("c1")
        assert await store.billing.payment("c1") is None
        await store.billing.delete_payment("nope")
    async with open_store() as store:
        assert [p.charge_id for p in await store.billing.payments()] == ["c3", "c2"]
        assert await store.billing.payment("c3") == pay("c3", 1, 2)  # after a restart: what the database holds
        assert await store.billing.add_payment(pay("c1", 1, 9)) is True  # forgotten: a re-delivery applies it


@pytest.mark.anyio
async def test_billing_times_round_trip_to_the_microsecond(open_store: Opener) -> None:
    # store.billing writes times as µs ({ts}) and reads them back through the dialect: exact on
    # both engines, a naive time taken as UTC, a NULL expiry kept as None
    t = datetime(2026, 12, 6, 18, 0, 0, 123457, tzinfo=UTC)
    async with open_store() as store:
        await store.billing.put_subscription(SubscriptionRecord("user", 7, "gold", None, "cli", t, True, "ch"))
        await store.billing.put_subscription(SubscriptionRecord("user", 8, "gold", t + timedelta(microseconds=1), "cli",
                                                                t.replace(tzinfo=None)))
        for charge, at in (("a", t), ("b", t + timedelta(microseconds=1)), ("c", t - timedelta(microseconds=1))):
            assert await store.billing.add_payment(PaymentRecord(charge, 7, 7, "month", "gold", 30, 250, "XTR", "user", 7, at))
    async with open_store() as store:
        assert await store.billing.subscriptions() == [
            SubscriptionRecord("user", 7, "gold", None, "cli", t, True, "ch"),
            SubscriptionRecord("user", 8, "gold", t + timedelta(microseconds=1), "cli", t)]
        paid = await store.billing.payments(user_id=7)
        assert [(p.charge_id, p.paid_at) for p in paid] == [
            ("b", t + timedelta(microseconds=1)), ("a", t), ("c", t - timedelta(microseconds=1))]  # 1 µs apart, newest first
        assert all(p.paid_at.utcoffset() == timedelta(0) for p in paid)
        got = await store.billing.payment("a")
        assert got is not None and got.paid_at == t


@pytest.mark.anyio
async def test_deliveries_replies_and_edits(open_store: Opener) -> None:
    async with open_store(flush_interval_s=30.0) as store:
        assert await store.messages.answered_ids(CHAT) == set()
        store.add_many(msg(i) for i in range(1, 4))
        await store.note_delivery(CHAT, 1)  # queued with the chat's messages, durable on return
        assert await store.messages.answered_ids(CHAT) == {1}
        store.add(msg(10, user=999, role=ROLE_ASSISTANT, reply_to=2))
        assert await store.messages.answered_ids(CHAT) == {1, 2}
        assert await store.messages.answered_ids(OTHER) == set()
        edited = await store.messages.update_text(CHAT, 3, "edited ✓")
        assert edited is not None and edited.text == "edited ✓" and edited.date == T0 + timedelta(seconds=3)
        assert await store.messages.update_text(CHAT, 99, "x") is None
    async with open_store() as store:
        assert await store.messages.answered_ids(CHAT) == {1, 2}
        assert [m.text for m in await store.messages.get(CHAT, [3])] == ["edited ✓"]


@pytest.mark.anyio
async def test_message_dates_round_trip_to_the_microsecond_through_every_read(open_store: Opener) -> None:
    # store.messages reads the date column as µs through the dialect: every read gives back the
    # same instants, 1 µs apart, tz-aware UTC; keys(before=…) cuts at the exact microsecond
    t = datetime(2026, 12, 6, 18, 0, 0, 123457, tzinfo=UTC)
    dates = {i: t + timedelta(microseconds=i - 2) for i in range(1, 4)}  # t-1µs, t, t+1µs
    async with open_store() as store:
        store.add_many(StoredMessage(CHAT, i, 5, "u", f"m{i}", d) for i, d in dates.items())
        store.add(StoredMessage(CHAT, 4, 5, "u", "naive", (t + timedelta(microseconds=2)).replace(tzinfo=None)))
    async with open_store() as store:
        want = {**dates, 4: t + timedelta(microseconds=2)}
        reads = [await store.messages.recent(CHAT, 10), await store.messages.get(CHAT, [1, 2, 3, 4]),
                 (await store.messages.around(CHAT, [2], 5, 5))[2],
                 [m for p in [p async for p in store.messages.iter(CHAT, batch=3)] for m in p]]
        for got in reads:
            assert {m.message_id: m.date for m in got} == want
            assert all(m.date.utcoffset() == timedelta(0) for m in got)
        edited = await store.messages.update_text(CHAT, 3, "edited")
        assert edited is not None and edited.date == dates[3] and edited.date.tzinfo is not None
        assert await store.messages.keys(chat_id=CHAT, before=t) == [(CHAT, 1)]  # t itself is not before t
        assert await store.messages.keys(user_id=5, before=t + timedelta(microseconds=1)) == [(CHAT, 1), (CHAT, 2)]
        assert await store.messages.keys(chat_id=CHAT, before=(t + timedelta(microseconds=3)).replace(tzinfo=None)) == [
            (CHAT, i) for i in range(1, 5)]  # a naive bound is UTC


@pytest.mark.anyio
async def test_an_edit_keeps_a_text_as_a_write_does(open_store: Opener) -> None:
    # update_text runs one SQL text on both engines, with the text as the engine keeps it: the same
    # as the queue's write of that text (DuckDB exactly; PostgreSQL: U+0000 as U+FFFD)
    text = "e\u0301 nul\x00byte 👩‍👩‍👧‍👦 '; DROP TABLE messages; --"
    async with open_store() as store:
        store.add_many([msg(1, text=text), msg(2, text="before")])
        edited = await store.messages.update_text(CHAT, 2, text)
        (written,) = await store.messages.get(CHAT, [1])
        assert edited is not None and edited.text == written.text
        assert written.text in (text, text.replace("\x00", "\ufffd"))
    async with open_store() as store:
        assert [m.text for m in await store.messages.get(CHAT, [1, 2])] == [written.text] * 2


@pytest.mark.anyio
async def test_a_chat_without_messages_is_answered_from_the_directory(open_store: Opener) -> None:
    # the first turn of a new chat reads its window and answered ids: DuckDB (one writer) knows the
    # chat has no messages and asks the database nothing; PostgreSQL (several writers) asks
    async with open_store() as store:
        store.add(msg(1))
        await store.flush()
        queries: list[str] = []
        real = store.sql_query

        async def counting(sql, params=()):
            queries.append(sql)
            return await real(sql, params)

        store.sql_query = counting  # type: ignore[method-assign]
        m = store.messages
        assert (await m.recent(OTHER, 10), await m.answered_ids(OTHER), await m.max_id(OTHER)) == ([], set(), None)
        assert (await m.get(OTHER, [1]), await m.around(OTHER, [1], 2, 2), await m.update_text(OTHER, 1, "x")) == ([], {}, None)
        assert (queries == []) == isinstance(store, DuckDBStore)
        store.add(msg(7, chat=OTHER))  # queued: the next read commits it and sees it
        assert [x.message_id for x in await m.recent(OTHER, 10)] == [7] and await m.max_id(OTHER) == 7
        await store.note_delivery(-77, 5)  # a delivery alone makes the chat one to ask about
        assert await m.answered_ids(-77) == {5}


@pytest.mark.anyio
async def test_the_dialects_time_spellings_round_trip_to_the_microsecond(open_store: Opener) -> None:
    # the per-domain stores' one SQL text writes a time as µs since the epoch ({ts}) and reads it
    # back through dialect.us(): exact on both engines, before 1970 and far ahead too
    times = [-86_400_000_001, 0, 1_765_000_000_123_457, 4_102_444_800_999_999]
    async with open_store() as store:
        d = store.dialect
        for t in times:
            rows = await store.sql_query(f"SELECT {d.us('x')} FROM (SELECT {d.ts} AS x) AS t", [t])
            assert rows == [(t,)]


@pytest.mark.anyio
async def test_the_dialects_json_type_takes_json_text_and_reads_back_the_same_object(open_store: Opener) -> None:
    # CAST(? AS dialect.json): a parameter of JSON text into a JSON (DuckDB) / JSONB (PostgreSQL)
    # column; a read returns the text (DuckDB) or the decoded object (psycopg): the same object
    doc = {"persona": "Ты — помощник 🤖", "n": 3, "on": False, "nested": {"a": None, "l": [1, "два"]}}
    async with open_store() as store:
        cast = f"CAST(? AS {store.dialect.json})"
        await store.sql_query(f"INSERT INTO users (user_id, settings, created_at) VALUES (?, {cast}, {store.dialect.ts})",
                              [5, json.dumps(doc, ensure_ascii=False), 0])
        ((got,),) = await store.sql_query("SELECT settings FROM users WHERE user_id = ?", [5])
        assert (json.loads(got) if isinstance(got, str) else got) == doc
        ((text,),) = await store.sql_query(f"SELECT CAST(CAST(? AS {store.dialect.json}) AS VARCHAR)", ["{}"])
        assert text == "{}"  # what SettingsStore's load leaves out


@pytest.mark.anyio
@pytest.mark.parametrize("cache", [True, False])
async def test_settings_read_the_same_kept_in_memory_or_not(open_store: Opener, cache: bool) -> None:
    # store.settings keeps them in memory where the store is the only writer (DuckDB) and reads the
    # database each time where it is shared (PostgreSQL); both ways, on both engines, read the same
    async with open_store() as store:
        await store.settings.set_chat(CHAT, {"keywords": ["kith"], "always_on": True})
        await store.settings.set_user(7, {"role": "pirate"}, username="anna", name="Anna")
        await store.settings.set_user(8, {"model": "fast"})
        settings = SettingsStore(store, cache=cache)
        assert settings.cache is cache
        assert await settings.chat(CHAT) == {"keywords": ["kith"], "always_on": True}
        assert await settings.user(7) == {"role": "pirate"} and await settings.chat(OTHER) == {}
        await settings.set_user(8, {})  # cleared
        await settings.set_chat(OTHER, {"name": "Jarvis"})
        assert await settings.user(8) == {}
        assert await settings.chat(OTHER) == {"name": "Jarvis"}
        got = await settings.chat(CHAT)
        got["keywords"].append("changed by a caller")  # each read is the caller's own dict
        assert await settings.chat(CHAT) == {"keywords": ["kith"], "always_on": True}
        nul = {"role": "a\x00b", "k\x00": ["\x00"]}  # U+0000 (never from Telegram) is kept as U+FFFD on both
        await settings.set_user(9, nul, username="n\x00ul")
        assert await settings.user(9) == {"role": "a\ufffdb", "k\ufffd": ["\ufffd"]}
        assert await store.sql_query("SELECT username FROM users WHERE user_id = ?", [9]) == [("n\ufffdul",)]
        with pytest.raises(TypeError):
            await settings.set_user(9, {"bad": object()})
    async with open_store() as store:  # committed: a new store reads the same
        assert await store.settings.user(8) == {} and await store.settings.user(7) == {"role": "pirate"}
        assert await store.settings.chat(OTHER) == {"name": "Jarvis"}
        assert await store.settings.user(9) == {"role": "a\ufffdb", "k\ufffd": ["\ufffd"]}
        assert store.knows_chat(CHAT) and store.knows_chat(OTHER)  # rows a settings write created
        assert (await store.stats())["users"] == 3


@pytest.mark.anyio
async def test_settings_errors_name_their_domain(open_store: Opener) -> None:
    store = open_store()
    with pytest.raises(MemoryStoreError):
        await store.settings.chat(CHAT)  # not open
    async with store:
        await store.sql_query("DROP TABLE users")
        with pytest.raises(MemoryStoreError, match="^settings: the database failed"):
            await SettingsStore(store, cache=False).user(1)


@pytest.mark.anyio
async def test_api_keys_round_trip_per_scope(open_store: Opener) -> None:
    t0 = datetime(2026, 12, 6, 18, 0, 0, 123457, tzinfo=UTC)
    async with open_store(clock=lambda: t0) as store:
        await store.keys.set("user", 1, "openai", b"\x00secret", "sk-…abcd")
        await store.keys.set("user", 1, "anthropic", b"other", "…wxyz")
        await store.keys.set("user", 1, "openai", b"replaced", "sk-…efgh")
        await store.keys.set("chat", CHAT, "openai", b"group", "…1234")
        assert await store.keys.token("user", 1, "openai") == b"replaced"
        assert await store.keys.token("user", 2, "openai") is None
        assert await store.keys.list("user", 1) == [("anthropic", "…wxyz", t0), ("openai", "sk-…efgh", t0)]
        assert await store.keys.delete("user", 1, "openai") == 1
        assert await store.keys.delete("user", 1) == 1
        assert await store.keys.list("user", 1) == []
        assert await store.keys.token("chat", CHAT, "openai") == b"group"


@pytest.mark.anyio
async def test_documents_memory_ids_and_evictions(open_store: Opener) -> None:
    info = DocumentInfo(CHAT, 5, "report.pdf", "application/pdf", "pdf", 1234, 2, 2, 1, "user1", T0)
    chunks = [DocumentChunk(CHAT, 5, i, f"part {i}", i + 1, None, "report.pdf", 1, "user1", T0) for i in range(2)]
    async with open_store() as store:
        store.add_many([msg(1), msg(2, text=""), msg(3, user=999, role=ROLE_ASSISTANT), msg(5, text="[report.pdf]")])
        store.add(msg(7, chat=OTHER))
        assert not store.documents.has(CHAT)
        await store.documents.add(info, chunks)
        await store.documents.add(info, chunks)  # read again: replaced, not doubled
        assert store.documents.has(CHAT)
        with pytest.raises(ValueError):
            await store.documents.add(info, [DocumentChunk(OTHER, 5, 0, "x", None, None, "f", 1, "u", T0)])
        assert await store.documents.list(CHAT) == [info] and await store.documents.list(OTHER) == []
        pages = [p async for p in store.documents.iter_chunks(CHAT, batch=1)]
        assert [[c.index for c in p] for p in pages] == [[0], [1]]
        assert pages[1][0].page == 2 and pages[1][0].memory_id == chunk_memory_id(5, 1) > DOC_ID_BASE
        want = {1, 5, chunk_memory_id(5, 0), chunk_memory_id(5, 1)}
        assert await store.index.memory_ids() == {CHAT: want, OTHER: {7}}
        await store.index.note_evictions(CHAT, [1, 5])  # the message and the document's chunks
        assert await store.index.evicted_ids(CHAT) == {1, 5}
        assert await store.index.memory_ids(CHAT) == {}
        assert await store.messages.delete(CHAT, message_ids=[5]) == [5]
        assert await store.documents.list() == [] and await store.index.evicted_ids(CHAT) == {1}


@pytest.mark.anyio
async def test_documents_keep_times_to_the_microsecond_many_chunks_and_the_chats_that_have_them(open_store: Opener) -> None:
    t1 = datetime(2026, 12, 6, 18, 0, 0, 123457, tzinfo=UTC)
    t2 = datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=timezone(timedelta(hours=-4)))  # older, not UTC
    big = DocumentInfo(CHAT, 9, "book\x00.pdf", None, "pdf", 10**10, 3000, 3000, 2, "Anna\x00", t1)
    chunks = [DocumentChunk(CHAT, 9, i, f"page text {i}\x00" if i == 7 else f"page text {i}", i // 2 + 1 if i % 3 else None,
                            f"§{i}" if i % 2 else None, big.file_name, 2, big.user_name, t1) for i in range(3000)]
    old = DocumentInfo(OTHER, 4, "notes.txt", "text/plain", "text", 10, 0, 0, 3, "Boris", t2)
    basic, sup = -4002, -1004002
    async with open_store() as store:
        await store.documents.add(big, chunks)
        await store.documents.add(old, [])  # a document without text: listed, no chunks
        await store.documents.add(DocumentInfo(basic, 2, "a.txt", None, "text", 1, 0, 1, 3, "Boris", t1),
                                  [DocumentChunk(basic, 2, 0, "group text", None, None, "a.txt", 3, "Boris", t1)])
        listed = await store.documents.list()
        assert [(d.chat_id, d.message_id) for d in listed] == [(OTHER, 4), (CHAT, 9), (basic, 2)]  # oldest first
        assert listed[0].date == t2 and listed[0].date.tzinfo == UTC and listed[1].date == t1
        # U+0000 is kept as U+FFFD on every engine (PostgreSQL's text cannot hold it)
        assert (listed[1].file_name, listed[1].user_name, listed[1].size_bytes) == ("book\ufffd.pdf", "Anna\ufffd", 10**10)
        got = [c async for page in store.documents.iter_chunks(CHAT, batch=1000) for c in page]
        want = [DocumentChunk(c.chat_id, c.message_id, c.index, c.text.replace("\x00", "\ufffd"), c.page, c.section,
                              "book\ufffd.pdf", 2, "Anna\ufffd", t1) for c in chunks]
        assert got == want
        assert [len(p) async for p in store.documents.iter_chunks(batch=1000)] == [1000, 1000, 1000, 1]
        await store.upsert_chat(basic, "group", "Team")
        await store.migrate_chat(basic, sup)
        assert (store.documents.has(basic), store.documents.has(sup)) == (False, True)
        assert [(d.chat_id, d.message_id) for d in await store.documents.list(sup)] == [(sup, migrated_id(2))]
    async with open_store() as store:  # the chats with documents are read again at open
        assert [store.documents.has(c) for c in (CHAT, OTHER, sup, basic, 12345)] == [True, True, True, False, False]


@pytest.mark.anyio
async def test_a_basic_group_moves_to_its_supergroup_once(open_store: Opener) -> None:
    basic, sup = -4001, -1004001
    async with open_store() as store:
        await store.upsert_chat(basic, "group", "Team")
        await store.settings.set_chat(basic, {"persona": "p", "context_from": 3})
        await store.settings.set_chat(sup, {"name": "Jarvis"})  # the supergroup's own: kept
        assert await store.settings.chat(basic) == {"persona": "p", "context_from": 3}  # (DuckDB: now kept in memory)
        store.add_many(msg(i, chat=basic) for i in range(1, 6))
        store.add(msg(6, chat=basic, user=999, role=ROLE_ASSISTANT, reply_to=5))
        store.record_usage(UsageRecord(T0, basic, 1, "chat", "fast", 1, 1, None, 1.0))
        await store.billing.put_subscription(SubscriptionRecord("chat", basic, "premium", None, "cli", T0))
        await store.note_delivery(basic, 5)
        store.add(msg(1, chat=sup))  # the supergroup's own first message
        assert await store.migrate_chat(basic, sup) == 6
        assert await store.migrate_chat(basic, sup) == 0  # a second service message: nothing left
        ids = [m.message_id for m in await store.messages.recent(sup, 10)]
        assert ids == [migrated_id(i) for i in range(1, 7)] + [1]  # older than the supergroup's own
        assert await store.messages.answered_ids(sup) == {migrated_id(5)}
        assert await store.messages.recent(basic, 10) == []
        assert await store.settings.chat(sup) == {"persona": "p", "context_from": migrated_id(3), "name": "Jarvis"}
        assert await store.settings.chat(basic) == {}
        assert [(s.scope, s.scope_id) for s in await store.billing.subscriptions()] == [("chat", sup)]
        assert [t.key for t in await store.usage.totals("chat")] == [str(sup)]
        chats = {c.chat_id: c for c in await store.settings.chats()}
        assert basic not in chats and (chats[sup].type, chats[sup].title) == ("supergroup", "Team")


@pytest.mark.anyio
async def test_the_hosts_imports_are_told_apart_and_cleanups_are_logged_per_reason(open_store) -> None:
    from memory.types import CleanupRecord

    async with open_store() as store:
        store.add_many([msg(i, imported=True) for i in range(1, 6)] + [msg(i, user=2) for i in range(6, 9)])
        await store.flush()
        assert await store.messages.count(CHAT) == 8
        assert await store.messages.count(CHAT, imported=True) == 5
        assert await store.messages.count(CHAT, user_id=2, imported=False) == 3
        assert await store.messages.keys(chat_id=CHAT, imported=False) == [(CHAT, 6), (CHAT, 7), (CHAT, 8)]
        assert all(m.imported for m in await store.messages.get(CHAT, [1, 2]))
        assert not any(m.imported for m in await store.messages.get(CHAT, [6]))
        for at, n in ((T0, 3), (T0 + timedelta(days=1), 4)):
            await store.index.record_cleanup(CleanupRecord(CHAT, at, "chat", CHAT, "free", "memory_limit", 10, 0, n))
        await store.index.record_cleanup(CleanupRecord(OTHER, T0, "user", 2, "free", "dialogue_limit", 5, 2, 0))
        assert await store.index.cleanups(CHAT) == [
            CleanupRecord(CHAT, T0 + timedelta(days=1), "chat", CHAT, "free", "memory_limit", 10, 0, 7)]
        assert [r.chat_id for r in await store.index.cleanups()] == sorted([CHAT, OTHER])


@pytest.mark.anyio
async def test_evictions_are_noted_once_per_chat_and_memory_ids_see_queued_messages(open_store: Opener) -> None:
    async with open_store(flush_interval_s=30.0) as store:
        store.add_many([msg(i) for i in range(1, 6)] + [msg(2, chat=OTHER)])
        with anyio.fail_after(5):  # read-your-writes: the queued messages are counted without a flush
            assert await store.index.memory_ids(CHAT) == {CHAT: {1, 2, 3, 4, 5}}
        await store.index.note_evictions(CHAT, [2, 2, 3])  # a duplicate inside one call
        await store.index.note_evictions(CHAT, [3, 4])  # and one noted before
        await store.index.note_evictions(CHAT, [])
        assert await store.index.evicted_ids(CHAT) == {2, 3, 4}
        assert await store.index.evicted_ids(OTHER) == set()  # the same message id in another chat stays
        assert await store.index.memory_ids() == {CHAT: {1, 5}, OTHER: {2}}
        assert await store.index.memory_ids(OTHER) == {OTHER: {2}}
        assert await store.index.memory_ids(-42) == {}
    async with open_store() as store:  # committed when noted
        assert await store.index.evicted_ids(CHAT) == {2, 3, 4}


@pytest.mark.anyio
async def test_cleanups_keep_their_times_to_the_microsecond_in_utc(open_store: Opener) -> None:
    from memory.types import CleanupRecord

    aware = datetime(2024, 3, 1, 15, 4, 5, 123457, tzinfo=timezone(timedelta(hours=3)))
    naive = datetime(2024, 3, 2, 1, 2, 3, 999999)  # taken as UTC
    async with open_store() as store:
        await store.index.record_cleanup(CleanupRecord(CHAT, naive, "chat", CHAT, "pro", "memory_limit", 10, 0, 1))
        await store.index.record_cleanup(CleanupRecord(CHAT, aware, "chat", CHAT, "free", "memory_limit", 10, 0, 2))
        got = await store.index.cleanups(CHAT)
        assert [(r.tier, r.at) for r in got] == [("free", aware), ("pro", naive.replace(tzinfo=UTC))]  # oldest first
        assert all(r.at.tzinfo is not None and r.at.utcoffset() == timedelta(0) for r in got)
        assert got[0].at.microsecond == 123457 and got[1].at.microsecond == 999999
        assert await store.index.cleanups(OTHER) == []
