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

import errno
import logging
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from .batch import Batch, ChatRow, DeliveryRow, RecallRow, SqlRow
from .errors import DiskFull, MemoryStoreError, is_disk_full
from .reserve import Journal
from .types import ROLE_ASSISTANT, StoredMessage, UsageRecord

__all__ = ["MAX_BACKOFF_S", "START_FREE_BYTES", "WriteBehind"]

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0

#: Free space below which a disk counts as already full at start: intake is refused from the start
#: (one DiskFull line where a message is refused) instead of at the first commit that fails. Small on
#: purpose: the reserve already keeps what a nearly full disk cannot commit.
START_FREE_BYTES = 256 * 2**10  # one DuckDB block

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
