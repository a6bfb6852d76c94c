"""The write-behind queue of a dialogue store: rows enqueue without awaiting, one writer task commits them in batches.

Writes of the hot path (a message, a usage record, the recalls of a reply, a chat's name) must not
wait for a database round trip, and a commit per row would cap throughput at a few hundred rows per
second. So they go into this queue, and one writer task hands everything queued to an injected
``commit`` function: it waits up to ``flush_interval_s`` after the first queued row, or until
``flush_rows`` rows are queued, or until someone calls ``flush()``. Batches grow under load.

The queue knows nothing of the database. The store gives it:

- ``commit(batch)``: write ``batch`` (messages, usage, recalls, chats) and return; on a failure of
  the database itself (I/O, disk full, connection lost), raise with ``batch`` trimmed to the rows not
  written yet. Rows that can never be stored (bad data) are the commit function's business: it
  drops them (and says so), it does not raise for them.
- ``describe_error(exc, pending)``: the ``MemoryStoreError`` that ``flush()`` callers see for that
  failure. A ``DiskFull`` also stops intake (``check_writable`` raises it) until a commit succeeds.
- ``save_unsaved(batch)``: called (in a worker thread) at shutdown with whatever could still not be
  written, to put it somewhere a person can recover it from.

Guarantees: rows are committed in enqueue order per kind; a failed batch stays queued, ahead of
newer rows, and is retried with exponential backoff (0.1 s … 5 s); ``flush()`` returns when every row
enqueued before the call is committed, raises the described error while the database fails; an
outside cancellation never drops queued rows (the writer is shielded; ``aclose`` drains it).
Enqueue from the event-loop thread only.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .errors import DiskFull, MemoryStoreError
from .types import StoredMessage, UsageRecord

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0

RecallRow = tuple[int, int, int, float]  # (chat_id, reply_message_id, memory_message_id, score)
ChatRow = tuple[int, str, "str | None", int]  # (chat_id, type, title, created_at µs since epoch, UTC)


@dataclass(eq=False)
class Batch:
    """Rows handed to one ``commit`` call, per table, in enqueue order. ``upto``: the sequence number
    of the last row enqueued into it (internal bookkeeping of the queue)."""

    messages: list[StoredMessage] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    recalls: list[RecallRow] = field(default_factory=list)
    chats: list[ChatRow] = field(default_factory=list)
    upto: int = 0

    def __len__(self) -> int:
        return len(self.messages) + len(self.usage) + len(self.recalls) + len(self.chats)

    def clear(self) -> None:
        """Mark every row as written (a commit function calls it when the whole batch is stored)."""
        self.messages, self.usage, self.recalls, self.chats = [], [], [], []


@dataclass(eq=False)
class _Waiter:
    target: int
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class WriteBehind:
    """The queue and its writer task (see the module docstring for the contract).

    commit: awaitable writer of one batch. describe_error: ``(exc, pending rows) -> MemoryStoreError``.
    save_unsaved: sync function run in a worker thread at shutdown with rows that could not be written.
    flush_interval_s: how long rows may accumulate after the first one (seconds, ≥ 0).
    flush_rows: commit at once when this many rows are queued.

    Use ``async with`` (starts the writer; leaving it drains the queue) or ``start``/``aclose``.
    """

    def __init__(
        self,
        commit: Callable[[Batch], Awaitable[None]],
        *,
        describe_error: Callable[[BaseException, int], MemoryStoreError],
        save_unsaved: Callable[[Batch], None],
        flush_interval_s: float = 0.05,
        flush_rows: int = 2000,
        name: str = "dialogue store",
    ) -> None:
        self._commit = commit
        self._describe_error = describe_error
        self._save_unsaved = save_unsaved
        self.flush_interval_s = flush_interval_s
        self.flush_rows = max(1, flush_rows)
        self.name = name
        self._q = Batch()
        self._queued_for_chat: dict[int, int] = {}  # chat_id -> seq of its newest queued message
        self._seq = 0  # rows enqueued so far
        self._done_seq = 0  # every row up to this one is committed (or dropped as unstorable)
        self._enqueue_times: deque[tuple[int, float]] = deque()  # (seq, monotonic s) not committed yet
        self._waiters: list[_Waiter] = []
        self._wakeup = anyio.Event()  # something was enqueued, or closing
        self._hurry = anyio.Event()  # commit now: flush requested, flush_rows reached, or closing
        self._writer_done = anyio.Event()
        self._started = False
        self._closing = False
        self.blocked: DiskFull | None = None  # set while commits fail for lack of space
        self.last_error: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the writer task in ``tg`` (the owner's task group)."""
        self._started = True
        tg.start_soon(self._writer, name=f"{self.name}-writer")

    async def aclose(self) -> None:
        """Stop intake, commit what is queued (or hand it to ``save_unsaved``), wait for the writer."""
        self._closing = True
        self._wakeup.set()
        self._hurry.set()
        if self._started:
            with anyio.CancelScope(shield=True):
                await self._writer_done.wait()

    @property
    def open(self) -> bool:
        return self._started and not self._closing

    def check_writable(self) -> None:
        """raises MemoryStoreError when closed; DiskFull while commits fail for lack of space."""
        if not self.open:
            raise MemoryStoreError(f"the {self.name} is not open")
        if self.blocked is not None:
            raise self.blocked

    # ------------------------------------------------------------ enqueue (non-blocking)

    def put_messages(self, msgs: Iterable[StoredMessage]) -> list[StoredMessage]:
        """Queue messages; returns them as a list. raises as ``check_writable``."""
        self.check_writable()
        batch = list(msgs)
        self._q.messages.extend(batch)
        self._enqueued(len(batch))
        for m in batch:
            self._queued_for_chat[m.chat_id] = self._seq
        return batch

    def put_usage(self, rec: UsageRecord) -> None:
        self.check_writable()
        self._q.usage.append(rec)
        self._enqueued(1)

    def put_recalls(self, rows: list[RecallRow]) -> None:
        self.check_writable()
        self._q.recalls.extend(rows)
        self._enqueued(len(rows))

    def put_chat(self, row: ChatRow) -> None:
        self.check_writable()
        self._q.chats.append(row)
        self._enqueued(1)

    def _enqueued(self, n: int) -> None:
        if n <= 0:
            return
        self._seq += n
        self._enqueue_times.append((self._seq, time.monotonic()))
        self._wakeup.set()
        if self.pending >= self.flush_rows:
            self._hurry.set()

    @property
    def pending(self) -> int:
        """Rows queued and not yet handed to ``commit``."""
        return len(self._q)

    @property
    def writer_lag_s(self) -> float:
        """Seconds the oldest row not yet committed has waited (0 when everything is committed)."""
        return time.monotonic() - self._enqueue_times[0][1] if self._enqueue_times else 0.0

    # ------------------------------------------------------------ waiting for commits

    async def flush(self) -> None:
        """Return when every row enqueued before the call is committed.

        raises MemoryStoreError (as described by ``describe_error``) when the database fails to write
        (the rows stay queued and are retried)."""
        target = self._seq
        if self._done_seq >= target:
            return
        if self._writer_done.is_set():
            raise MemoryStoreError(f"the {self.name} is closed with rows unsaved")
        waiter = _Waiter(target)
        self._waiters.append(waiter)
        self._hurry.set()
        self._wakeup.set()
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error

    async def sync(self) -> None:
        """Read-your-writes: flush if anything is queued or being committed."""
        if self._seq > self._done_seq:
            await self.flush()

    async def sync_chat(self, chat_id: int) -> None:
        """Read-your-writes for one chat's messages: flush only if that chat has messages queued or
        being committed (other chats' rows cannot change this chat's reads)."""
        if self._queued_for_chat.get(chat_id, 0) > self._done_seq:
            await self.flush()

    # ------------------------------------------------------------ the writer

    async def _writer(self) -> None:
        # Shielded: an outside cancellation must not drop queued rows; aclose stops the writer.
        with anyio.CancelScope(shield=True):
            try:
                await self._writer_loop()
            finally:
                self._writer_done.set()
                waiters, self._waiters = self._waiters, []
                for w in waiters:  # only left when shutdown could not write everything
                    w.error = MemoryStoreError(f"the {self.name} closed with rows it could not write")
                    w.done.set()

    async def _writer_loop(self) -> None:
        backoff = 0.0
        while True:
            if not self.pending:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                continue
            if backoff:
                with anyio.move_on_after(backoff):
                    while not self._closing:  # sleep, but wake for shutdown
                        await self._wakeup.wait()
                        self._wakeup = anyio.Event()
            elif not self._hurry.is_set() and self.flush_interval_s > 0:
                with anyio.move_on_after(self.flush_interval_s):
                    await self._hurry.wait()
            self._hurry = anyio.Event()
            if await self._commit_pending():
                backoff = 0.0
            elif self._closing:
                left, self._q = self._q, Batch()
                await anyio.to_thread.run_sync(self._save_unsaved, left)
                return
            else:
                backoff = min(MAX_BACKOFF_S, max(0.1, backoff * 2))

    async def _commit_pending(self) -> bool:
        batch, self._q = self._q, Batch()
        batch.upto = self._seq
        committed_chats = {m.chat_id for m in batch.messages}
        try:
            await self._commit(batch)
        except Exception as exc:  # noqa: BLE001 - systemic: keep what is left of the batch queued
            self._requeue(batch)
            self.last_error = exc
            err = self._describe_error(exc, self.pending)
            if isinstance(err, DiskFull):
                if self.blocked is None:
                    log.error("%s: %s", self.name, err)
                self.blocked = err
            else:
                log.error("%s: writing %d rows failed, kept queued for retry: %s", self.name, len(batch), exc)
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.error = err
                w.done.set()
            return False
        self.last_error = None
        if self.blocked is not None:
            log.info("%s: writing again (space was freed)", self.name)
            self.blocked = None
        self._done_seq = batch.upto
        while self._enqueue_times and self._enqueue_times[0][0] <= self._done_seq:
            self._enqueue_times.popleft()
        for chat_id in committed_chats:
            if self._queued_for_chat.get(chat_id, 0) <= self._done_seq:
                self._queued_for_chat.pop(chat_id, None)
        still = []
        for w in self._waiters:
            if w.target <= self._done_seq:
                w.done.set()
            else:
                still.append(w)
        self._waiters = still
        return True

    def _requeue(self, batch: Batch) -> None:
        """Put the rows ``commit`` did not write back at the head of the queue."""
        self._q.messages[:0] = batch.messages
        self._q.usage[:0] = batch.usage
        self._q.recalls[:0] = batch.recalls
        self._q.chats[:0] = batch.chats


# ---------------------------------------------------------------- rows that could not be written

def save_unsaved(batch: Batch, base: Path) -> None:
    """Write rows a store could not commit at shutdown next to it: ``<base>.jsonl`` holds the
    messages as a transcript (DESIGN §9, importable with ``kith import``), ``<base>.other.jsonl`` the
    chats, usage and recalls (one JSON object per line with a ``record`` key). Logs CRITICAL with
    where they went; a dump that cannot be written is removed (no half-written file that looks like a
    backup) and the loss is logged CRITICAL."""
    n = len(batch)
    written: list[str] = []
    try:
        if batch.messages:
            written.append(f"{base}.jsonl")
            with open(f"{base}.jsonl", "a", encoding="utf-8") as f:
                for m in batch.messages:
                    f.write(json.dumps(_message_json(m)) + "\n")
        if batch.usage or batch.recalls or batch.chats:
            written.append(f"{base}.other.jsonl")
            with open(f"{base}.other.jsonl", "a", encoding="utf-8") as f:
                for c in batch.chats:
                    f.write(json.dumps({"record": "chat", "chat_id": c[0], "type": c[1], "title": c[2]}) + "\n")
                for u in batch.usage:
                    f.write(json.dumps({"record": "usage", **_usage_json(u)}) + "\n")
                for r in batch.recalls:
                    f.write(json.dumps({"record": "recall", "chat_id": r[0], "reply_message_id": r[1],
                                        "memory_message_id": r[2], "score": r[3]}) + "\n")
        log.critical("dialogue store: %d unsaved rows written to %s.*jsonl", n, base)
    except Exception as exc:  # noqa: BLE001
        for name in written:
            with contextlib.suppress(OSError):
                os.unlink(name)
        log.critical("dialogue store: %d rows not stored (%d messages), and they cannot be written to %s.*jsonl "
                     "either: %s", n, len(batch.messages), base, exc)


def _iso(d: Any) -> Any:
    return d.isoformat() if isinstance(d, datetime) else repr(d)


def _message_json(m: StoredMessage) -> dict:
    """A message as one transcript JSONL object (DESIGN §9, plus ``role``)."""
    d = {"chat_id": m.chat_id, "message_id": m.message_id, "date": _iso(m.date), "user": m.user_name,
         "user_id": m.user_id, "text": m.text, "role": m.role}
    if m.reply_to is not None:
        d["reply_to"] = m.reply_to
    if m.thread_id is not None:
        d["thread_id"] = m.thread_id
    return d


def _usage_json(u: UsageRecord) -> dict:
    return {"ts": _iso(u.ts), "chat_id": u.chat_id, "user_id": u.user_id, "kind": u.kind, "model": u.model,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "cost_usd": u.cost_usd,
            "latency_ms": u.latency_ms, "seconds": u.seconds, "images": u.images, "pages": u.pages}
