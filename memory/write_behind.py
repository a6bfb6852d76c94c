"""The write-behind queue of a dialogue store: rows enqueue without awaiting, one writer task commits them in batches.

Writes of the hot path (a message, a usage record, the recalls of a reply, a chat's name, the
delivery record written before a reply's first byte) must not wait for a database round trip, and
a commit per row would cap throughput at a few hundred rows per second. So they go into this
queue, and one writer task hands everything queued to an injected ``commit`` function: it waits up
to ``flush_interval_s`` after the first queued row, or until ``flush_rows`` rows are queued, or
until someone calls ``flush()``. Batches grow under load.

The queue knows nothing of the database. The store gives it:

- ``commit(batch)``: write ``batch`` (messages, usage, recalls, chats, deliveries) in one
  transaction and return; on a failure of the database itself (I/O, disk full, connection lost),
  raise with ``batch`` trimmed to the rows not written yet. Rows that can never be stored (bad
  data) are the commit function's business: it drops them (and says so), it does not raise for them.
- ``describe_error(exc, pending)``: the ``MemoryStoreError`` that ``flush()`` callers see for that
  failure. A ``DiskFull`` also stops intake (``check_writable`` raises it) until a commit succeeds.
- ``save_unsaved(batch)``: called (in a worker thread) at shutdown with whatever could still not be
  written and is not in the reserve, to put it somewhere a person can recover it from.
- ``journal`` (optional): the store's reserve (``Journal``), a file preallocated on the database's
  disk. Every row is written there (one JSON line, into space allocated in advance, so a full disk
  cannot refuse it) before it is queued, until a commit covers it; the store reads the rows an
  earlier run left there back in at its next open. So a row the queue accepted survives a full
  disk and a ``kill -9`` of the process (not a power cut: the reserve is synced only when a commit
  fails and at shutdown, so a power cut loses what was accepted since the last commit — the
  ``flush_interval_s`` before it, 50 ms by default, and the commit's own time).

Deliveries: ``put_delivery`` is how a store notes "a reply to this message is being sent" before
the reply's first byte (``DialogueStore.note_delivery``, exactly once across crashes). The row is
in the reserve when ``put_delivery`` returns True — as durable against a ``kill -9`` as a commit,
without the commit's round trip — and is committed with the chat's queued messages by the writer.
When it returns False (no reserve: a store without one such as PostgreSQL's, a reserve that could
not be made, or one that is full) the row is only queued, and the store flushes before the first
byte, as a commit of its own did before. ``sync_chat(chat_id, deliveries=True)`` also commits the
chat's queued deliveries, for the reads of deliveries (``answered_ids``).

Intake and what was already done: messages from users (and chat rows) are *intake*; the bot's own
replies (role ``assistant``), usage records, recalls and deliveries record what was already (or is
being) sent or billed. While commits fail for lack of space, or when the reserve cannot be made,
intake is refused with ``DiskFull`` — before anything is lost — but replies, usage, recalls and
deliveries are still accepted: they go into the part of the reserve kept for them (``SENT_HEADROOM``).

Guarantees: rows are committed in enqueue order per kind; a failed batch stays queued, ahead of
newer rows, and is retried with exponential backoff (0.1 s … 5 s); ``flush()`` returns when every row
enqueued before the call is committed, raises the described error while the database fails; an
outside cancellation never drops queued rows (the writer is shielded; ``aclose`` drains it).
Enqueue from the event-loop thread only.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .errors import DiskFull, MemoryStoreError, is_disk_full
from .types import ROLE_ASSISTANT, ROLE_USER, StoredMessage, UsageRecord

__all__ = [
    "MAX_BACKOFF_S",
    "RESERVE_BYTES",
    "SENT_HEADROOM",
    "START_FREE_BYTES",
    "Batch",
    "ChatRow",
    "DeliveryRow",
    "Journal",
    "RecallRow",
    "SqlRow",
    "WriteBehind",
    "add_row",
    "load_unsaved",
    "row_json",
    "save_unsaved",
    "unsaved_files",
]

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0

#: Free space below which a disk counts as already full at start: intake is refused from the start
#: (one DiskFull line where a message is refused) instead of at the first commit that fails. Small on
#: purpose: the reserve already keeps what a nearly full disk cannot commit.
START_FREE_BYTES = 256 * 2**10  # one DuckDB block

#: Size of a store's reserve (``Journal``). Measured (the reserve's own lines): a message of
#: #ubuntu takes ~260 bytes there (p99 ~470), a 4,096-character Russian reply ~7.5 KB (English
#: ~4.3 KB), a usage record ~320 bytes, a recall ~150. The 3 MiB intake may use hold ~12,000 chat
#: messages — far more than arrive between two commits (one every 50 ms, or every 2,000 rows).
RESERVE_BYTES = 4 * 2**20
#: The last part of the reserve, kept for replies, usage, recalls and deliveries (what was already
#: sent or billed; a delivery's line is ~80 bytes): intake stops short of it. 1 MiB: ~110 turns of
#: the longest reply with its usage and 8 recalls (~9 KB each), ~400 typical ones.
SENT_HEADROOM = 2**20

RecallRow = tuple[int, int, int, float]  # (chat_id, reply_message_id, memory_message_id, score)
ChatRow = tuple[int, str, "str | None", int]  # (chat_id, type, title, created_at µs since epoch, UTC)
DeliveryRow = tuple[int, int, int]  # (chat_id, message_id replied to, sent_at µs since epoch, UTC)
SqlRow = tuple[str, list[Any]]  # (a per-domain store's statement, "?" placeholders; its JSON-able parameters)


@dataclass(eq=False)
class Batch:
    """Rows handed to one ``commit`` call, per table, in enqueue order. ``upto``: the sequence number
    of the last row enqueued into it (internal bookkeeping of the queue)."""

    messages: list[StoredMessage] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    recalls: list[RecallRow] = field(default_factory=list)
    chats: list[ChatRow] = field(default_factory=list)
    deliveries: list[DeliveryRow] = field(default_factory=list)
    sql: list[SqlRow] = field(default_factory=list)
    upto: int = 0

    def __len__(self) -> int:
        return (len(self.messages) + len(self.usage) + len(self.recalls) + len(self.chats) + len(self.deliveries)
                + len(self.sql))

    def clear(self) -> None:
        """Mark every row as written (a commit function calls it when the whole batch is stored)."""
        self.messages, self.usage, self.recalls, self.chats, self.deliveries, self.sql = [], [], [], [], [], []


@dataclass(eq=False)
class _Waiter:
    target: int
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class WriteBehind:
    """The queue and its writer task (see the module docstring for the contract).

    commit: awaitable writer of one batch. describe_error: ``(exc, pending rows) -> MemoryStoreError``.
    save_unsaved: sync function run in a worker thread at shutdown with rows that could not be
    written and are not all in the reserve. journal: the store's reserve (``Journal``; None: none),
    started (preallocated) by ``start``, closed when the writer ends.
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
        journal: Journal | None = None,
    ) -> None:
        self._commit = commit
        self._describe_error = describe_error
        self._save_unsaved = save_unsaved
        self.flush_interval_s = flush_interval_s
        self.flush_rows = max(1, flush_rows)
        self.name = name
        self._q = Batch()
        self._queued_for_chat: dict[int, int] = {}  # chat_id -> seq of its newest queued message
        self._delivered_for_chat: dict[int, int] = {}  # chat_id -> seq of its newest queued delivery
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
        self.journal = journal
        self._unjournaled = 0  # bytes of rows queued since the journal's last reset that it does not hold
        self._reserve_missing = False  # the reserve could not be made (disk full): intake stays stopped
        self._held = False  # the reserve holds an earlier run's rows not stored yet: intake stopped for this run

    # ------------------------------------------------------------ lifecycle

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the writer task in ``tg`` (the owner's task group), after making the reserve: when
        the disk has no room for it, intake is stopped (``blocked``) from the start."""
        if self.journal is not None:
            self._reserve_missing = not self._start_journal()
        tg.start_soon(self._writer, name=f"{self.name}-writer")
        self._started = True  # from now on ``aclose`` waits for the writer (not when it never started)

    def hold(self, err: DiskFull) -> None:
        """Before ``start``: the reserve still holds rows of an earlier run that could not be stored
        (no space yet). It is left as it is (the next start stores them) and intake stays stopped
        with ``err`` for this run; reads and the rows of what was already sent still work."""
        if self.journal is not None:
            self.journal.close()
        self.journal = None
        self._held = True
        self.blocked = err

    def _start_journal(self) -> bool:
        assert self.journal is not None
        try:
            self.journal.start()
            free = shutil.disk_usage(self.journal.path.parent).free
            if free < START_FREE_BYTES:  # an already-full disk: refuse intake now, in one line, not at the first commit
                self.blocked = DiskFull(self.journal.path.parent, free, START_FREE_BYTES)
                log.info("%s: %s", self.name, self.blocked)  # said where a message is refused
            return True
        except OSError as exc:
            if is_disk_full(exc):
                err = self._describe_error(exc, self.pending)
                if isinstance(err, DiskFull):
                    if self.blocked is None:
                        log.error("%s: no room for the reserve %s, new messages are refused: %s",
                                  self.name, self.journal.path, err)
                    self.blocked = err
                    return False
            log.error("%s: cannot make the reserve %s (%s): rows waiting for a commit are kept in memory only",
                      self.name, self.journal.path, exc)
            self.journal.close()
            self.journal = None
            return True

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
        """raises MemoryStoreError when closed; DiskFull while commits fail for lack of space (or
        the reserve could not be made): what intake checks."""
        self.check_open()
        if self.blocked is not None:
            raise self.blocked

    def check_open(self) -> None:
        """raises MemoryStoreError when closed (what the rows of what was already sent check)."""
        if not self.open:
            raise MemoryStoreError(f"the {self.name} is not open")

    # ------------------------------------------------------------ enqueue (non-blocking)

    def put_messages(self, msgs: Iterable[StoredMessage]) -> list[StoredMessage]:
        """Queue messages; returns them as a list. raises as ``check_writable``, except for a batch
        of replies only (role ``assistant``: already sent), which only needs the queue open."""
        batch = list(msgs)
        sent = bool(batch) and all(m.role == ROLE_ASSISTANT for m in batch)
        if sent:
            self.check_open()
        else:
            self.check_writable()
        self._keep("message", batch, sent)
        self._q.messages.extend(batch)
        self._enqueued(len(batch))
        for m in batch:
            self._queued_for_chat[m.chat_id] = self._seq
        return batch

    def put_usage(self, rec: UsageRecord) -> None:
        """Queue a usage record (a call already made: accepted while intake is stopped)."""
        self.check_open()
        self._keep("usage", [rec], True)
        self._q.usage.append(rec)
        self._enqueued(1)

    def put_recalls(self, rows: list[RecallRow]) -> None:
        """Queue the recalls of a reply (already sent: accepted while intake is stopped)."""
        self.check_open()
        self._keep("recall", rows, True)
        self._q.recalls.extend(rows)
        self._enqueued(len(rows))

    def put_chat(self, row: ChatRow) -> None:
        """Queue a chat row (intake). raises as ``check_writable``."""
        self.check_writable()
        self._keep("chat", [row], False)
        self._q.chats.append(row)
        self._enqueued(1)

    def put_delivery(self, row: DeliveryRow) -> bool:
        """Queue a delivery (a reply being sent: accepted while intake is stopped). True when the
        reserve holds it and every row queued before it (the message it answers among them):
        durable against a ``kill -9`` from now on. False when it is only queued (no reserve, or
        one that overflowed since the last full commit): the caller flushes if it needs it durable."""
        self.check_open()
        kept = self._keep("delivery", [row], True) and not self._unjournaled
        self._q.deliveries.append(row)
        self._enqueued(1)
        self._delivered_for_chat[row[0]] = self._seq
        return kept

    def put_sql(self, row: SqlRow) -> bool:
        """Queue one statement of a per-domain store (``memory.ledger``'s debit of an answer being
        sent), run in the next commit's transaction after the other rows; accepted while intake is
        stopped (it records billed work). True as for ``put_delivery``: the reserve holds it."""
        self.check_open()
        kept = self._keep("sql", [row], True) and not self._unjournaled
        self._q.sql.append(row)
        self._enqueued(1)
        return kept

    @property
    def journaled(self) -> bool:
        """Whether the reserve holds every row queued and not committed yet (a ``kill -9`` loses
        none of them: the next open stores them). False without a reserve."""
        return self.journal is not None and not self._unjournaled and not self._reserve_missing

    def _keep(self, kind: str, rows: list[Any], sent: bool) -> bool:
        """Write ``rows`` (about to be queued as seq ``self._seq + 1`` …) into the reserve; True when
        it holds them. When it cannot (full: a long run of rows with no commit between), they are
        queued anyway — unless they are intake and the disk's free space could not take them at
        shutdown either: then raises DiskFull and nothing is queued (refused, not lost)."""
        j = self.journal
        if j is None or not rows:
            return False
        data = j.encode(kind, rows, self._seq + 1)
        if not self._reserve_missing:
            try:
                if j.append(data, sent=sent):
                    return True
            except OSError as exc:  # in-place writes fail only on copy-on-write file systems
                if is_disk_full(exc) and not sent:
                    raise self._describe_error(exc, self.pending) from exc
                log.error("%s: cannot write to the reserve %s: %s", self.name, j.path, exc)
        if not sent:
            try:
                free = shutil.disk_usage(j.path.parent).free
            except OSError:
                free = 0
            if free < 2 * (self._unjournaled + len(data)) + j.size:
                err = self._describe_error(OSError(errno.ENOSPC, "No space left on device (the reserve is full)"),
                                           self.pending + len(rows))
                if isinstance(err, DiskFull):
                    raise err
        self._unjournaled += len(data)
        return False

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

    async def sync_chat(self, chat_id: int, *, deliveries: bool = False) -> None:
        """Read-your-writes for one chat's messages (and its deliveries with ``deliveries``): flush
        only if that chat has such rows queued or being committed (other chats' rows cannot change
        this chat's reads)."""
        newest = self._queued_for_chat.get(chat_id, 0)
        if deliveries:
            newest = max(newest, self._delivered_for_chat.get(chat_id, 0))
        if newest > self._done_seq:
            await self.flush()

    # ------------------------------------------------------------ the writer

    async def _writer(self) -> None:
        # Shielded: an outside cancellation must not drop queued rows; aclose stops the writer.
        with anyio.CancelScope(shield=True):
            try:
                await self._writer_loop()
            finally:
                if self.journal is not None:
                    self.journal.close()
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
                await anyio.to_thread.run_sync(self._keep_unsaved, left)
                return
            else:
                backoff = min(MAX_BACKOFF_S, max(0.1, backoff * 2))

    async def _commit_pending(self) -> bool:
        batch, self._q = self._q, Batch()
        batch.upto = self._seq
        committed_chats = {m.chat_id for m in batch.messages}
        delivered_chats = {d[0] for d in batch.deliveries}
        try:
            await self._commit(batch)
        except Exception as exc:
            self._requeue(batch)
            self.last_error = exc
            err = self._describe_error(exc, self.pending)
            if isinstance(err, DiskFull):
                if self.blocked is None:
                    log.error("%s: %s", self.name, err)
                self.blocked = err
                if self.journal is not None:  # what it holds now outlives a power cut too
                    await anyio.to_thread.run_sync(self._sync_journal)
            else:
                log.error("%s: writing %d rows failed, kept queued for retry: %s", self.name, len(batch), exc)
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.error = err
                w.done.set()
            return False
        self.last_error = None
        self._done_seq = batch.upto
        self._committed_to_journal()
        if self._reserve_missing and self.journal is not None:
            self._reserve_missing = not self._start_journal()
        if self.blocked is not None and not (self._held or self._reserve_missing):
            log.info("%s: writing again (space was freed)", self.name)
            self.blocked = None
        while self._enqueue_times and self._enqueue_times[0][0] <= self._done_seq:
            self._enqueue_times.popleft()
        for chat_id in committed_chats:
            if self._queued_for_chat.get(chat_id, 0) <= self._done_seq:
                self._queued_for_chat.pop(chat_id, None)
        for chat_id in delivered_chats:
            if self._delivered_for_chat.get(chat_id, 0) <= self._done_seq:
                self._delivered_for_chat.pop(chat_id, None)
        still = []
        for w in self._waiters:
            if w.target <= self._done_seq:
                w.done.set()
            else:
                still.append(w)
        self._waiters = still
        return True

    def _committed_to_journal(self) -> None:
        """After a commit: a new generation of the reserve when every row is committed, else a
        marker up to which its rows are stored (the next open skips them)."""
        j = self.journal
        if j is None or self._reserve_missing:
            return
        try:
            if self._done_seq >= self._seq:
                j.reset()
                self._unjournaled = 0
            else:
                j.mark_done(self._done_seq)
        except OSError as exc:
            log.error("%s: cannot write to the reserve %s (%s): rows waiting for a commit are kept in memory only",
                      self.name, j.path, exc)
            j.close()
            self.journal = None

    def _sync_journal(self) -> None:
        if self.journal is not None:
            try:
                self.journal.sync()
            except OSError as exc:
                log.error("%s: cannot sync the reserve %s: %s", self.name, self.journal.path, exc)

    def _keep_unsaved(self, left: Batch) -> None:
        """Worker thread, at shutdown: ``left`` could not be committed. When the reserve holds every
        row of it, it is synced and says so (the next open stores them); else ``save_unsaved``."""
        j = self.journal
        if j is not None and not self._unjournaled and not self._reserve_missing:
            try:
                j.sync()
            except OSError as exc:
                log.error("%s: cannot sync the reserve %s: %s", self.name, j.path, exc)
            else:
                log.critical("%s: %d rows (%d messages) could not be stored (%s); they are kept in %s and stored "
                             "at the next start", self.name, len(left), len(left.messages), self.last_error, j.path)
                return
        self._save_unsaved(left)

    def _requeue(self, batch: Batch) -> None:
        """Put the rows ``commit`` did not write back at the head of the queue."""
        self._q.messages[:0] = batch.messages
        self._q.usage[:0] = batch.usage
        self._q.recalls[:0] = batch.recalls
        self._q.chats[:0] = batch.chats
        self._q.deliveries[:0] = batch.deliveries
        self._q.sql[:0] = batch.sql


# ---------------------------------------------------------------- the reserve

_HEADER = "kith-reserve"
_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)


class Journal:
    """A store's reserve: a file of ``size`` bytes preallocated (``posix_fallocate``) on the
    database's disk, holding every queued row until a commit covers it.

    Layout, one JSON object per line: a header ``{"kith-reserve": 1, "g": G}``, then the rows of
    generation G — ``{"g": G, "s": seq, "record": "message"|"usage"|"recall"|"chat"|"delivery", …}`` (the
    fields of ``save_unsaved``'s dump) — and commit markers ``{"g": G, "done": seq}`` (rows up to
    ``seq`` are stored). When every queued row is committed a new generation starts at offset 0;
    what older generations left beyond its end is ignored, as is everything after the first line
    that does not parse (a torn write, or the zeros of the preallocation). Writes go into space
    allocated in advance, so a full disk does not refuse them (file systems that write in place:
    ext4, XFS, tmpfs; not copy-on-write ones such as btrfs or ZFS, where they may fail).

    ``headroom``: the last bytes, only for rows of what was already sent (``append(sent=True)``).
    Not thread-safe: the queue appends from the event loop; ``sync`` may run in a worker thread.
    Nothing is fsynced per row: a ``kill -9`` keeps what was written (the page cache), a power cut
    keeps what was synced (on a failed commit and at shutdown).
    """

    def __init__(self, path: Path, size: int = RESERVE_BYTES, headroom: int = SENT_HEADROOM) -> None:
        self.path = Path(path)
        self.size = size
        self.headroom = min(headroom, size // 2)
        self._fd: int | None = None
        self._gen = 0
        self._end = 0

    def recover(self) -> tuple[Batch, int]:
        """The rows the last run left uncommitted: ``(batch, lines that could not be read back)``.
        An empty batch when there is no reserve yet. Reads only; raises OSError when unreadable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Batch(), 0
        batch, bad, done = Batch(), 0, 0
        rows: list[tuple[int, dict[str, Any]]] = []
        lines = data.split(b"\n")
        gen = _header_gen(lines[0])
        if gen is None:
            return batch, 0
        self._gen = gen
        for raw in lines[1:]:
            try:
                d = json.loads(raw.decode("utf-8", "surrogatepass"))
            except ValueError:
                break
            if not isinstance(d, dict) or d.get("g") != gen:
                break
            if "done" in d:
                done = max(done, int(d["done"]))
            elif "s" in d:
                rows.append((int(d["s"]), d))
        for seq, d in rows:
            if seq > done and not add_row(batch, d):
                bad += 1
        return batch, bad

    def start(self) -> None:
        """Open and preallocate the reserve, and start a new generation (what it held is dropped:
        recover it first). raises OSError (ENOSPC: the disk has no room for it)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if not self._gen:
                with contextlib.suppress(OSError):
                    self._gen = _header_gen(os.pread(self._fd, 64, 0).split(b"\n")[0]) or 0
        try:
            _preallocate(self._fd, self.size)
        except OSError:
            self.close()
            raise
        self.reset()

    def reset(self) -> None:
        """Start a new, empty generation. raises OSError."""
        assert self._fd is not None
        self._gen += 1
        head = json.dumps({_HEADER: 1, "g": self._gen}).encode() + b"\n"
        os.pwrite(self._fd, head, 0)
        self._end = len(head)

    def encode(self, kind: str, rows: list[Any], first_seq: int) -> bytes:
        """``rows`` of ``kind`` as the reserve's lines, numbered from ``first_seq`` (~10 µs a row)."""
        lines = []
        for i, r in enumerate(rows):
            d = row_json(kind, r)
            d["g"], d["s"] = self._gen, first_seq + i
            lines.append(_ENCODER.encode(d))
        lines.append("")
        return "\n".join(lines).encode("utf-8", "surrogatepass")  # a lone surrogate is kept as it came (the store drops it)

    def append(self, data: bytes, *, sent: bool) -> bool:
        """Write ``data`` (from ``encode``) after what the reserve holds. False when it does not fit
        (intake may use all but ``headroom``). raises OSError."""
        if self._fd is None:
            return False
        limit = self.size if sent else self.size - self.headroom
        if self._end + len(data) > limit:
            return False
        os.pwrite(self._fd, data, self._end)
        self._end += len(data)
        return True

    def mark_done(self, seq: int) -> None:
        """Rows up to ``seq`` are committed (the marker is skipped when it does not fit). raises OSError."""
        line = json.dumps({"g": self._gen, "done": seq}).encode() + b"\n"
        if self._fd is not None and self._end + len(line) <= self.size:
            os.pwrite(self._fd, line, self._end)
            self._end += len(line)

    @property
    def used(self) -> int:
        """Bytes of the current generation (header included)."""
        return self._end

    def sync(self) -> None:
        """fdatasync: what it holds survives a power cut. raises OSError."""
        if self._fd is not None:
            os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def _header_gen(line: bytes) -> int | None:
    try:
        d = json.loads(line)
    except ValueError:
        return None
    return d.get("g") if isinstance(d, dict) and d.get(_HEADER) == 1 and isinstance(d.get("g"), int) else None


def _preallocate(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of ``fd`` on its disk (no-op for what already is). raises OSError."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    have = os.fstat(fd).st_size  # a file system without fallocate: write the zeros
    chunk = b"\0" * 2**16
    while have < size:
        have += os.pwrite(fd, chunk[: size - have], have)
    os.fsync(fd)


# ---------------------------------------------------------------- rows as JSON (the reserve and the dump)

def row_json(kind: str, row: Any) -> dict[str, Any]:
    """One queued row as a JSON object with a ``record`` key (``add_row`` reads it back)."""
    if kind == "message":
        return {"record": "message", **_message_json(row)}
    if kind == "usage":
        return {"record": "usage", **_usage_json(row)}
    if kind == "recall":
        return {"record": "recall", "chat_id": row[0], "reply_message_id": row[1], "memory_message_id": row[2],
                "score": row[3]}
    if kind == "chat":
        return {"record": "chat", "chat_id": row[0], "type": row[1], "title": row[2], "created_us": row[3]}
    if kind == "delivery":
        return {"record": "delivery", "chat_id": row[0], "message_id": row[1], "sent_us": row[2]}
    if kind == "sql":
        return {"record": "sql", "sql": row[0], "params": row[1]}
    raise ValueError(f"unknown row kind {kind!r}")


def add_row(batch: Batch, d: dict[str, Any]) -> bool:
    """Append the row ``d`` (``row_json``'s shape; a line without ``record`` is a message of the
    dump's transcript) to ``batch``. False when it is not a row that can be read back."""
    try:
        kind = d.get("record", "message")
        if kind == "message":
            batch.messages.append(StoredMessage(
                int(d["chat_id"]), int(d["message_id"]), int(d["user_id"]), str(d["user"]), str(d["text"]),
                _utc(d["date"]), d.get("role") or ROLE_USER, _opt_int(d.get("reply_to")), _opt_int(d.get("thread_id")),
                bool(d.get("imported", False))))
        elif kind == "usage":
            batch.usage.append(UsageRecord(
                _utc(d["ts"]), int(d["chat_id"]), int(d["user_id"]), str(d["kind"]), str(d["model"]),
                int(d["prompt_tokens"]), int(d["completion_tokens"]),
                None if d.get("cost_usd") is None else float(d["cost_usd"]), float(d["latency_ms"]),
                float(d.get("seconds") or 0), int(d.get("images") or 0), int(d.get("pages") or 0)))
        elif kind == "recall":
            batch.recalls.append((int(d["chat_id"]), int(d["reply_message_id"]), int(d["memory_message_id"]),
                                  float(d["score"])))
        elif kind == "chat":
            created = d.get("created_us")
            if created is None:
                created = int(datetime.now(UTC).timestamp() * 1_000_000)
            batch.chats.append((int(d["chat_id"]), str(d["type"]), d.get("title"), int(created)))
        elif kind == "delivery":
            batch.deliveries.append((int(d["chat_id"]), int(d["message_id"]), int(d["sent_us"])))
        elif kind == "sql":
            if not isinstance(d["sql"], str) or not isinstance(d["params"], list):
                return False
            batch.sql.append((d["sql"], d["params"]))
        else:
            return False
    except (KeyError, TypeError, ValueError):
        return False
    return True


def load_unsaved(paths: Iterable[Path]) -> tuple[Batch, list[str]]:
    """The rows of ``save_unsaved``'s files (``<base>.jsonl`` and ``<base>.other.jsonl``), in one
    batch, and a ``"file:line: why"`` for each line that could not be read. raises OSError."""
    batch, bad = Batch(), []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except ValueError as exc:
                    bad.append(f"{path}:{n}: not JSON ({exc})")
                    continue
                if not isinstance(d, dict) or not add_row(batch, d):
                    bad.append(f"{path}:{n}: not a row of a dump")
    return batch, bad


def unsaved_files(directory: Path, prefix: str) -> Iterator[tuple[str, list[Path]]]:
    """``(base name, [files])`` of every ``save_unsaved`` dump named ``<prefix>.unsaved-…`` in
    ``directory``, oldest first (the name holds its UTC time)."""
    groups: dict[str, list[Path]] = {}
    for p in directory.glob(f"{prefix}.unsaved-*.jsonl"):
        base = p.name.removesuffix(".jsonl").removesuffix(".other")
        groups.setdefault(base, []).append(p)
    for base in sorted(groups):
        yield base, sorted(groups[base], key=lambda p: p.name.endswith(".other.jsonl"))


def _utc(text: Any) -> datetime:
    d = datetime.fromisoformat(str(text))
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


# ---------------------------------------------------------------- rows that could not be written

def save_unsaved(batch: Batch, base: Path) -> None:
    """Write rows a store could not commit at shutdown (and its reserve does not hold) next to it:
    ``<base>.jsonl`` holds the messages as a transcript (docs/design.md §9, importable with ``kith
    import``), ``<base>.other.jsonl`` the chats, usage, recalls and deliveries (one JSON object per line with a
    ``record`` key); both are synced, and the store reads them back in at its next open
    (``load_unsaved``). Logs CRITICAL with where they went; a dump that cannot be written is removed
    (no half-written file that looks like a backup) and the loss is logged CRITICAL."""
    n = len(batch)
    written: list[str] = []
    try:
        if batch.messages:
            written.append(f"{base}.jsonl")
            with open(f"{base}.jsonl", "a", encoding="utf-8") as f:
                for m in batch.messages:
                    f.write(json.dumps(_message_json(m)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        if batch.usage or batch.recalls or batch.chats or batch.deliveries or batch.sql:
            written.append(f"{base}.other.jsonl")
            with open(f"{base}.other.jsonl", "a", encoding="utf-8") as f:
                for kind, rows in (("chat", batch.chats), ("usage", batch.usage), ("recall", batch.recalls),
                                   ("delivery", batch.deliveries), ("sql", batch.sql)):
                    for r in rows:
                        f.write(json.dumps(row_json(kind, r)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        log.critical("dialogue store: %d unsaved rows written to %s.*jsonl (stored at the next start)", n, base)
    except Exception as exc:
        for name in written:
            with contextlib.suppress(OSError):
                os.unlink(name)
        log.critical("dialogue store: %d rows not stored (%d messages), and they cannot be written to %s.*jsonl "
                     "either: %s", n, len(batch.messages), base, exc)


def _iso(d: Any) -> Any:
    return d.isoformat() if isinstance(d, datetime) else repr(d)


def _message_json(m: StoredMessage) -> dict[str, Any]:
    """A message as one transcript JSONL object (docs/design.md §9, plus ``role``)."""
    d = {"chat_id": m.chat_id, "message_id": m.message_id, "date": _iso(m.date), "user": m.user_name,
         "user_id": m.user_id, "text": m.text, "role": m.role}
    if m.reply_to is not None:
        d["reply_to"] = m.reply_to
    if m.thread_id is not None:
        d["thread_id"] = m.thread_id
    if m.imported:
        d["imported"] = True
    return d


def _usage_json(u: UsageRecord) -> dict[str, Any]:
    return {"ts": _iso(u.ts), "chat_id": u.chat_id, "user_id": u.user_id, "kind": u.kind, "model": u.model,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "cost_usd": u.cost_usd,
            "latency_ms": u.latency_ms, "seconds": u.seconds, "images": u.images, "pages": u.pages}
