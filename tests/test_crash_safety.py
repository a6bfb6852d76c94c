"""Nothing stored is left unrecallable, nothing is answered twice, across crashes:

- a reply's delivery is in the store's reserve (a ``kill -9`` keeps it; no database round trip)
  before its first byte leaves, and committed with the reply itself before the chat's next update
  is handled; a reply sent and queued but never committed (a ``kill -9``, a full
  disk) is kept in the store's reserve and stored at the next start, with its usage row;
- at start-up the gap between DuckDB and LanceDB (stored messages never embedded, memories of
  deleted messages) is found and repaired in the background, without undoing the capacity
  cleanup's evictions;
- ``kith memory reindex`` builds beside the old table and switches, so an interruption loses nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import duckdb
import pytest

from actors.events import Incoming, Sender
from actors.runtime import open_memory
from config.models import AutoCleanup, Config, Settings, StorageLimits, TiersConfig
from features.app import open_runtime
from memory.batch import Batch, save_unsaved
from memory.cleanup import cleanup_scope
from memory.duckdb_store import DuckDBStore
from memory.errors import DiskFull, MemoryStoreError
from memory.maintenance import find_gaps, reindex
from memory.reserve import Journal
from memory.types import DOC_ID_BASE, StoredMessage, UsageRecord
from memory.vector_rows import TABLE, current_table
from memory.vectors import VectorMemory
from memory.write_behind import WriteBehind
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

CFG = Config(settings=Settings(), tiers=TiersConfig())
CHAT, OTHER = -100123, -100456
T0 = datetime(2024, 1, 1, tzinfo=UTC)
FACTS = [
    "the staging database password rotates every friday",
    "Anna's laptop runs Ubuntu 22.04 with an nvidia card",
    "the backup job writes to /srv/backup at 3 am",
    "Boris prefers vim over emacs for config files",
    "the office wifi is called kith-guest",
    "the printer on floor two jams with thick paper",
]


def msgs(chat_id: int, n: int, start: int = 1) -> list[StoredMessage]:
    return [StoredMessage(chat_id, start + i, 7 + i % 2, "Anna" if i % 2 == 0 else "Boris",
                          f"{FACTS[i % len(FACTS)]} (note {start + i})", T0 + timedelta(minutes=start + i)) for i in range(n)]


async def seed(tmp_path: Path, st_model) -> None:
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        memory.remember_many(msgs(CHAT, 30))
        memory.remember_many(msgs(OTHER, 10))
        await memory.flush()


# ---------------------------------------------------------------- replies


class _Watching(LocalOutbox):
    """Records, at the moment each reply's first byte would leave, what the store has committed."""

    store = None
    seen: list[tuple[set[int], int]]
    in_reserve: list[list[int]]

    async def on_progress(self, chat_id: int, delta: str) -> None:
        # what a kill -9 now would leave for the next open: the reserve (read before answered_ids commits it)
        self.in_reserve.append([d[1] for d in Journal(self.store.reserve.path).recover()[0].deliveries])
        self.seen.append((await self.store.messages.answered_ids(chat_id), self.store.pending))

    async def on_message(self, msg, streamed_rest) -> None:
        self.seen.append((await self.store.messages.answered_ids(msg.chat_id), self.store.pending))


async def test_the_delivery_is_durable_before_the_reply_leaves_and_the_reply_before_the_next_update(tmp_path, st_model):
    holder = {}

    def make(memory):
        box = holder["box"] = _Watching(IdAllocator(memory.store.messages.max_id))
        box.store, box.seen, box.in_reserve = memory.store, [], []
        return box

    durable_after_turn = []

    def after_turn(r) -> None:
        store = holder["box"].store
        durable_after_turn.append(store.pending == 0 or store._queue.journaled)

    async with open_runtime(CFG, tmp_path, make, model=st_model, on_turn=after_turn) as rt:
        ev = Incoming(42, "private", 7, Sender(42, "Ann"), "hello, what do you remember?", datetime.now(UTC))
        await rt.supervisor.tell(42, ev)
        await rt.supervisor.wait_all_idle()
        stored = await rt.memory.store.messages.recent(42, 10)
    box = holder["box"]
    assert box.sent and box.seen
    answered_at_first_byte, pending_at_first_byte = box.seen[0]
    assert box.in_reserve[0] == [7]  # durable before anything was sent, without a commit
    assert 7 in answered_at_first_byte  # ... and read back as answered
    assert pending_at_first_byte == 0  # ... and the question itself is committed too
    assert durable_after_turn == [True]  # the reply, its usage and recalls: in the reserve (or committed) when the turn ends
    assert [m.role for m in stored] == ["user", "assistant"]


async def test_a_delivery_noted_without_a_stored_reply_is_not_answered_again(tmp_path, st_model):
    # the crash window after the delivery was noted and before the reply was committed
    ev = Incoming(42, "private", 7, Sender(42, "Ann"), "hello there?", datetime.now(UTC))
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        memory.remember(StoredMessage(42, 7, 42, "Ann", ev.text, ev.date))
        await memory.store.note_delivery(42, 7)
    holder = {}

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["box"]

    async with open_runtime(CFG, tmp_path, make, model=st_model) as rt:
        await rt.supervisor.tell(42, ev)
        await rt.supervisor.wait_all_idle()
    assert holder["box"].sent == []


ROOT = Path(__file__).resolve().parents[1]

# The chat actor answers one question, with the real runtime, and the process is killed in the
# commit of the reply: after the delivery was noted and the reply sent, before the reply, its
# usage and its recalls are stored.
KILLED_IN_THE_REPLYS_COMMIT = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path

import anyio

from actors.events import Incoming, Sender
from transports.local import IdAllocator, LocalOutbox
from features.app import open_runtime
from config.models import Config, Settings, TiersConfig
from memory.duckdb_store import DuckDBStore
from memory.types import StoredMessage
from providers.embedder import load_model

real = DuckDBStore._write_sync


def killed_before_the_reply(self, batch, **kw):
    if any(m.role == "assistant" for m in batch.messages):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, batch, **kw)


DuckDBStore._write_sync = killed_before_the_reply


class Shown(LocalOutbox):
    async def on_message(self, msg, streamed_rest):
        print(f"SENT {msg.message_id} {msg.text!r}", flush=True)


async def main():
    cfg = Config(settings=Settings(), tiers=TiersConfig())
    async with open_runtime(cfg, Path(sys.argv[1]), lambda m: Shown(IdAllocator(m.store.messages.max_id)),
                            model=load_model()) as rt:
        rt.memory.remember(StoredMessage(42, 5, 42, "Ann", "the spare key is under the blue flower pot",
                                         datetime(2024, 1, 1, tzinfo=UTC)))
        await rt.memory.flush()
        await rt.supervisor.tell(42, Incoming(42, "private", 7, Sender(42, "Ann"), "where is the spare key?",
                                              datetime.now(UTC)))
        await rt.supervisor.wait_all_idle()
    print("NOT KILLED", flush=True)


anyio.run(main)
"""


async def test_a_reply_sent_but_killed_before_its_commit_is_stored_with_its_usage_at_the_next_start(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_IN_THE_REPLYS_COMMIT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = await anyio.run_process([sys.executable, str(script), str(tmp_path / "data")], cwd=ROOT, env=env, check=False)
    out = r.stdout.decode()
    assert r.returncode == -9, out + r.stderr.decode()[-3000:]
    sent = [line for line in out.splitlines() if line.startswith("SENT ")]
    assert len(sent) == 1 and "blue flower pot" in sent[0]
    reply_id = int(sent[0].split()[1])
    db = tmp_path / "data" / "kith.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    committed = [r[0] for r in con.execute("SELECT message_id FROM deliveries WHERE chat_id = 42").fetchall()]
    kept = [d[1] for d in Journal(db.with_name("kith.duckdb.reserve")).recover()[0].deliveries]
    assert committed + kept == [7]  # committed before the reply, or in the reserve (killed in the same commit)
    assert con.execute("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchone() == (0,)  # the crash window
    con.close()

    async with DuckDBStore(db) as store:  # the next start: the open repairs it from the reserve
        assert store.recovered_rows >= 2
        reply = (await store.messages.get(42, [reply_id]))[0]
        assert reply.role == "assistant" and reply.reply_to == 7 and "blue flower pot" in reply.text
        assert [(u.chat_id, u.kind) for u in await store.usage.rows()] == [(42, "chat")]
        assert 7 in await store.messages.answered_ids(42)
    async with DuckDBStore(db) as store:  # stored once: a second start adds nothing
        assert store.recovered_rows == 0 and len(await store.usage.rows()) == 1


def _msg(i: int, role: str = "user", reply_to: int | None = None) -> StoredMessage:
    return StoredMessage(42, i, 42 if role == "user" else 1, "Ann" if role == "user" else "Kith", f"message {i} ✓",
                         T0 + timedelta(seconds=i), role=role, reply_to=reply_to)


def _usage(i: int) -> UsageRecord:
    return UsageRecord(T0 + timedelta(seconds=i), 42, 42, "chat", "kith/recall", 10 + i, 20, None, 12.5 + i)


def test_the_reserve_reads_back_only_its_current_generation_after_the_last_commit(tmp_path):
    j = Journal(tmp_path / "r", size=64 * 1024, headroom=8 * 1024)
    j.start()
    assert j.append(j.encode("message", [_msg(i) for i in range(1, 41)], 1), sent=False)
    j.reset()  # everything committed: a new generation over the old one
    assert j.append(j.encode("message", [_msg(100)], 41), sent=False)
    assert j.append(j.encode("chat", [(42, "private", None, 0)], 42), sent=False)
    j.mark_done(42)  # both committed ...
    assert j.append(j.encode("message", [_msg(101, "assistant", 100)], 43), sent=True)
    assert j.append(j.encode("usage", [_usage(1)], 44), sent=True)
    assert j.append(j.encode("recall", [(42, 101, 100, 0.5)], 45), sent=True)
    j.close()
    kept, bad = Journal(tmp_path / "r").recover()  # ... the rest is what a crash would lose
    assert bad == 0 and kept.messages == [_msg(101, "assistant", 100)] and kept.usage == [_usage(1)]
    assert kept.recalls == [(42, 101, 100, 0.5)] and kept.chats == []
    # intake stops short of the headroom; the rows of what was sent may use it
    j = Journal(tmp_path / "r", size=64 * 1024, headroom=8 * 1024)
    j.start()
    row = j.encode("message", [_msg(1)], 1)
    while j.append(row, sent=False):
        pass
    assert j.used > 64 * 1024 - 8 * 1024 - len(row) and j.append(row, sent=True)
    j.close()


class _FullDisk:
    """A commit function of a database whose disk is full until ``freed``."""

    def __init__(self) -> None:
        self.freed = False
        self.saved: list[Batch] = []

    async def commit(self, batch: Batch) -> None:
        await anyio.sleep(0)
        if not self.freed:
            raise OSError(28, "No space left on device")
        batch.clear()

    @staticmethod
    def describe(exc: BaseException, pending: int) -> MemoryStoreError:
        return DiskFull(Path("/tmp/x"), 0, pending * 1024, unsaved=pending)


async def test_on_a_full_disk_intake_stops_but_replies_usage_and_recalls_are_kept_in_the_reserve(tmp_path):
    disk = _FullDisk()
    q = WriteBehind(disk.commit, describe_error=disk.describe, save_unsaved=disk.saved.append, flush_interval_s=0.01,
                    journal=Journal(tmp_path / "r"))
    async with anyio.create_task_group() as tg:
        q.start(tg)
        q.put_messages([_msg(1)])
        with pytest.raises(DiskFull):
            await q.flush()
        with pytest.raises(DiskFull):  # a new message is refused, not accepted and lost
            q.put_messages([_msg(3)])
        q.put_messages([_msg(2, "assistant", 1)])  # the reply to what was accepted was sent: kept
        q.put_usage(_usage(2))
        q.put_recalls([(42, 2, 1, 0.7)])
        await q.aclose()
    assert disk.saved == []  # nothing for a dump on the full disk: the reserve holds it all
    kept, _ = Journal(tmp_path / "r").recover()
    assert kept.messages == [_msg(1), _msg(2, "assistant", 1)] and kept.usage == [_usage(2)]
    assert kept.recalls == [(42, 2, 1, 0.7)]


async def test_an_unsaved_dump_is_stored_at_the_next_open_and_removed(tmp_path):
    db = tmp_path / "kith.duckdb"
    async with DuckDBStore(db) as store:
        store.add(_msg(1))
        store.record_usage(_usage(1))
        await store.flush()
    batch = Batch(messages=[_msg(1), _msg(2, "assistant", 1)], usage=[_usage(1), _usage(2)], recalls=[(42, 2, 1, 0.5)],
                  chats=[(42, "private", "Ann", 0)])
    save_unsaved(batch, tmp_path / "kith.duckdb.unsaved-20240101T000000")  # an older run's dump
    async with DuckDBStore(db) as store:
        assert [m.message_id for m in await store.messages.recent(42, 10)] == [1, 2]
        assert sorted(u.prompt_tokens for u in await store.usage.rows()) == [11, 12]  # the stored one not twice
        assert await store.usage.recalls_for(42, 2) == [(1, 0.5)]
        assert [c.title for c in await store.settings.chats()] == ["Ann"]
    assert not list(tmp_path.glob("*.unsaved-*"))


# ---------------------------------------------------------------- gaps between the stores


async def test_the_start_up_gap_check_embeds_what_a_crash_left_out_and_drops_deleted_messages_memories(tmp_path, st_model):
    await seed(tmp_path, st_model)
    # a crash: 12 stored messages never reached LanceDB; a deleted message's memory stayed behind
    async with VectorMemory(tmp_path / "memory") as vm:
        await vm.delete(CHAT, message_ids=list(range(5, 17)))
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        orphan = (await memory.store.messages.get(OTHER, [3]))[0]
        await memory.store.messages.delete(OTHER, message_ids=[3])  # DuckDB only, as if killed before LanceDB
        gaps = await find_gaps(memory)
        assert gaps.missing == {CHAT: set(range(5, 17))} and gaps.orphans == {OTHER: {3}}
        assert (await memory.recall(OTHER, orphan.text, 3)).hits[0].message_id == 3  # still recalled: a leak

    async with open_memory(CFG, tmp_path, model=st_model, fill_gaps=True) as memory:
        await memory.gap_filler.wait()
        assert memory.gap_filler.gaps.n_missing == 12 and memory.gap_filler.gaps.n_orphans == 1
        assert await memory.vectors.message_ids(CHAT) == set(range(1, 31))
        assert await memory.vectors.message_ids(OTHER) == set(range(1, 11)) - {3}
        hit = (await memory.recall(CHAT, "when does the backup job run", 5)).hits
        assert any("backup" in h.text for h in hit)
        assert (await find_gaps(memory)).n_missing == 0


async def test_the_gap_check_does_not_undo_the_capacity_cleanups_evictions(tmp_path, st_model):
    await seed(tmp_path, st_model)
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        res = await cleanup_scope(memory, "chat", CHAT, StorageLimits(memory_limit=20), AutoCleanup(keep_percentage=50, min_age_days=0),
                                  datetime.now(UTC))
        assert res.memories == 20 and res.messages == 0
        kept = await memory.vectors.message_ids(CHAT)
    async with open_memory(CFG, tmp_path, model=st_model, fill_gaps=True) as memory:
        await memory.gap_filler.wait()
        assert memory.gap_filler.gaps.n_missing == 0
        assert await memory.vectors.message_ids(CHAT) == kept == set(range(21, 31))
        assert await memory.store.messages.count(CHAT) == 30  # the history stays readable
        assert await reindex(memory) == 20  # a reindex keeps the evictions too
        assert await memory.vectors.message_ids(CHAT) == kept


async def test_a_gap_in_document_chunks_is_filled(tmp_path, st_model):
    from memory.importer import import_document

    doc = tmp_path / "notes.txt"
    doc.write_text("\n\n".join(f"Section {i}. " + FACTS[i % len(FACTS)] + ". " * 40 for i in range(12)), encoding="utf-8")
    async with open_memory(CFG, tmp_path / "d", model=st_model) as memory:
        info, _ = await import_document(memory, doc, chat_id=CHAT, user_id=7, user_name="Anna", message_id=1, date=T0)
        await memory.flush()
        ids = await memory.vectors.message_ids(CHAT)
        chunk_ids = sorted(i for i in ids if i >= DOC_ID_BASE)
        assert len(chunk_ids) == info.chunks > 1
        dropped = chunk_ids[: info.chunks // 2]
        await memory.vectors.delete(CHAT, message_ids=dropped)
    async with open_memory(CFG, tmp_path / "d", model=st_model, fill_gaps=True) as memory:
        await memory.gap_filler.wait()
        assert await memory.vectors.message_ids(CHAT) == ids


# ---------------------------------------------------------------- reindex beside


async def test_reindex_builds_beside_and_switches_and_an_interrupted_one_loses_nothing(tmp_path, st_model):
    await seed(tmp_path, st_model)
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        before = [h.message_id for h in (await memory.recall(CHAT, "which editor does Boris like", 5)).hits]
    # an interrupted reindex: a half-built table beside the current one, CURRENT not switched
    async with VectorMemory(tmp_path / "memory", table=f"{TABLE}_123") as half:
        assert await half.count() == 0
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        assert current_table(memory.vectors.location) == TABLE
        assert await memory.vectors.count() == 40  # the old memories, untouched
        import lancedb

        assert f"{TABLE}_123" not in lancedb.connect(str(tmp_path / "memory")).table_names()  # dropped at open
        assert await reindex(memory) == 40
        name = current_table(memory.vectors.location)
        assert name != TABLE and memory.vectors.table == name
        after = [h.message_id for h in (await memory.recall(CHAT, "which editor does Boris like", 5)).hits]
        assert after == before
        memory.remember(StoredMessage(CHAT, 99, 7, "Anna", "the coffee machine is on floor three", T0 + timedelta(days=1)))
        await memory.flush()
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        assert memory.vectors.table == name and await memory.vectors.count() == 41
        assert lancedb.connect(str(tmp_path / "memory")).table_names() == [name]  # the old table is gone


async def test_reindex_of_one_chat_re_embeds_in_place_and_drops_stale_rows(tmp_path, st_model):
    await seed(tmp_path, st_model)
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        await memory.store.messages.delete(CHAT, message_ids=[1, 2])  # DuckDB only
        await memory.vectors.delete(CHAT, message_ids=[10])
        assert await reindex(memory, chat_id=CHAT) == 28
        assert await memory.vectors.message_ids(CHAT) == set(range(3, 31))
        assert await memory.vectors.count(OTHER) == 10


# ---------------------------------------------------------------- group → supergroup


async def test_a_basic_groups_memory_moves_to_its_supergroup(tmp_path, st_model):
    from cryptography.fernet import Fernet

    from memory.importer import import_document
    from memory.types import MIGRATION_SHIFT, migrated_id
    from providers.keys import CHAT as KEY_CHAT
    from providers.keys import KeyVault, cipher_from_env
    from tiers.subscriptions import SubscriptionStore

    basic, sup = -4001, -1004001
    doc = tmp_path / "rota.txt"
    doc.write_text("The on-call rota is kept in the red binder on floor two.\n\n" + "Filler paragraph. " * 80, encoding="utf-8")
    async with open_memory(CFG, tmp_path / "d", model=st_model) as memory:
        old = msgs(basic, 12)
        old.append(StoredMessage(basic, 13, 1, "Kith", "noted", T0 + timedelta(hours=1), role="assistant", reply_to=12))
        memory.remember_many(old)
        await import_document(memory, doc, chat_id=basic, user_id=7, user_name="Anna", message_id=20, date=T0 + timedelta(hours=2))
        await memory.store.note_delivery(basic, 11)
        await memory.store.settings.set_chat(basic, {"persona": "a pirate", "context_from": 3})
        await memory.store.upsert_chat(basic, "group", "Ops")
        from config.loader import load_config

        subs = SubscriptionStore(memory.store, load_config().tiers, lambda: datetime.now(UTC))  # the shipped tiers
        await subs.grant("chat", basic, "premium", days=30, source="cli")
        vault = KeyVault(memory.store.keys, cipher_from_env({"KITH_SECRET_KEY": Fernet.generate_key().decode()}))
        await vault.set(KEY_CHAT, basic, "openai", "sk-group-0000")
        # the supergroup already has its own first messages (ids restart at 1)
        memory.remember_many([StoredMessage(sup, 1, 8, "Boris", "hello new supergroup", T0 + timedelta(days=1)),
                              StoredMessage(sup, 2, 7, "Anna", "hi again", T0 + timedelta(days=1, minutes=1))])
        await memory.flush()
        vectors_before = await memory.vectors.count(basic)

        assert await memory.migrate_chat(basic, sup) == 14
        assert await memory.migrate_chat(basic, sup) == 0  # a second delivery of the service message

        store = memory.store
        assert await store.messages.count(basic) == 0 and await memory.vectors.count(basic) == 0
        recent = await store.messages.recent(sup, 100)
        assert [m.message_id for m in recent][-2:] == [1, 2]  # the supergroup's own stay the newest
        assert recent[0].message_id == migrated_id(1) and recent[0].text == old[0].text
        reply = next(m for m in recent if m.role == "assistant")
        assert reply.reply_to == migrated_id(12)
        assert migrated_id(11) in await store.messages.answered_ids(sup) and migrated_id(12) in await store.messages.answered_ids(sup)
        assert await memory.vectors.count(sup) == vectors_before + 2
        hits = (await memory.recall(sup, "where is the on-call rota kept", 5)).hits
        assert any(h.source == "rota.txt" and "red binder" in h.text for h in hits)
        assert not (await memory.recall(basic, "where is the on-call rota kept", 5)).hits
        settings = await store.settings.chat(sup)
        assert settings == {"persona": "a pirate", "context_from": 3 - MIGRATION_SHIFT}
        subs.reload()
        assert (await subs.get("chat", sup)).tier == "premium" and await subs.get("chat", basic) is None
        assert await vault.keys_for(8, sup) == {"openai": "sk-group-0000"}
        assert [d.message_id for d in await store.documents.list(sup)] == [migrated_id(20)]
        assert (await find_gaps(memory)).n_missing == 0 and (await find_gaps(memory)).n_orphans == 0
        # /forget of a migrated file message still takes its chunks along
        await memory.forget_messages(sup, [migrated_id(20)])
        assert not any(h.source == "rota.txt" for h in (await memory.recall(sup, "on-call rota red binder", 5)).hits)
