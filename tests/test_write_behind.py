"""The write-behind queue on its own, with an injected commit function (no database)."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from memory.batch import Batch, save_unsaved
from memory.errors import DiskFull, MemoryStoreError
from memory.types import StoredMessage, UsageRecord
from memory.write_behind import WriteBehind

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def msg(chat: int, i: int) -> StoredMessage:
    return StoredMessage(chat, i, 7, "ann", f"m{i}", T0 + timedelta(seconds=i))


class Sink:
    """A commit function that records each batch; it can fail systemically a number of times, or
    write only part of a batch before failing."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []
        self.failures = 0
        self.error: BaseException = OSError("connection lost")
        self.partial = 0  # rows written before the next failure
        self.saved: list[Batch] = []

    async def commit(self, batch: Batch) -> None:
        await anyio.sleep(0)
        if self.failures:
            self.failures -= 1
            if self.partial:
                self.batches.append([(m.chat_id, m.message_id) for m in batch.messages[:self.partial]])
                batch.messages = batch.messages[self.partial:]
                self.partial = 0
            raise self.error
        self.batches.append([(m.chat_id, m.message_id) for m in batch.messages])
        batch.clear()

    def describe(self, exc: BaseException, pending: int) -> MemoryStoreError:
        if "space" in str(exc):
            return DiskFull(Path("/tmp/x"), 0, pending * 1024, unsaved=pending)
        return MemoryStoreError(f"cannot write {pending} rows: {exc}")

    def written(self) -> list[tuple[int, int]]:
        return [k for b in self.batches for k in b]


def make(sink: Sink, **kw) -> WriteBehind:
    kw.setdefault("flush_interval_s", 0.01)
    return WriteBehind(sink.commit, describe_error=sink.describe, save_unsaved=sink.saved.append, **kw)


@pytest.mark.anyio
async def test_rows_queue_without_waiting_and_commit_in_batches_in_order() -> None:
    sink = Sink()
    async with anyio.create_task_group() as tg:
        q = make(sink, flush_interval_s=10.0)
        q.start(tg)
        for i in range(50):
            q.put_messages([msg(1, i)])
        assert q.pending == 50 and sink.batches == []  # nothing committed while the interval runs
        await q.flush()
        assert q.pending == 0 and len(sink.batches) == 1  # one commit for all 50
        assert sink.written() == [(1, i) for i in range(50)]
        await q.aclose()


@pytest.mark.anyio
async def test_flush_rows_commits_without_waiting_for_the_interval() -> None:
    sink = Sink()
    async with anyio.create_task_group() as tg:
        q = make(sink, flush_interval_s=60.0, flush_rows=10)
        q.start(tg)
        q.put_messages(msg(1, i) for i in range(10))
        with anyio.fail_after(5):
            while sink.batches == []:
                await anyio.sleep(0.01)
        assert sink.written() == [(1, i) for i in range(10)]
        await q.aclose()


@pytest.mark.anyio
async def test_sync_chat_waits_only_for_that_chats_messages() -> None:
    sink = Sink()
    async with anyio.create_task_group() as tg:
        q = make(sink, flush_interval_s=60.0)
        q.start(tg)
        q.put_messages([msg(1, 1)])
        with anyio.fail_after(1):
            await q.sync_chat(2)  # nothing of chat 2 is queued: returns at once
        assert sink.batches == []
        with anyio.fail_after(5):
            await q.sync_chat(1)
        assert sink.written() == [(1, 1)]
        await q.aclose()


@pytest.mark.anyio
async def test_a_failing_database_keeps_rows_queued_ahead_of_newer_ones_and_retries() -> None:
    sink = Sink()
    sink.failures, sink.partial = 1, 2
    async with anyio.create_task_group() as tg:
        q = make(sink)
        q.start(tg)
        q.put_messages(msg(1, i) for i in range(5))
        with pytest.raises(MemoryStoreError, match="cannot write 3 rows: connection lost"):
            await q.flush()
        assert q.pending == 3  # the two written rows left the queue
        q.put_messages([msg(1, 5)])
        with anyio.fail_after(5):
            await q.flush()  # retried after the backoff
        assert sink.written() == [(1, i) for i in range(6)]  # nothing lost, nothing twice, in order
        await q.aclose()


@pytest.mark.anyio
async def test_disk_full_stops_intake_until_a_commit_succeeds() -> None:
    sink = Sink()
    sink.failures, sink.error = 1, OSError(28, "No space left on device")
    async with anyio.create_task_group() as tg:
        q = make(sink)
        q.start(tg)
        q.put_usage(UsageRecord(T0, 1, 7, "chat", "m", 1, 1, None, 1.0))
        with pytest.raises(DiskFull):
            await q.flush()
        with pytest.raises(DiskFull):
            q.put_messages([msg(1, 1)])
        with anyio.fail_after(5):
            while q.blocked is not None:  # the retry succeeds: space was freed
                await anyio.sleep(0.02)
        q.put_messages([msg(1, 1)])
        await q.flush()
        await q.aclose()
    assert q.pending == 0


@pytest.mark.anyio
async def test_rows_the_database_never_takes_are_handed_to_save_unsaved_at_shutdown() -> None:
    sink = Sink()
    sink.failures = 10**6
    async with anyio.create_task_group() as tg:
        q = make(sink)
        q.start(tg)
        q.put_messages(msg(1, i) for i in range(3))
        q.put_chat((1, "group", "g", 0))
        with anyio.fail_after(10):
            await q.aclose()
    assert [len(b) for b in sink.saved] == [4]
    assert [m.message_id for m in sink.saved[0].messages] == [0, 1, 2]
    with pytest.raises(MemoryStoreError, match="not open"):
        q.put_messages([msg(1, 9)])


@pytest.mark.anyio
async def test_cancelling_the_owner_does_not_drop_queued_rows() -> None:
    sink = Sink()

    async def owner(*, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            q = make(sink, flush_interval_s=30.0)
            q.start(tg)
            try:
                q.put_messages(msg(1, i) for i in range(20))
                task_status.started()
                await anyio.sleep_forever()
            finally:
                await q.aclose()

    async with anyio.create_task_group() as tg:
        await tg.start(owner)
        tg.cancel_scope.cancel()
    assert sink.written() == [(1, i) for i in range(20)]


def test_save_unsaved_writes_an_importable_transcript_and_the_other_rows(tmp_path: Path) -> None:
    from memory.transcripts import read_transcript

    batch = Batch(messages=[msg(1, 1), msg(1, 2)], usage=[UsageRecord(T0, 1, 7, "chat", "m", 1, 2, None, 3.0)],
                  recalls=[(1, 2, 1, 0.5)], chats=[(1, "group", "g", 0)])
    save_unsaved(batch, tmp_path / "kith.duckdb.unsaved-x")
    assert list(read_transcript(tmp_path / "kith.duckdb.unsaved-x.jsonl")) == [msg(1, 1), msg(1, 2)]
    other = [json.loads(line) for line in (tmp_path / "kith.duckdb.unsaved-x.other.jsonl").read_text().splitlines()]
    assert [o["record"] for o in other] == ["chat", "usage", "recall"]
