"""Capacity cleanup, forgetting and reindex: both stores agree, boundaries hold (real stores + model)."""
from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from actors.events import Incoming, Sender
from actors.runtime import open_memory
from config.models import AutoCleanup, Config, Settings, StorageLimits, Tier, TierMemory, TiersConfig
from features.app import open_runtime
from memory.cleanup import cleanup_scope
from memory.importer import import_transcript
from memory.maintenance import compact, reindex
from memory.transcripts import read_transcript
from memory.types import StoredMessage
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
POLICY = AutoCleanup(keep_percentage=80, min_age_days=30)
TOPICS = ["grub bootloader", "wifi driver", "nvidia card", "apt sources", "samba share", "ssh keys", "disk partitions",
          "sound mixer", "printer setup", "kernel update", "firewall rules", "cron jobs", "python venv", "java runtime",
          "docker daemon", "vim config", "bash alias", "gnome panel", "usb stick", "locale settings"]


def cfg(**tier_kw) -> Config:
    tiers = TiersConfig(tiers={"free": Tier(**tier_kw)}, memory=TierMemory(auto_cleanup=AutoCleanup(keep_percentage=80, min_age_days=0)))
    return Config(settings=Settings(), tiers=tiers)


def msgs(chat_id: int, n: int, *, user_id: int = 1, days_old: float = 0, start: int = 1) -> list[StoredMessage]:
    """n messages, oldest first, the newest ``days_old`` days before NOW, an hour apart."""
    return [
        StoredMessage(chat_id, start + i, user_id, f"user{user_id}", f"my question about the {TOPICS[(start + i) % len(TOPICS)]} number {start + i}",
                      NOW - timedelta(days=days_old, hours=n - i))
        for i in range(n)
    ]


async def said(memory, path: Path) -> None:
    """A transcript's messages as if members had said them in the chat (not the host's import)."""
    msgs_ = [m for m in read_transcript(path) if isinstance(m, StoredMessage)]
    for cid in {m.chat_id for m in msgs_}:
        await memory.store.upsert_chat(cid, "supergroup", None)
    memory.remember_many(msgs_)
    await memory.flush()


async def agree(memory, chat_id: int) -> set[int]:
    stored = {m.message_id for b in [x async for x in memory.store.messages.iter(chat_id)] for m in b}
    assert await memory.vectors.message_ids(chat_id) <= stored
    return stored


async def test_cleanup_keeps_the_newest_share_and_never_younger_than_min_age(tmp_path, st_model):
    async with open_memory(cfg(), tmp_path, model=st_model) as memory:
        memory.remember_many(msgs(-1, 15, days_old=40))  # ids 1..15, old enough to go
        memory.remember_many(msgs(-1, 5, days_old=1, start=16))  # ids 16..20, too young to go
        await memory.flush()
        res = await cleanup_scope(memory, "chat", -1, StorageLimits(dialogue_limit=10), POLICY, NOW)
        assert res.messages == 12  # 20 − 80 % of 10
        stored = await agree(memory, -1)
        assert stored == set(range(13, 21))
        assert await memory.vectors.message_ids(-1) == stored

        memory.remember_many(msgs(-2, 20, days_old=1))  # all young: nothing may be deleted
        await memory.flush()
        res = await cleanup_scope(memory, "chat", -2, StorageLimits(dialogue_limit=10), POLICY, NOW)
        assert res.messages == 0 and await memory.store.messages.count(-2) == 20


async def test_a_check_within_limits_does_not_wait_for_the_indexer_but_one_over_them_does(tmp_path, st_model):
    async with open_memory(cfg(), tmp_path, model=st_model) as memory:
        memory.indexer.max_wait_s = 30  # the indexer holds a partial batch until someone flushes it
        memory.remember_many(msgs(-4, 20, days_old=40))
        await anyio.sleep(0.05)
        res = await cleanup_scope(memory, "chat", -4, StorageLimits(dialogue_limit=100, memory_limit=100), POLICY, NOW)
        assert (res.messages, res.memories) == (0, 0)
        assert memory.indexer.pending == 20  # the batch was not cut short: still filling
        # 0 memories in LanceDB + 20 queued for embedding (an upper bound) > 15: flush, count again, clean
        res = await cleanup_scope(memory, "chat", -4, StorageLimits(memory_limit=15), POLICY, NOW)
        assert memory.indexer.pending == 0 and (res.messages, res.memories) == (0, 8)  # 20 − 80 % of 15
        res = await cleanup_scope(memory, "chat", -4, StorageLimits(dialogue_limit=10), POLICY, NOW)
        assert res.messages == 12  # over the dialogue limit: cleaned as before


async def test_memory_limit_removes_oldest_memories_but_keeps_history(tmp_path, st_model):
    async with open_memory(cfg(), tmp_path, model=st_model) as memory:
        memory.remember_many(msgs(-3, 20, days_old=40))
        await memory.flush()
        res = await cleanup_scope(memory, "chat", -3, StorageLimits(memory_limit=10), POLICY, NOW)
        assert (res.messages, res.memories) == (0, 12)
        assert await memory.store.messages.count(-3) == 20
        assert await memory.vectors.message_ids(-3) == set(range(13, 21))
        hits = (await memory.recall(-3, "grub bootloader", 20)).hits
        assert all(h.message_id >= 13 for h in hits)


async def test_user_limit_counts_across_chats_and_leaves_others_alone(tmp_path, st_model):
    async with open_memory(cfg(), tmp_path, model=st_model) as memory:
        memory.remember_many(msgs(-4, 8, user_id=7, days_old=50))
        memory.remember_many(msgs(-5, 8, user_id=7, days_old=45, start=100))
        memory.remember_many(msgs(-5, 8, user_id=8, days_old=60, start=200))  # another member, older still
        await memory.flush()
        res = await cleanup_scope(memory, "user", 7, StorageLimits(dialogue_limit=10), POLICY, NOW)
        assert res.messages == 8  # 16 − 8
        assert await memory.store.messages.count(-4, user_id=7) == 0  # the oldest were all in chat -4
        assert await memory.store.messages.count(-5, user_id=7) == 8
        assert await memory.store.messages.count(-5, user_id=8) == 8
        await agree(memory, -4)
        await agree(memory, -5)


async def test_the_bot_cleans_up_in_the_background_as_a_chat_grows(tmp_path, st_model):
    config = cfg(chat=StorageLimits(dialogue_limit=10))
    async with open_runtime(config, tmp_path, lambda m: LocalOutbox(IdAllocator(m.store.messages.max_id)), model=st_model) as rt:
        for i in range(1, 16):
            ev = Incoming(-9, "supergroup", i, Sender(3, "ann"), f"note {i} about the {TOPICS[i]}", datetime.now(UTC))
            await rt.supervisor.tell(-9, ev)
        await rt.supervisor.wait_all_idle()
        await rt.services.janitor.wait_idle()
        assert await rt.memory.store.messages.count(-9) <= 10
        kept = await agree(rt.memory, -9)
        assert max(kept) == 15  # the newest survive


async def test_reindex_rebuilds_identical_results_and_isolation_holds(tmp_path, st_model):
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ubuntu-irc"
    queries = ["sound card driver", "which package has Python.h", "ext3 or ntfs", "smtp server", "compiz"]
    async with open_memory(cfg(), tmp_path, model=st_model) as memory:
        await said(memory, data / "2009-03-03_10.jsonl")  # said in the chats: the cleanup may take them
        await said(memory, data / "2016-12-19_20.jsonl")
        chats = [c.chat_id for c in await memory.store.settings.chats()]

        async def results():
            # the same memories come back; their order may differ only among equal texts (tied scores)
            return {(c, q): {h.message_id for h in (await memory.recall(c, q, 10)).hits} for c in chats for q in queries}

        await compact(memory)  # compare like with like: every row in the indexes (reindex ends compacted)
        before = await results()
        await reindex(memory)
        assert await results() == before  # LanceDB is derived data: rebuilt from DuckDB, same answers

        await cleanup_scope(memory, "chat", chats[0], StorageLimits(dialogue_limit=500), AutoCleanup(keep_percentage=80, min_age_days=0), NOW)
        assert await memory.store.messages.count(chats[0]) == 400
        stored0 = await agree(memory, chats[0])
        await compact(memory)
        after_cleanup = await results()
        await reindex(memory)
        assert await results() == after_cleanup
        assert await memory.vectors.message_ids(chats[0]) == {m for m in stored0} & await memory.vectors.message_ids(chats[0])
        for q in queries:
            for c in chats:
                assert all(h.chat_id == c for h in (await memory.recall(c, q, 25)).hits)
            assert {h.message_id for h in (await memory.recall(chats[0], q, 25)).hits} <= stored0


async def test_the_hosts_imports_are_neither_counted_nor_evicted_and_each_cleanup_is_logged(tmp_path, st_model):
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ubuntu-irc" / "2009-03-03_10.jsonl"
    async with open_memory(cfg(), tmp_path, model=st_model) as memory:
        await import_transcript(memory, data)
        chat = (await memory.store.settings.chats())[0].chat_id
        imported = await memory.store.messages.count(chat)
        embedded = await memory.vectors.count(chat)
        assert imported > 1000 and await memory.store.messages.count(chat, imported=True) == imported
        live = [replace(m, chat_id=chat, message_id=10_000_000 + m.message_id) for m in msgs(chat, 20, user_id=5, days_old=40)]
        memory.remember_many(live)
        await memory.flush()
        res = await cleanup_scope(memory, "chat", chat, StorageLimits(dialogue_limit=10, memory_limit=10), POLICY, NOW, tier="free")
        assert res.messages == 12  # 20 said in the chat − 80 % of 10; the import does not count
        assert await memory.store.messages.count(chat, imported=True) == imported  # … and is never removed
        assert await memory.vectors.count(chat) == embedded + 8
        logged = await memory.store.index.cleanups(chat)
        assert [(r.scope, r.tier, r.limit_name, r.limit, r.messages, r.memories) for r in logged] == [
            ("chat", "free", "dialogue_limit", 10, 12, 0)]
        assert await memory.store.index.cleanups(-12345) == []


async def test_a_cleanup_tells_the_chat_what_it_removed_why_and_how_to_keep_more(tmp_path, st_model):
    config = cfg(chat=StorageLimits(memory_limit=10))
    async with open_runtime(config, tmp_path, lambda m: LocalOutbox(IdAllocator(m.store.messages.max_id)), model=st_model) as rt:
        old = datetime.now(UTC) - timedelta(days=60)
        for i in range(1, 16):
            ev = Incoming(-9, "supergroup", i, Sender(3, "ann"), f"note {i} about the {TOPICS[i]}", old + timedelta(minutes=i))
            await rt.supervisor.tell(-9, ev)
        await rt.supervisor.wait_all_idle()
        await rt.services.janitor.wait_idle()
        await rt.supervisor.wait_all_idle()
        told = [m.text for m in rt.supervisor.outbox.sent if m.chat_id == -9 and "🧹" in m.text]
        assert len(told) == 1, told
        assert told[0].startswith("For the admins:") and "free tier keeps 10 memories per chat" in told[0]
        assert "/billing" in told[0]
        assert await rt.memory.store.messages.count(-9) == 15  # history stays; only recall went
        logged = await rt.memory.store.index.cleanups(-9)
        assert len(logged) == 1 and logged[0].memories == sum(r.memories for r in rt.services.janitor.results)


async def test_an_evicted_memory_never_comes_back_by_an_edit_a_replay_or_a_reimport(tmp_path, st_model):
    async with open_memory(cfg(), tmp_path, model=st_model) as memory:
        old = msgs(-3, 20, days_old=40)
        memory.remember_many(old)
        await memory.flush()
        await cleanup_scope(memory, "chat", -3, StorageLimits(memory_limit=10), POLICY, NOW)
        evicted = await memory.store.index.evicted_ids(-3)
        assert evicted == set(range(1, 13))

        async def found() -> set[int]:  # search right after: every mode, ids of evicted memories
            ids: set[int] = set()
            for mode in ("hybrid", "vector", "fts"):
                for q in ("grub bootloader", "wifi driver", "question about the nvidia card", "number 3"):
                    ids |= {h.message_id for h in (await memory.recall(-3, q, 25, mode=mode)).hits}
            return ids & evicted

        assert await found() == set()
        await memory.edit(-3, 3, "my question about the grub bootloader, edited")  # re-embeds unless evicted
        memory.remember_many(old[:5])  # the same messages again (a replay)
        await memory.flush()
        assert await found() == set()
        assert await memory.vectors.message_ids(-3) == set(range(13, 21))
        assert memory.indexer.dropped >= 6
