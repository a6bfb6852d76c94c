"""The delivery record before a reply's first byte is a row of the write-behind queue (issue #24,
``turn_overhead``): written to the store's reserve, no database round trip, committed with the
chat's messages; a ``kill -9`` before any commit finds it in the reserve at the next open, so the
message stays answered exactly once."""
from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import duckdb
import pytest

from memory.batch import Batch, load_unsaved, save_unsaved, unsaved_files
from memory.duckdb_store import DuckDBStore
from memory.errors import DiskFull, MemoryStoreError
from memory.reserve import Journal
from memory.types import StoredMessage
from memory.write_behind import WriteBehind

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 1, 1, tzinfo=UTC)
US = 1_704_067_200_000_000  # T0 in µs since epoch


def _msg(i: int, chat: int = 42, role: str = "user", reply_to: int | None = None) -> StoredMessage:
    return StoredMessage(chat, i, 42 if role == "user" else 1, "Ann" if role == "user" else "Kith", f"message {i} ✓",
                         T0 + timedelta(seconds=i), role=role, reply_to=reply_to)


def _deliveries(db: Path) -> list[tuple[int, int]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [tuple(r) for r in con.execute("SELECT chat_id, message_id FROM deliveries ORDER BY ALL").fetchall()]
    finally:
        con.close()


# ---------------------------------------------------------------- the queue and the reserve


class _Disk:
    """A commit function that counts commits and fails with ENOSPC until ``freed``."""

    def __init__(self, freed: bool = True) -> None:
        self.freed = freed
        self.committed: list[Batch] = []
        self.saved: list[Batch] = []

    async def commit(self, batch: Batch) -> None:
        await anyio.sleep(0)
        if not self.freed:
            raise OSError(28, "No space left on device")
        self.committed.append(Batch(messages=list(batch.messages), deliveries=list(batch.deliveries)))
        batch.clear()

    @staticmethod
    def describe(exc: BaseException, pending: int) -> MemoryStoreError:
        return DiskFull(Path("/tmp/x"), 0, pending * 1024, unsaved=pending)


async def test_a_delivery_is_in_the_reserve_when_put_returns_and_committed_with_the_chats_messages(tmp_path):
    disk = _Disk()
    q = WriteBehind(disk.commit, describe_error=disk.describe, save_unsaved=disk.saved.append, flush_interval_s=30,
                    journal=Journal(tmp_path / "r"))
    async with anyio.create_task_group() as tg:
        q.start(tg)
        q.put_messages([_msg(1)])
        assert q.put_delivery((42, 1, US)) is True  # in the reserve: durable against a kill -9 ...
        assert disk.committed == [] and q.pending == 2  # ... with no commit
        kept, bad = Journal(tmp_path / "r").recover()  # what a kill -9 now would leave
        assert bad == 0 and kept.messages == [_msg(1)] and kept.deliveries == [(42, 1, US)]
        await q.sync_chat(7, deliveries=True)  # another chat's read: no commit
        assert disk.committed == []
        await q.sync_chat(42)  # this chat's messages are queued: one commit, the delivery in it
        assert [(b.messages, b.deliveries) for b in disk.committed] == [([_msg(1)], [(42, 1, US)])]
        assert q.put_delivery((42, 2, US)) is True
        await q.sync_chat(42)  # no message of the chat queued: a read of messages does not commit
        assert len(disk.committed) == 1
        await q.sync_chat(42, deliveries=True)  # a read of deliveries does
        assert disk.committed[1].deliveries == [(42, 2, US)]
        await q.aclose()
    kept, _ = Journal(tmp_path / "r").recover()
    assert len(kept) == 0  # every row committed: the reserve holds nothing to store again


async def test_without_a_reserve_put_delivery_says_so(tmp_path):
    disk = _Disk()
    q = WriteBehind(disk.commit, describe_error=disk.describe, save_unsaved=disk.saved.append, flush_interval_s=30)
    async with anyio.create_task_group() as tg:
        q.start(tg)
        assert q.put_delivery((42, 1, US)) is False  # only queued: the store flushes before the first byte
        await q.aclose()
    assert disk.committed[0].deliveries == [(42, 1, US)]


async def test_on_a_full_disk_a_delivery_is_accepted_into_the_reserve_while_intake_is_refused(tmp_path):
    disk = _Disk(freed=False)
    q = WriteBehind(disk.commit, describe_error=disk.describe, save_unsaved=disk.saved.append, flush_interval_s=0.01,
                    journal=Journal(tmp_path / "r"))
    async with anyio.create_task_group() as tg:
        q.start(tg)
        q.put_messages([_msg(1)])
        with pytest.raises(DiskFull):
            await q.flush()
        with pytest.raises(DiskFull):
            q.put_messages([_msg(2)])  # intake: refused
        assert q.put_delivery((42, 1, US)) is True  # the reply to what was accepted is being sent: kept
        await q.aclose()
    assert disk.saved == []  # the reserve holds it all
    kept, _ = Journal(tmp_path / "r").recover()
    assert kept.messages == [_msg(1)] and kept.deliveries == [(42, 1, US)]


def test_deliveries_round_trip_through_an_unsaved_dump(tmp_path):
    batch = Batch(messages=[_msg(1)], deliveries=[(42, 1, US), (-100, 5, US + 1)])
    save_unsaved(batch, tmp_path / "kith.duckdb.unsaved-20240101T000000")
    [(_, files)] = list(unsaved_files(tmp_path, "kith.duckdb"))
    back, bad = load_unsaved(files)
    assert bad == [] and back.messages == [_msg(1)] and back.deliveries == [(42, 1, US), (-100, 5, US + 1)]


# ---------------------------------------------------------------- the DuckDB store


async def test_note_delivery_writes_the_reserve_not_the_database_and_answered_ids_sees_it(tmp_path):
    db = tmp_path / "kith.duckdb"
    async with DuckDBStore(db, flush_interval_s=30) as store:
        store.add(_msg(1))
        await store.flush()
        commits = store.commits
        store.add(_msg(2))
        await store.note_delivery(42, 2)
        await store.note_delivery(42, 2)  # twice (a retry): stored once
        assert store.commits == commits and store.pending == 3  # no database round trip
        assert await store.messages.answered_ids(42) == {2}  # a read of deliveries commits them first
        assert store.commits == commits + 1 and store.pending == 0
        await store.note_delivery(-100, 9)  # a chat with no stored message yet
        assert await store.messages.answered_ids(-100) == {9}
    assert _deliveries(db) == [(-100, 9), (42, 2)]


async def test_without_the_reserve_note_delivery_commits_before_it_returns(tmp_path):
    db = tmp_path / "kith.duckdb"
    store = DuckDBStore(db, flush_interval_s=30)
    store._queue.journal = None  # a reserve that could not be made (an unwritable directory, say)
    async with store:
        store.add(_msg(1))
        await store.note_delivery(42, 1)
        assert store.pending == 0  # committed, with the chat's message
        assert await store.messages.recent(42, 5) == [_msg(1)]
    assert _deliveries(db) == [(42, 1)]


# Notes deliveries and is killed before any commit: the writer never runs a batch (30 s interval).
KILLED_BEFORE_ANY_COMMIT = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path

import anyio

from memory.duckdb_store import DuckDBStore
from memory.types import StoredMessage


async def main():
    async with DuckDBStore(Path(sys.argv[1]), flush_interval_s=30) as store:
        store.add(StoredMessage(42, 1, 42, "Ann", "old news", datetime(2024, 1, 1, tzinfo=UTC)))
        await store.flush()  # committed before: the kill loses nothing of it either
        commits = store.commits
        for i in (7, 8, 9):
            store.add(StoredMessage(42, i, 42, "Ann", f"question {i}?", datetime(2024, 1, 1, 0, 0, i, tzinfo=UTC)))
        for i in (7, 8):
            await store.note_delivery(42, i)  # the replies' first bytes would leave now
        await store.note_delivery(-100, 3)
        assert store.commits == commits, "a commit ran"
        print(f"NOTED pending={store.pending}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


anyio.run(main)
print("NOT KILLED", flush=True)
"""


async def test_deliveries_noted_and_killed_before_any_commit_are_answered_after_the_restart(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_BEFORE_ANY_COMMIT, encoding="utf-8")
    db = tmp_path / "data" / "kith.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = await anyio.run_process([sys.executable, str(script), str(db)], cwd=ROOT, env=env, check=False)
    out = r.stdout.decode()
    assert r.returncode == -9, out + r.stderr.decode()[-3000:]
    assert "NOTED pending=6" in out
    assert _deliveries(db) == []  # nothing of it was committed: the reserve is all there is
    kept, bad = Journal(db.with_name("kith.duckdb.reserve")).recover()
    assert bad == 0 and [d[:2] for d in kept.deliveries] == [(42, 7), (42, 8), (-100, 3)]

    async with DuckDBStore(db) as store:  # the next start stores the reserve before anything is read
        assert store.recovered_rows == 6
        assert await store.messages.answered_ids(42) == {7, 8}  # answered once: not again after the restart
        assert await store.messages.answered_ids(-100) == {3}
        assert [m.message_id for m in await store.messages.recent(42, 10)] == [1, 7, 8, 9]
    async with DuckDBStore(db) as store:  # stored once: a second start adds nothing
        assert store.recovered_rows == 0 and await store.messages.answered_ids(42) == {7, 8}
    assert _deliveries(db) == [(-100, 3), (42, 7), (42, 8)]


# The real runtime answers a question and is killed in the first commit that carries its delivery:
# after the reply's first byte was sent.
KILLED_IN_THE_DELIVERYS_COMMIT = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path

import anyio

from actors.events import Incoming, Sender
from transports.local import IdAllocator, LocalOutbox
from features.app import open_runtime
from config.models import Config, Settings, TiersConfig
from memory.duckdb_store import DuckDBStore
from providers.embedder import load_model

real = DuckDBStore._write_sync


def killed_with_the_delivery(self, batch, **kw):
    if batch.deliveries and not kw.get("recovering"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, batch, **kw)


DuckDBStore._write_sync = killed_with_the_delivery


class Shown(LocalOutbox):
    async def on_progress(self, chat_id, delta):
        print(f"FIRST BYTE {chat_id}", flush=True)

    async def on_message(self, msg, streamed_rest):
        print(f"SENT {msg.message_id} {msg.reply_to}", flush=True)


async def main():
    cfg = Config(settings=Settings(), tiers=TiersConfig())
    async with open_runtime(cfg, Path(sys.argv[1]), lambda m: Shown(IdAllocator(m.store.messages.max_id)),
                            model=load_model()) as rt:
        await rt.supervisor.tell(42, Incoming(42, "private", 7, Sender(42, "Ann"), "hello, are you there?",
                                              datetime.now(UTC)))
        await rt.supervisor.wait_all_idle()
    print("NOT KILLED", flush=True)


anyio.run(main)
"""


async def test_a_reply_killed_in_the_commit_of_its_delivery_is_not_sent_again_after_the_restart(tmp_path, st_model):
    from actors.events import Incoming, Sender
    from config.models import Config, Settings, TiersConfig
    from features.app import open_runtime
    from transports.local import IdAllocator, LocalOutbox

    script = tmp_path / "killed.py"
    script.write_text(KILLED_IN_THE_DELIVERYS_COMMIT, encoding="utf-8")
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = await anyio.run_process([sys.executable, str(script), str(data)], cwd=ROOT, env=env, check=False)
    out = r.stdout.decode()
    assert r.returncode == -9, out + r.stderr.decode()[-3000:]
    assert "SENT " in out or "FIRST BYTE" in out  # the reply had started to leave
    assert _deliveries(data / "kith.duckdb") == []  # killed before the delivery was committed

    holder: dict = {}

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["box"]

    async with open_runtime(Config(settings=Settings(), tiers=TiersConfig()), data, make, model=st_model) as rt:
        assert 7 in await rt.memory.store.messages.answered_ids(42)
        await rt.supervisor.tell(42, Incoming(42, "private", 7, Sender(42, "Ann"), "hello, are you there?",
                                              datetime.now(UTC)))  # Telegram delivers it again
        await rt.supervisor.wait_all_idle()
    assert holder["box"].sent == []  # answered exactly once


# ---------------------------------------------------------------- the PostgreSQL store (no reserve)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_postgresql_store_commits_a_delivery_with_the_chats_messages_before_it_returns(pg_url, tmp_path):
    from memory.postgres_store import PostgresStore

    async with PostgresStore(pg_url, dump_dir=tmp_path, flush_interval_s=30) as store:
        store.add(_msg(1))
        await store.note_delivery(42, 1)
        await store.note_delivery(42, 1)  # twice: stored once
        assert store.pending == 0  # no reserve: committed, with the message, before it returned
        assert await store.messages.answered_ids(42) == {1}
    async with PostgresStore(pg_url, dump_dir=tmp_path) as store:
        assert await store.messages.answered_ids(42) == {1} and [m.message_id for m in await store.messages.recent(42, 5)] == [1]
