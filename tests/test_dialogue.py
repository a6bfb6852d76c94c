"""DialogueStore on real DuckDB files in tmp_path (and real #ubuntu IRC data)."""
from __future__ import annotations

import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import duckdb
import pytest

from memory.dialogue import ChatInfo, DialogueStore
from memory.errors import MemoryStoreError, StoreLocked
from memory.schema import SCHEMA_VERSION
from memory.transcripts import read_transcript
from memory.types import ROLE_ASSISTANT, MemoryHit, StoredMessage, UsageRecord

ROOT = Path(__file__).resolve().parents[1]
IRC = ROOT.parent / "shared" / "data" / "ubuntu-irc"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
CHAT = -1001234567890
OTHER = -1009876543210


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "kith.duckdb"


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


# ---------------------------------------------------------------- idempotency, read-your-writes


@pytest.mark.anyio
async def test_same_messages_twice_are_stored_once_first_write_wins(db: Path) -> None:
    async with DialogueStore(db) as store:
        store.add_many(msg(i) for i in range(50))
        await store.flush()
        # re-delivered (with other text: first write wins), across batches and inside one batch
        store.add_many(msg(i, text="changed") for i in range(50))
        store.add(msg(60))
        store.add(msg(60, text="dup in same batch"))
        assert await store.count_messages(CHAT) == 51
        got = await store.get_messages(CHAT, [0, 49, 60])
        assert [m.text for m in got] == ["message 0", "message 49", "message 60"]


@pytest.mark.anyio
async def test_reads_see_queued_writes_without_explicit_flush(db: Path) -> None:
    # a long flush interval proves the read itself forces the commit
    async with DialogueStore(db, flush_interval_s=30.0) as store:
        store.add(msg(1))
        with anyio.fail_after(5):
            assert [m.message_id for m in await store.recent(CHAT, 10)] == [1]
            store.add(msg(2))
            assert await store.max_message_id(CHAT) == 2
            store.add(msg(3, user=7))
            assert await store.count_messages(user_id=7) == 1


@pytest.mark.anyio
async def test_shutdown_flushes_queued_rows(db: Path) -> None:
    async with DialogueStore(db, flush_interval_s=30.0) as store:
        store.add_many(msg(i) for i in range(10))
        store.record_usage(UsageRecord(T0, CHAT, 1, "chat", "fast", 10, 5, None, 12.5))
    async with DialogueStore(db) as store:
        assert await store.count_messages() == 10
        assert len(await store.usage_rows()) == 1


# ---------------------------------------------------------------- reads


@pytest.mark.anyio
async def test_recent_orders_oldest_to_newest_and_filters_thread_and_before(db: Path) -> None:
    async with DialogueStore(db) as store:
        # inserted out of order, threads 10/20 interleaved, plus another chat
        store.add_many(msg(i, thread=10 if i % 2 else 20) for i in reversed(range(1, 31)))
        store.add_many(msg(i, chat=OTHER) for i in range(100, 110))
        assert [m.message_id for m in await store.recent(CHAT, 5)] == [26, 27, 28, 29, 30]
        assert [m.message_id for m in await store.recent(CHAT, 3, thread_id=10)] == [25, 27, 29]
        assert [m.message_id for m in await store.recent(CHAT, 3, before_id=10)] == [7, 8, 9]
        assert [m.message_id for m in await store.recent(CHAT, 2, thread_id=20, before_id=10)] == [6, 8]
        assert len(await store.recent(CHAT, 1000)) == 30
        assert await store.recent(CHAT, 0) == []
        assert await store.recent(12345, 10) == []
        assert all(m.chat_id == OTHER for m in await store.recent(OTHER, 100))


@pytest.mark.anyio
async def test_around_returns_neighbours_by_message_id_within_the_chat(db: Path) -> None:
    async with DialogueStore(db) as store:
        ids = [1, 2, 5, 9, 10, 11, 20]  # gaps, as in a private chat
        store.add_many(msg(i) for i in ids)
        store.add_many(msg(i, chat=OTHER) for i in range(30))  # must not leak in
        ctx = await store.around(CHAT, [5, 20, 1, 7], before=2, after=1)
        assert {k: [m.message_id for m in v] for k, v in ctx.items()} == {
            1: [1, 2],
            5: [1, 2, 5, 9],
            20: [10, 11, 20],
        }  # 7 is not stored: absent
        assert all(m.chat_id == CHAT for v in ctx.values() for m in v)
        assert await store.around(CHAT, [], 3, 3) == {}
        only = await store.around(CHAT, [10], 0, 0)
        assert [m.message_id for m in only[10]] == [10]


@pytest.mark.anyio
async def test_get_messages_count_max_and_iter(db: Path) -> None:
    async with DialogueStore(db) as store:
        assert await store.max_message_id(CHAT) is None
        store.add_many(msg(i, user=i % 3) for i in range(1, 101))
        store.add_many(msg(i, chat=OTHER) for i in range(1, 21))
        got = await store.get_messages(CHAT, [50, 3, 999, 3])
        assert [m.message_id for m in got] == [3, 50]
        assert await store.max_message_id(CHAT) == 100
        assert await store.count_messages() == 120
        assert await store.count_messages(CHAT) == 100
        assert await store.count_messages(CHAT, user_id=0) == 33
        pages = [p async for p in store.iter_messages(batch=32)]
        assert [len(p) for p in pages] == [32, 32, 32, 24]
        keys = [(m.chat_id, m.message_id) for p in pages for m in p]
        assert keys == sorted(keys) and len(set(keys)) == 120
        one = [m for p in [p async for p in store.iter_messages(OTHER, batch=7)] for m in p]
        assert [m.message_id for m in one] == list(range(1, 21))


# ---------------------------------------------------------------- delete


@pytest.mark.anyio
async def test_delete_by_user_and_ids_removes_only_those_and_their_recalls(db: Path) -> None:
    async with DialogueStore(db) as store:
        store.add_many(msg(i, user=1 if i % 2 else 2) for i in range(1, 21))
        store.add_many(msg(i, chat=OTHER, user=1) for i in range(1, 21))
        bot_reply = msg(21, user=999, role=ROLE_ASSISTANT)
        store.add(bot_reply)
        hits = [MemoryHit(CHAT, 3, 1, "user1", "message 3", T0, 0.9), MemoryHit(CHAT, 4, 2, "user2", "message 4", T0, 0.5)]
        store.record_recall(CHAT, 21, hits)

        deleted = await store.delete_messages(CHAT, user_id=1)
        assert deleted == list(range(1, 21, 2))
        assert await store.count_messages(CHAT) == 11  # user 2's ten and the reply
        assert await store.count_messages(OTHER) == 20  # other chat untouched
        assert await store.recalls_for(CHAT, 21) == [(4, 0.5)]

        assert await store.delete_messages(CHAT, user_id=2, message_ids=[2, 4, 5]) == [2, 4]
        assert await store.delete_messages(CHAT, message_ids=[]) == []
        assert await store.recalls_for(CHAT, 21) == []
        assert len(await store.delete_messages(CHAT)) == 9  # everything left in the chat
        assert await store.count_messages(CHAT) == 0


# ---------------------------------------------------------------- chats, users, settings


@pytest.mark.anyio
async def test_chat_and_user_settings_round_trip(db: Path) -> None:
    async with DialogueStore(db) as store:
        assert await store.chat_settings(CHAT) == {}
        assert await store.user_settings(42) == {}
        await store.upsert_chat(CHAT, "supergroup", "Ubuntu help")
        settings = {"persona": "Ты — помощник 🤖", "keywords": ["kith", "бот"], "always_on": False, "n": 3, "nested": {"a": None}}
        await store.set_chat_settings(CHAT, settings)
        await store.upsert_chat(CHAT, "supergroup", None)  # keeps title and settings
        assert await store.chat_settings(CHAT) == settings
        await store.set_user_settings(42, {"model": "fast", "role": "pirate"}, username="alice", name="Alice")
        await store.set_user_settings(42, {"model": "smart"})  # username/name kept
        assert await store.user_settings(42) == {"model": "smart"}
        await store.set_chat_settings(OTHER, {"x": 1})  # creates an 'unknown' chat row
        with pytest.raises(TypeError):
            await store.set_chat_settings(CHAT, ["not", "a", "dict"])  # type: ignore[arg-type]
        store.add_many(msg(i) for i in range(5))
        store.add(msg(1, chat=555))
        chats = {c.chat_id: c for c in await store.chats()}
        assert chats[CHAT] == ChatInfo(CHAT, "supergroup", "Ubuntu help", 5, T0, T0 + timedelta(seconds=4))
        assert chats[OTHER].type == "unknown" and chats[OTHER].messages == 0 and chats[OTHER].first_date is None
        assert chats[555].messages == 1 and chats[555].title is None
    async with DialogueStore(db) as store:
        assert await store.user_settings(42) == {"model": "smart"}
        stats = await store.stats()
        assert stats["users"] == 1 and stats["chats"] == 2



@pytest.mark.anyio
async def test_directory_of_chats_and_users_survives_restart_and_renames(db: Path) -> None:
    async with DialogueStore(db) as store:
        await store.upsert_chat(CHAT, "group", "Old name")
        await store.upsert_chat(CHAT, "supergroup", "New name")  # same batch: merged into one row
        await store.upsert_chat(CHAT, "supergroup", None)
        await store.set_chat_settings(CHAT, {"always_on": True})
        await store.set_user_settings(7, {"model": "smart"})
        await store.set_user_settings(8, {"model": "fast"})
        await store.set_user_settings(8, {})  # cleared
        store.add(msg(1))
    async with DialogueStore(db) as store:
        assert await store.chat_settings(CHAT) == {"always_on": True}
        assert await store.user_settings(7) == {"model": "smart"}
        assert await store.user_settings(8) == {}
        assert [m.message_id for m in await store.recent(CHAT, 5)] == [1]
        info = {c.chat_id: c for c in await store.chats()}[CHAT]
        assert (info.type, info.title, info.messages) == ("supergroup", "New name", 1)


@pytest.mark.anyio
async def test_a_read_of_one_chat_does_not_wait_for_another_chats_queued_rows(db: Path) -> None:
    async with DialogueStore(db, flush_interval_s=3600) as store:  # the writer only commits when asked
        store.add(msg(1))
        await store.flush()
        store.add_many(msg(i, chat=OTHER) for i in range(10))
        with anyio.fail_after(5):
            assert [m.message_id for m in await store.recent(CHAT, 5)] == [1]
            assert await store.recent(555, 5) == []  # a chat never seen: no query at all
        assert store.pending == 10  # nobody flushed OTHER's rows for those reads
        store.add(msg(2))
        with anyio.fail_after(5):  # but this chat's own queued row is read back (read-your-writes)
            assert [m.message_id for m in await store.recent(CHAT, 5)] == [1, 2]
            assert [m.message_id for m in await store.recent(OTHER, 3)] == [7, 8, 9]
        assert store.pending == 0

# ---------------------------------------------------------------- usage, recalls


@pytest.mark.anyio
async def test_usage_rows_round_trip_with_unknown_cost(db: Path) -> None:
    recs = [
        UsageRecord(T0, CHAT, 1, "chat", "fast", 1200, 300, 0.00042, 812.5),
        UsageRecord(T0 + timedelta(hours=1), CHAT, 2, "image", "dalle", 0, 0, None, 5000.0),
        UsageRecord(T0 + timedelta(days=1), 77, 77, "transcription", "whisper", 0, 0, 0.0, 90.25),
    ]
    async with DialogueStore(db) as store:
        for r in reversed(recs):
            store.record_usage(r)
        assert await store.usage_rows() == recs
        assert await store.usage_rows(since=T0 + timedelta(minutes=30)) == recs[1:]
        rows = await store.usage_rows()
        assert rows[1].cost_usd is None and rows[2].cost_usd == 0.0
        assert all(r.ts.tzinfo is not None and r.ts.utcoffset() == timedelta(0) for r in rows)


@pytest.mark.anyio
async def test_recalls_round_trip_and_never_cross_chats(db: Path) -> None:
    async with DialogueStore(db) as store:
        hits = [MemoryHit(CHAT, i, 1, "u", "t", T0, s, parts={"rrf": s}) for i, s in [(3, 0.2), (7, 0.9), (5, 0.5)]]
        store.record_recall(CHAT, 100, hits)
        store.record_recall(CHAT, 100, hits[:1])  # recorded twice: kept once
        assert await store.recalls_for(CHAT, 100) == [(7, 0.9), (5, 0.5), (3, 0.2)]
        assert await store.recalls_for(OTHER, 100) == []
        with pytest.raises(ValueError):
            store.record_recall(OTHER, 1, hits)


# ---------------------------------------------------------------- text and time fidelity


@pytest.mark.anyio
async def test_texts_round_trip_exactly(db: Path) -> None:
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
    async with DialogueStore(db) as store:
        store.add_many(msg(i, text=t) for i, t in texts.items())
        store.add(StoredMessage(CHAT, 9, 5, "Ёжик 🦔 مستخدم", "hi", T0))
    async with DialogueStore(db) as store:
        got = {m.message_id: m for m in await store.get_messages(CHAT, list(range(1, 10)))}
        assert {i: got[i].text for i in texts} == texts
        assert got[9].user_name == "Ёжик 🦔 مستخدم"


@pytest.mark.anyio
async def test_dates_are_returned_as_utc_instants(db: Path) -> None:
    tokyo = timezone(timedelta(hours=9))
    async with DialogueStore(db) as store:
        store.add(StoredMessage(CHAT, 1, 1, "a", "t", datetime(2024, 3, 1, 21, 0, 0, 123456, tzinfo=tokyo)))
        store.add(StoredMessage(CHAT, 2, 1, "a", "t", datetime(2024, 3, 1, 12, 0)))  # naive = UTC
        a, b = await store.get_messages(CHAT, [1, 2])
        assert a.date == datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC) and a.date.utcoffset() == timedelta(0)
        assert b.date == datetime(2024, 3, 1, 12, 0, tzinfo=UTC) and b.date.tzinfo is not None


# ---------------------------------------------------------------- batching and failure handling


@pytest.mark.anyio
async def test_many_rows_are_committed_in_few_commits(db: Path) -> None:
    # a commit happens at flush_rows queued rows (or after flush_interval_s, made long here so the
    # bound does not depend on machine load): 10,000 single adds → about 5 commits, not 10,000
    async with DialogueStore(db, flush_rows=2000, flush_interval_s=2.0) as store:
        for i in range(10_000):  # one add per message, like live traffic, yielding now and then
            store.add(msg(i, user=i % 50))
            if i % 500 == 0:
                await anyio.sleep(0)
        await store.flush()
        assert await store.count_messages() == 10_000
        assert 1 <= store.commits <= 8, store.commits
        store.add_many(msg(i) for i in range(10_000, 60_000))
        before = store.commits
        await store.flush()
        assert store.commits - before <= 2
        assert (await store.stats())["messages"] == 60_000


@pytest.mark.anyio
async def test_a_bad_row_is_dropped_alone_and_the_batch_survives(db: Path, caplog) -> None:
    async with DialogueStore(db) as store:
        store.add_many(msg(i) for i in range(100))
        store.add(StoredMessage(CHAT, 2**70, 1, "u", "t", T0))  # beyond BIGINT: can never be stored
        store.add(msg(100, text="lone surrogate \ud800"))  # not valid UTF-8
        store.add_many(msg(i) for i in range(101, 200))
        store.record_usage(UsageRecord(T0, CHAT, 1, "chat", "fast", 1, 1, None, 1.0))
        await store.flush()
        assert await store.count_messages() == 199
        assert store.dropped_rows == 2
        assert len(await store.usage_rows()) == 1
    assert any("dropped" in r.message for r in caplog.records)


@pytest.mark.anyio
async def test_closed_store_refuses_writes(db: Path) -> None:
    store = DialogueStore(db)
    with pytest.raises(MemoryStoreError):
        store.add(msg(1))
    async with store:
        store.add(msg(1))
    with pytest.raises(MemoryStoreError):
        store.add(msg(2))
    with pytest.raises(MemoryStoreError):
        await store.recent(CHAT, 1)


@pytest.mark.anyio
async def test_an_error_in_the_body_propagates_unwrapped_after_flushing(db: Path) -> None:
    with pytest.raises(KeyError):
        async with DialogueStore(db, flush_interval_s=30.0) as store:
            store.add(msg(1))
            raise KeyError("boom")
    async with DialogueStore(db) as store:
        assert await store.count_messages() == 1


@pytest.mark.anyio
async def test_outside_cancellation_still_commits_queued_rows(db: Path) -> None:
    async def bot(task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with DialogueStore(db, flush_interval_s=30.0) as store:
            store.add_many(msg(i) for i in range(100))
            task_status.started()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        await tg.start(bot)
        tg.cancel_scope.cancel()
    async with DialogueStore(db) as store:
        assert await store.count_messages() == 100


@pytest.mark.anyio
async def test_database_failure_keeps_rows_queued_then_dumps_them_at_shutdown(db: Path, monkeypatch) -> None:
    async with DialogueStore(db) as store:
        real = store._write_sync
        failing = True

        def flaky(batch):
            if failing:
                raise duckdb.IOException("disk full (simulated)")
            return real(batch)

        monkeypatch.setattr(store, "_write_sync", flaky)
        store.add_many(msg(i) for i in range(10))
        with pytest.raises(MemoryStoreError, match="kept queued"):
            await store.flush()
        assert store.pending == 10
        failing = False
        with anyio.fail_after(10):
            await store.flush()  # retried: nothing lost
        assert await store.count_messages() == 10

        failing = True
        store.add_many(msg(i, text="late ✓") for i in range(10, 15))
        store.record_usage(UsageRecord(T0, CHAT, 1, "chat", "fast", 1, 2, None, 3.0))
    dumps = sorted(db.parent.glob("kith.duckdb.unsaved-*"))
    assert [p.name.endswith(".other.jsonl") for p in dumps] == [False, True]
    reader = read_transcript(dumps[0])  # the dump is an importable transcript
    back = list(reader)
    assert back == [msg(i, text="late ✓") for i in range(10, 15)]


# ---------------------------------------------------------------- files, locking, schema


@pytest.mark.anyio
async def test_restart_keeps_everything_and_schema_version_is_recorded(db: Path) -> None:
    async with DialogueStore(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        store.add_many(msg(i, thread=i % 3) for i in range(1000))
        store.record_usage(UsageRecord(T0, CHAT, 1, "chat", "fast", 5, 6, 0.5, 7.0))
        store.record_recall(CHAT, 999, [MemoryHit(CHAT, 10, 1, "u", "t", T0, 0.3)])
        await store.upsert_chat(CHAT, "supergroup", "T")
        await store.set_user_settings(1, {"a": 1}, username="u1")
        before = await store.stats()
        before_recent = await store.recent(CHAT, 20, thread_id=1)
    async with DialogueStore(db) as store:
        after = await store.stats()
        for key in ("chats", "users", "messages", "usage", "recalls"):
            assert after[key] == before[key]
        assert after["file_bytes"] > 0 and after["schema_version"] == SCHEMA_VERSION
        assert await store.recent(CHAT, 20, thread_id=1) == before_recent
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    finally:
        con.close()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # applied once, not per open


@pytest.mark.anyio
async def test_newer_schema_is_refused(db: Path) -> None:
    async with DialogueStore(db):
        pass
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 1])
    con.close()
    with pytest.raises(MemoryStoreError, match="newer"):
        async with DialogueStore(db):
            pass


@pytest.mark.anyio
async def test_second_process_gets_store_locked(db: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, anyio
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from memory.dialogue import DialogueStore
        from memory.errors import StoreLocked

        async def main():
            try:
                async with DialogueStore(Path({str(db)!r})):
                    print("OPENED")
            except StoreLocked as exc:
                print("LOCKED:", exc)

        anyio.run(main)
        """
    )
    async with DialogueStore(db) as store:
        store.add(msg(1))
        await store.flush()
        proc = await anyio.run_process([sys.executable, "-c", script], check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 0, proc.stderr.decode()
        assert out.startswith("LOCKED:"), out
        assert "running Kith bot" in out
        assert await store.count_messages() == 1  # the owner is unaffected
    assert issubclass(StoreLocked, MemoryStoreError)


@pytest.mark.anyio
async def test_second_store_on_the_same_file_in_one_process_is_refused(db: Path) -> None:
    async with DialogueStore(db):
        with pytest.raises(StoreLocked):
            async with DialogueStore(db.parent / "." / db.name):
                pass
    async with DialogueStore(db):  # released on close
        pass


# ---------------------------------------------------------------- real data


@pytest.mark.anyio
async def test_real_irc_transcript_round_trips_through_the_store(db: Path) -> None:
    path = IRC / "2009-03-03_10.jsonl"
    reader = read_transcript(path)
    msgs = list(reader)
    assert all(isinstance(m, StoredMessage) for m in msgs)
    async with DialogueStore(db) as store:
        for meta in reader.chats.values():
            await store.upsert_chat(meta.chat_id, meta.type, meta.title)
        store.add_many(msgs)
        store.add_many(msgs)  # a second import changes nothing
        (chat,) = await store.chats()
        assert chat.messages == len(msgs) == 1226 and chat.title == "#ubuntu 2009-03-03_10"
        last = await store.recent(chat.chat_id, 5)
        assert [m.message_id for m in last] == [m.message_id for m in sorted(msgs, key=lambda m: m.message_id)[-5:]]
        by_id = {m.message_id: m for m in msgs}
        assert all(by_id[m.message_id] == m for m in last)
        nick = msgs[0].user_id
        assert await store.count_messages(chat.chat_id, user_id=nick) == sum(m.user_id == nick for m in msgs)
