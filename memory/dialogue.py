"""The dialogue store: every message, chat, user, usage record and recall, in one DuckDB file.

One process owns the file (DuckDB takes an exclusive lock; a second process gets ``StoreLocked``).
The store holds one connection; every DuckDB call runs in a worker thread behind a
``CapacityLimiter(1)``, never on the event loop.

Writes of the hot path (``add``, ``add_many``, ``record_usage``, ``record_recall``) only enqueue (no
``await``); a single writer task commits the queue in batches: it waits up to ``flush_interval_s``
after the first queued row, or until ``flush_rows`` rows are queued, or until someone calls
``flush()``, then inserts everything queued in one transaction (one pyarrow table per table, one
``INSERT … SELECT`` each). A commit costs milliseconds; one per message would cap throughput.

Guarantees:
- Idempotent messages: ``(chat_id, message_id)`` is the key; the first write wins (a re-delivered
  update, or a duplicate inside one batch, is stored once).
- Read-your-writes: every read that may depend on queued rows flushes first.
- No queued row is lost silently: a batch that fails on bad data is retried row by row; rows that can
  never be stored (e.g. a lone UTF-16 surrogate in ``text``, an id beyond 64 bits) are logged at ERROR
  and counted in ``dropped_rows``. When the database itself fails (I/O, disk full), rows stay queued
  and are retried with backoff; ``flush()`` raises ``MemoryStoreError`` meanwhile; if they still cannot
  be written at shutdown they are dumped next to the database as ``<file>.unsaved-<utc>.jsonl``
  (messages, in the transcript format of DESIGN §9, importable with ``kith import``) and
  ``<file>.unsaved-<utc>.other.jsonl`` (usage and recalls).
- Timestamps are stored as ``TIMESTAMPTZ`` and returned as tz-aware UTC ``datetime``; a naive
  ``datetime`` given to the store is taken as UTC.

Awaited writes (``set_chat_settings``, ``set_user_settings``, ``delete_messages``) commit before they
return; ``upsert_chat`` is queued with the hot-path writes (it only names the chat).

A directory of the small tables lives in memory, loaded at open and kept by every write (this process
is the file's only writer): chat rows and settings, the non-empty user settings, and the set of chats
that have messages. So a new chat's first turn reads nothing from DuckDB (its settings, its sender's
settings and its empty recent window come from the directory), and a read of one chat waits only for
that chat's queued rows, not for everyone's. ``add`` and friends must be called from the event-loop thread.

Usage::

    async with DialogueStore(Path("data/kith.duckdb")) as store:
        store.add(msg)
        window = await store.recent(msg.chat_id, 20)
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import duckdb
import pyarrow as pa

from .errors import DiskFull, MemoryStoreError, StoreLocked, is_disk_full
from .schema import from_us, migrate, to_us
from .types import DOC_ID_BASE, MIGRATION_SHIFT, DocumentChunk, DocumentInfo, MemoryHit, StoredMessage, UsageRecord

log = logging.getLogger(__name__)

# Errors of the database itself (not of one row): rows stay queued and are retried.
_SYSTEMIC: tuple[type[BaseException], ...] = (
    duckdb.IOException,
    duckdb.FatalException,
    duckdb.InternalException,
    duckdb.OutOfMemoryException,
    duckdb.ConnectionException,
    duckdb.PermissionException,
    duckdb.InterruptException,
    duckdb.TransactionException,
    MemoryError,
)

_MSG_COLS = "chat_id, message_id, user_id, user_name, text, epoch_us(date), role, reply_to, thread_id"
_TS = "make_timestamp({}) AT TIME ZONE 'UTC'"  # BIGINT µs since epoch (UTC) -> TIMESTAMPTZ
_MAX_BACKOFF_S = 5.0

# Files open in this process: DuckDB would silently share one database between two connects of the
# same path in one process, so the one-owner rule is enforced here too.
_OPEN_PATHS: set[str] = set()


def _row_to_msg(r: tuple) -> StoredMessage:
    return StoredMessage(r[0], r[1], r[2], r[3], r[4], from_us(r[5]), r[6], r[7], r[8])


@dataclass(frozen=True, slots=True)
class ChatInfo:
    """A chat known to the store. type: ``private|group|supergroup|channel|unknown`` (``unknown`` when
    messages exist but ``upsert_chat`` was never called). messages: stored message count.
    first_date/last_date: tz-aware UTC dates of the oldest/newest stored message, None if none."""

    chat_id: int
    type: str
    title: str | None
    messages: int
    first_date: datetime | None
    last_date: datetime | None


@dataclass(eq=False)
class _Batch:
    messages: list[StoredMessage]
    usage: list[UsageRecord]
    recalls: list[tuple[int, int, int, float]]
    chats: list[tuple[int, str, str | None, int]]  # (chat_id, type, title, created_at µs)
    upto: int  # sequence number of the last enqueued row in this batch

    def __len__(self) -> int:
        return len(self.messages) + len(self.usage) + len(self.recalls) + len(self.chats)


@dataclass(eq=False)
class _Waiter:
    target: int
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class DialogueStore:
    """Async front of the DuckDB dialogue store (see the module docstring for the guarantees).

    path: the DuckDB file (parent directories are created). flush_interval_s: how long the writer
    lets rows accumulate after the first one before committing. flush_rows: commit at once when this
    many rows are queued (a commit takes everything queued, so batches grow under load).
    clock: returns the current tz-aware UTC time (``created_at`` columns, schema history).

    Counters for stats and tests: ``commits`` (transactions committed by the writer, plus one per row
    in a row-by-row retry), ``rows_written``, ``dropped_rows``.
    raises StoreLocked on open when another process holds the file; MemoryStoreError otherwise.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_interval_s: float = 0.05,
        flush_rows: int = 2000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self.flush_rows = max(1, flush_rows)
        self._clock = clock
        self._con: duckdb.DuckDBPyConnection | None = None
        self._key = ""
        self._limiter = anyio.CapacityLimiter(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._open = False
        self._closing = False
        self._q_messages: list[StoredMessage] = []
        self._q_usage: list[UsageRecord] = []
        self._q_recalls: list[tuple[int, int, int, float]] = []
        self._q_chats: list[tuple[int, str, str | None, int]] = []
        # the directory (see the module docstring): chat_id -> (type, title, settings JSON text);
        # user_id -> settings JSON text (non-empty only); chats with stored or queued messages;
        # chat_id -> sequence number of its newest queued message (until committed)
        self._chat_rows: dict[int, tuple[str, str | None, str]] = {}
        self._user_rows: dict[int, str] = {}
        self._chats_with_messages: set[int] = set()
        self._chats_with_documents: set[int] = set()
        self._queued_for_chat: dict[int, int] = {}
        self._seq = 0  # rows enqueued so far
        self._done_seq = 0  # every row up to this one is committed (or dropped as unstorable)
        self._enqueue_times: deque[tuple[int, float]] = deque()  # (seq, monotonic s) of each enqueue not committed yet
        self._waiters: list[_Waiter] = []
        self._wakeup = anyio.Event()  # something was enqueued, or closing
        self._hurry = anyio.Event()  # commit now: flush requested, flush_rows reached, or closing
        self._writer_done = anyio.Event()
        self._write_error: BaseException | None = None
        self.schema_version: int | None = None
        self.disk_full: DiskFull | None = None  # set while commits fail for lack of space
        self.commits = 0
        self.rows_written = 0
        self.dropped_rows = 0

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> DialogueStore:
        await anyio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
        self._open = True
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._writer, name="dialogue-writer")
        return self

    async def __aexit__(self, *exc) -> bool | None:
        self._closing = True
        self._wakeup.set()
        self._hurry.set()
        assert self._tg is not None
        with anyio.CancelScope(shield=True):
            await self._writer_done.wait()
            self._open = False
            if self._con is not None:
                try:
                    await anyio.to_thread.run_sync(self._con.close, limiter=self._limiter)
                finally:
                    self._con = None
                    _OPEN_PATHS.discard(self._key)
        if exc[0] is None or issubclass(exc[0], anyio.get_cancelled_exc_class()):
            return await self._tg.__aexit__(*exc)
        # The writer has finished; close the task group without handing it the body's exception, so
        # that exception propagates as itself rather than wrapped in an ExceptionGroup.
        await self._tg.__aexit__(None, None, None)
        return False

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _OPEN_PATHS:
            raise StoreLocked(f"{self.path} is already open in this process (one DialogueStore per file)")
        try:
            con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreLocked(
                    f"{self.path} is in use by another process (most likely a running Kith bot). "
                    f"Stop the bot, or go through it, and retry. DuckDB said: {exc}"
                ) from exc
            raise MemoryStoreError(f"cannot open {self.path}: {exc}") from exc
        except duckdb.Error as exc:
            raise MemoryStoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            con.execute("SET TimeZone = 'UTC'")
            _, self.schema_version = migrate(con, clock=self._clock)
            self._load_directory(con)
        except BaseException:
            con.close()
            raise
        self._con = con
        self._key = key
        _OPEN_PATHS.add(key)

    def _load_directory(self, con: duckdb.DuckDBPyConnection) -> None:
        self._chat_rows = {r[0]: (r[1], r[2], r[3] or "{}") for r in con.execute(
            "SELECT chat_id, type, title, settings::VARCHAR FROM chats").fetchall()}
        self._user_rows = {r[0]: r[1] for r in con.execute(
            "SELECT user_id, settings::VARCHAR FROM users WHERE settings::VARCHAR NOT IN ('{}', 'null')").fetchall()}
        self._chats_with_messages = {r[0] for r in con.execute("SELECT DISTINCT chat_id FROM messages").fetchall()}
        self._chats_with_documents = {r[0] for r in con.execute("SELECT DISTINCT chat_id FROM documents").fetchall()}

    # ------------------------------------------------------------ enqueue (non-blocking)

    def add(self, msg: StoredMessage) -> None:
        """Queue one message for the writer. Returns at once; ``flush()`` waits for the commit.

        Idempotent on ``(chat_id, message_id)``: the first write wins. raises MemoryStoreError when the
        store is not open; DiskFull once a commit failed for lack of space (intake stops; it clears
        when a later commit succeeds).
        """
        self.add_many((msg,))

    def add_many(self, msgs: Iterable[StoredMessage]) -> None:
        """Queue many messages (see ``add``)."""
        self._check_writable()
        batch = list(msgs)
        self._q_messages.extend(batch)
        self._enqueued(len(batch))
        for m in batch:
            self._chats_with_messages.add(m.chat_id)
            self._queued_for_chat[m.chat_id] = self._seq

    def record_usage(self, rec: UsageRecord) -> None:
        """Queue one usage record (one billed call)."""
        self._check_writable()
        self._q_usage.append(rec)
        self._enqueued(1)

    def record_recall(self, chat_id: int, reply_message_id: int, hits: Sequence[MemoryHit]) -> None:
        """Queue which memories were injected into the reply ``reply_message_id`` of ``chat_id``, with
        their fused score. Recording the same (reply, memory) twice keeps the first.

        raises ValueError when a hit belongs to another chat (memory never crosses chats, DESIGN §5).
        """
        self._check_writable()
        rows = []
        for h in hits:
            if h.chat_id != chat_id:
                raise ValueError(f"recall for chat {chat_id} contains a memory of chat {h.chat_id}")
            rows.append((chat_id, reply_message_id, h.message_id, float(h.score)))
        self._q_recalls.extend(rows)
        self._enqueued(len(rows))

    def _check_writable(self) -> None:
        if not self._open or self._closing:
            raise MemoryStoreError("the dialogue store is not open")
        if self.disk_full is not None:
            raise self.disk_full

    def _disk_full(self, exc: BaseException, queued: int) -> DiskFull:
        """The DiskFull for a write of ``queued`` rows that failed with ``exc`` (the disk is full)."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = 0
        # the queued rows (~1 KB each with their indexes) and room for DuckDB's WAL and checkpoint
        need = max(queued * 1024, 0) + max(16 * 2**20, self._file_bytes() // 10)
        return DiskFull(self.path, free, need, unsaved=queued)

    def _file_bytes(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def _enqueued(self, n: int) -> None:
        if n <= 0:
            return
        self._seq += n
        self._enqueue_times.append((self._seq, time.monotonic()))
        self._wakeup.set()
        if self.pending >= self.flush_rows:
            self._hurry.set()

    @property
    def writer_lag_s(self) -> float:
        """Seconds the oldest row not yet committed has waited (0 when everything is committed)."""
        return time.monotonic() - self._enqueue_times[0][1] if self._enqueue_times else 0.0

    @property
    def pending(self) -> int:
        """Rows queued and not yet handed to the database."""
        return len(self._q_messages) + len(self._q_usage) + len(self._q_recalls) + len(self._q_chats)

    # ------------------------------------------------------------ writer

    async def flush(self) -> None:
        """Return when every row enqueued before the call is committed.

        raises MemoryStoreError when the database fails to write (the rows stay queued and are retried).
        """
        target = self._seq
        if self._done_seq >= target:
            return
        if not self._open and self._writer_done.is_set():
            raise MemoryStoreError("the dialogue store is closed with rows unsaved")
        waiter = _Waiter(target)
        self._waiters.append(waiter)
        self._hurry.set()
        self._wakeup.set()
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error

    async def _sync(self) -> None:
        """Read-your-writes: flush if anything is queued or being committed."""
        if self._seq > self._done_seq:
            await self.flush()

    async def _sync_chat(self, chat_id: int) -> None:
        """Read-your-writes for one chat's messages: flush only if that chat has rows queued or being
        committed (other chats' queued rows cannot change this chat's reads)."""
        if self._queued_for_chat.get(chat_id, 0) > self._done_seq:
            await self.flush()

    async def _writer(self) -> None:
        # Shielded: an outside cancellation must not drop queued rows; __aexit__ stops the writer.
        with anyio.CancelScope(shield=True):
            try:
                await self._writer_loop()
            finally:
                self._writer_done.set()
                waiters, self._waiters = self._waiters, []
                for w in waiters:  # only left when shutdown could not write everything
                    w.error = MemoryStoreError("the dialogue store closed with rows it could not write")
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
            ok = await self._commit_pending()
            if ok:
                backoff = 0.0
            elif self._closing:
                await anyio.to_thread.run_sync(self._dump_unsaved)
                return
            else:
                backoff = min(_MAX_BACKOFF_S, max(0.1, backoff * 2))

    async def _commit_pending(self) -> bool:
        batch = _Batch(self._q_messages, self._q_usage, self._q_recalls, self._q_chats, self._seq)
        committed = batch.messages
        self._q_messages, self._q_usage, self._q_recalls, self._q_chats = [], [], [], []
        try:
            await anyio.to_thread.run_sync(self._write_sync, batch, limiter=self._limiter)
        except Exception as exc:  # noqa: BLE001 - systemic: keep what is left of the batch queued
            self._q_messages[:0] = batch.messages
            self._q_usage[:0] = batch.usage
            self._q_recalls[:0] = batch.recalls
            self._q_chats[:0] = batch.chats
            self._write_error = exc
            err: MemoryStoreError
            if is_disk_full(exc):
                first = self.disk_full is None
                err = self.disk_full = self._disk_full(exc, self.pending)
                if first:
                    log.error("dialogue store: %s", err)
            else:
                log.error("dialogue store: writing %d rows failed, kept queued for retry: %s", len(batch), exc)
                err = MemoryStoreError(f"dialogue store cannot write ({len(batch)} rows kept queued for a retry): {exc}")
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.error = err
                w.done.set()
            return False
        self._write_error = None
        if self.disk_full is not None:
            log.info("dialogue store: writing again (space was freed)")
            self.disk_full = None
        self._done_seq = batch.upto
        while self._enqueue_times and self._enqueue_times[0][0] <= self._done_seq:
            self._enqueue_times.popleft()
        for chat_id in {m.chat_id for m in committed}:
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

    def _write_sync(self, batch: _Batch) -> None:
        """Worker thread: commit ``batch`` in one transaction, else row by row. Systemic errors raise
        with ``batch`` trimmed to the rows not yet written."""
        con = self._conn()
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                if batch.messages:
                    self._insert_arrow(con, "messages", _messages_table(batch.messages))
                if batch.usage:
                    self._insert_arrow(con, "usage", _usage_table(batch.usage))
                if batch.recalls:
                    self._insert_arrow(con, "recalls", _recalls_table(batch.recalls))
                if batch.chats:
                    self._insert_arrow(con, "chats", _chats_table(batch.chats))
                con.execute("COMMIT")
            except BaseException:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                raise
        except _SYSTEMIC:
            raise
        except Exception as exc:  # noqa: BLE001 - bad data somewhere in the batch
            log.warning("dialogue store: batch of %d rows failed (%s); retrying row by row", len(batch), exc)
            self._write_rows_sync(con, batch)
            return
        self.commits += 1
        self.rows_written += len(batch)
        batch.messages, batch.usage, batch.recalls, batch.chats = [], [], [], []

    @staticmethod
    def _insert_arrow(con, table: str, tbl: pa.Table) -> None:
        name = f"_kith_{table}_batch"
        con.register(name, tbl)
        try:
            con.execute(_INSERT_SELECT[table].format(src=name))
        finally:
            con.unregister(name)

    def _write_rows_sync(self, con, batch: _Batch) -> None:
        for attr, sql, params in (
            ("messages", _INSERT_ROW["messages"], _message_params),
            ("usage", _INSERT_ROW["usage"], _usage_params),
            ("recalls", _INSERT_ROW["recalls"], lambda r: list(r)),
            ("chats", _INSERT_ROW["chats"], lambda r: list(r)),
        ):
            rows = getattr(batch, attr)
            i = 0
            try:
                while i < len(rows):
                    row = rows[i]
                    try:
                        con.execute(sql, params(row))
                        self.commits += 1
                        self.rows_written += 1
                    except _SYSTEMIC:
                        raise
                    except Exception as exc:  # noqa: BLE001 - this row can never be stored
                        self.dropped_rows += 1
                        log.error("dialogue store: dropped an unstorable %s row %s: %s", attr, _describe(row), exc)
                    i += 1
            finally:
                setattr(batch, attr, rows[i:])

    def _dump_unsaved(self) -> None:
        """Shutdown with a failing database: write the queued rows next to the database file."""
        if not self.pending:
            return
        stamp = self._clock().astimezone(UTC).strftime("%Y%m%dT%H%M%S")
        base = self.path.with_name(f"{self.path.name}.unsaved-{stamp}")
        written: list[str] = []
        try:
            if self._q_messages:
                written.append(f"{base}.jsonl")
                with open(f"{base}.jsonl", "a", encoding="utf-8") as f:
                    for m in self._q_messages:
                        f.write(json.dumps(_message_json(m)) + "\n")
            if self._q_usage or self._q_recalls or self._q_chats:
                written.append(f"{base}.other.jsonl")
                with open(f"{base}.other.jsonl", "a", encoding="utf-8") as f:
                    for c in self._q_chats:
                        f.write(json.dumps({"record": "chat", "chat_id": c[0], "type": c[1], "title": c[2]}) + "\n")
                    for u in self._q_usage:
                        f.write(json.dumps({"record": "usage", **_usage_json(u)}) + "\n")
                    for r in self._q_recalls:
                        f.write(json.dumps({"record": "recall", "chat_id": r[0], "reply_message_id": r[1],
                                            "memory_message_id": r[2], "score": r[3]}) + "\n")
            log.critical("dialogue store: %d unsaved rows written to %s.*jsonl", self.pending, base)
        except Exception as exc:  # noqa: BLE001
            for name in written:  # no half-written dump that looks like a backup
                with contextlib.suppress(OSError):
                    os.unlink(name)
            log.critical("dialogue store: %d rows not stored (%d messages), and they cannot be written to %s.*jsonl "
                         "either: %s", self.pending, len(self._q_messages), base, exc)

    # ------------------------------------------------------------ plumbing

    def _conn(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise MemoryStoreError("the dialogue store is not open")
        return self._con

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self._open:
            raise MemoryStoreError("the dialogue store is not open")
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except duckdb.Error as exc:
            if is_disk_full(exc):
                raise self._disk_full(exc, self.pending) from exc
            raise

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        def run() -> list[tuple]:
            return self._conn().execute(sql, list(params)).fetchall()

        return await self._run(run)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one SQL statement on the store's connection, after committing the queued writes, and
        return its rows. For modules that keep their own tables in this file (``tiers``: subscriptions,
        payments). Timestamps go in as ``make_timestamp(µs) AT TIME ZONE 'UTC'`` and come out with
        ``epoch_us(col)`` (see ``to_us``/``from_us``). Each call is its own transaction."""
        await self._sync()
        return await self._query(sql, params)

    # ------------------------------------------------------------ messages: reads

    async def recent(
        self, chat_id: int, limit: int, *, thread_id: int | None = None, before_id: int | None = None,
        general_only: bool = False,
    ) -> list[StoredMessage]:
        """The newest ``limit`` messages of ``chat_id`` (only thread ``thread_id`` if given; only the
        messages outside any thread with ``general_only``; only ids below ``before_id`` if given),
        returned oldest → newest by message id."""
        if limit <= 0 or chat_id not in self._chats_with_messages:
            return []
        await self._sync_chat(chat_id)
        sql = f"SELECT {_MSG_COLS} FROM messages WHERE chat_id = ?"
        params: list[Any] = [chat_id]
        if thread_id is not None:
            sql += " AND thread_id = ?"
            params.append(thread_id)
        elif general_only:
            sql += " AND thread_id IS NULL"
        if before_id is not None:
            sql += " AND message_id < ?"
            params.append(before_id)
        sql += " ORDER BY message_id DESC LIMIT ?"
        params.append(limit)
        rows = await self._query(sql, params)
        return [_row_to_msg(r) for r in reversed(rows)]

    async def get_messages(self, chat_id: int, message_ids: Sequence[int]) -> list[StoredMessage]:
        """The stored messages of ``chat_id`` among ``message_ids``, ordered by message id (missing
        ids are skipped)."""
        if not message_ids or chat_id not in self._chats_with_messages:
            return []
        await self._sync_chat(chat_id)
        rows = await self._query(
            f"SELECT {_MSG_COLS} FROM messages WHERE chat_id = ? AND message_id IN (SELECT unnest(?::BIGINT[]))"
            " ORDER BY message_id",
            [chat_id, list(message_ids)],
        )
        return [_row_to_msg(r) for r in rows]

    async def around(
        self, chat_id: int, message_ids: Sequence[int], before: int, after: int
    ) -> dict[int, list[StoredMessage]]:
        """For each stored id in ``message_ids``: up to ``before`` messages preceding it, itself, and up
        to ``after`` following it, by message-id order within ``chat_id``, oldest → newest.
        Ids that are not stored are absent from the result."""
        if not message_ids or chat_id not in self._chats_with_messages:
            return {}
        await self._sync_chat(chat_id)
        before, after = max(0, before), max(0, after)
        rows = await self._query(
            f"""
            WITH m AS (
                SELECT {_MSG_COLS}, row_number() OVER (ORDER BY message_id) AS rn
                FROM messages WHERE chat_id = ?
            ),
            c AS (SELECT message_id AS center, rn AS crn FROM m
                  WHERE message_id IN (SELECT unnest(?::BIGINT[])))
            SELECT c.center, m.* EXCLUDE (rn) FROM c JOIN m ON m.rn BETWEEN c.crn - ? AND c.crn + ?
            ORDER BY c.center, m.message_id
            """,
            [chat_id, list(message_ids), before, after],
        )
        out: dict[int, list[StoredMessage]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(_row_to_msg(r[1:]))
        return out

    async def answered_ids(self, chat_id: int) -> set[int]:
        """The ids of ``chat_id``'s messages the bot has replied to: its stored replies' ``reply_to``
        and the deliveries noted by ``note_delivery``. The durable record that keeps a restart, a
        replay or a re-delivered update from answering twice."""
        if chat_id not in self._chats_with_messages:
            return set()
        await self._sync_chat(chat_id)
        rows = await self._query(
            "SELECT reply_to FROM messages WHERE chat_id = ? AND role = 'assistant' AND reply_to IS NOT NULL"
            " UNION SELECT message_id FROM deliveries WHERE chat_id = ?",
            [chat_id, chat_id])
        return {r[0] for r in rows}

    async def note_delivery(self, chat_id: int, message_id: int) -> None:
        """Durably note that a reply to ``message_id`` is about to be sent: commits the chat's queued
        messages (the message itself included) and a ``deliveries`` row before it returns. Called before the
        reply's first byte leaves, so a crash at any later moment never answers the message again
        (at most once: a crash between this commit and the send leaves it unanswered).
        raises MemoryStoreError when the database cannot write."""
        await self._sync_chat(chat_id)
        self._chats_with_messages.add(chat_id)
        await self._query(
            f"INSERT OR IGNORE INTO deliveries VALUES (?, ?, {_TS.format('?')})",
            [chat_id, message_id, to_us(self._clock())])

    async def note_evictions(self, chat_id: int, message_ids: Sequence[int]) -> None:
        """Record that the memories of ``message_ids`` were dropped on purpose (capacity cleanup over a
        memory limit; the messages stay readable): the start-up gap check and ``kith memory reindex``
        do not embed them again. Committed before it returns."""
        if not message_ids:
            return
        await self._query(
            f"INSERT OR IGNORE INTO memory_evictions SELECT ?, unnest(?::BIGINT[]), {_TS.format('?')}",
            [chat_id, list(message_ids), to_us(self._clock())])

    async def memory_ids(self, chat_id: int | None = None) -> dict[int, set[int]]:
        """Per chat, the ids vector memory should hold: every stored user message with text (some
        may be whitespace only: the indexer skips those) and every document chunk
        (``chunk_memory_id``), minus what the capacity cleanup evicted; of one chat, or of all.
        Commits queued writes first."""
        await self._sync()
        only = "" if chat_id is None else f" AND chat_id = {int(chat_id)}"
        rows = await self._query(
            f"""
            SELECT chat_id, message_id FROM messages m
             WHERE role = 'user' AND length(text) > 0{only}
               AND NOT EXISTS (SELECT 1 FROM memory_evictions e WHERE e.chat_id = m.chat_id AND e.message_id = m.message_id)
            UNION ALL
            SELECT chat_id, ? + message_id * 65536 + chunk FROM document_chunks c
             WHERE true{only}
               AND NOT EXISTS (SELECT 1 FROM memory_evictions e WHERE e.chat_id = c.chat_id AND e.message_id = c.message_id)
            """,
            [DOC_ID_BASE])
        out: dict[int, set[int]] = {}
        for chat_id, mid in rows:
            out.setdefault(chat_id, set()).add(mid)
        return out

    # ------------------------------------------------------------ group → supergroup

    async def migrate_chat(self, old: int, new: int, *, title: str | None = None) -> int:
        """Move basic group ``old`` to supergroup ``new`` (Telegram's ``migrate_to_chat_id``), in one
        transaction: its messages (as ``migrated_id``: negative, so they stay older than the
        supergroup's own, which restart at 1), replies, recalls, documents, deliveries and
        evictions; its usage rows; its settings (under the new chat's own); its subscription and
        API keys (unless the new chat has its own). Returns the messages moved (0 when there was
        nothing left to move: a second call is harmless)."""
        await self._sync()
        shift = MIGRATION_SHIFT
        old_settings = json.loads(self._chat_rows.get(old, ("", None, "{}"))[2] or "{}")
        new_row = self._chat_rows.get(new)
        settings = dict(old_settings)
        if isinstance(settings.get("context_from"), int):
            settings["context_from"] -= shift
        settings.update(json.loads(new_row[2] or "{}") if new_row else {})
        doc = _json_object(settings)
        title = title or (new_row[1] if new_row else None) or self._chat_rows.get(old, ("", None, ""))[1]

        def run() -> int:
            con = self._conn()
            con.execute("BEGIN TRANSACTION")
            try:
                moved = con.execute(
                    "INSERT OR IGNORE INTO messages (chat_id, message_id, thread_id, user_id, user_name, role, text, reply_to, date)"
                    " SELECT ?, message_id - ?, thread_id, user_id, user_name, role, text, reply_to - ?, date"
                    " FROM messages WHERE chat_id = ?", [new, shift, shift, old]).fetchone() or (0,)
                moved = moved[0]
                con.execute("INSERT OR IGNORE INTO recalls SELECT ?, reply_message_id - ?, memory_message_id - ?, score"
                            " FROM recalls WHERE chat_id = ?", [new, shift, shift, old])
                con.execute("INSERT OR IGNORE INTO documents SELECT * REPLACE (? AS chat_id, message_id - ? AS message_id)"
                            " FROM documents WHERE chat_id = ?", [new, shift, old])
                con.execute("INSERT OR IGNORE INTO document_chunks SELECT * REPLACE (? AS chat_id, message_id - ? AS message_id)"
                            " FROM document_chunks WHERE chat_id = ?", [new, shift, old])
                for table in ("deliveries", "memory_evictions"):
                    con.execute(f"INSERT OR IGNORE INTO {table} SELECT * REPLACE (? AS chat_id, message_id - ? AS message_id)"
                                f" FROM {table} WHERE chat_id = ?", [new, shift, old])
                for table in ("messages", "recalls", "documents", "document_chunks", "deliveries", "memory_evictions"):
                    con.execute(f"DELETE FROM {table} WHERE chat_id = ?", [old])
                con.execute("UPDATE usage SET chat_id = ? WHERE chat_id = ?", [new, old])
                for table in ("subscriptions", "api_keys"):  # the new chat's own wins
                    con.execute(f"INSERT OR IGNORE INTO {table} SELECT * REPLACE (? AS scope_id) FROM {table}"
                                " WHERE scope = 'chat' AND scope_id = ?", [new, old])
                    con.execute(f"DELETE FROM {table} WHERE scope = 'chat' AND scope_id = ?", [old])
                con.execute(
                    f"INSERT INTO chats (chat_id, type, title, settings, created_at) VALUES (?, 'supergroup', ?, ?, {_TS.format('?')})"
                    " ON CONFLICT (chat_id) DO UPDATE SET type = 'supergroup', title = excluded.title, settings = excluded.settings",
                    [new, title, doc, to_us(self._clock())])
                con.execute("DELETE FROM chats WHERE chat_id = ?", [old])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return int(moved)

        moved = await self._run(run)
        self._chat_rows[new] = ("supergroup", title, doc)
        self._chat_rows.pop(old, None)
        if old in self._chats_with_messages:
            self._chats_with_messages.discard(old)
            self._chats_with_messages.add(new)
        if old in self._chats_with_documents:
            self._chats_with_documents.discard(old)
            self._chats_with_documents.add(new)
        return moved

    # ------------------------------------------------------------ users' own API keys (providers.keys)

    async def set_api_key(self, scope: str, scope_id: int, provider: str, token: bytes, hint: str) -> None:
        """Store the encrypted ``token`` of ``scope:scope_id``'s key for ``provider`` (replacing one)."""
        await self._query(
            f"INSERT OR REPLACE INTO api_keys VALUES (?, ?, ?, ?, ?, {_TS.format('?')})",
            [scope, scope_id, provider, token, hint, to_us(self._clock())])

    async def api_key_token(self, scope: str, scope_id: int, provider: str) -> bytes | None:
        rows = await self._query("SELECT token FROM api_keys WHERE scope = ? AND scope_id = ? AND provider = ?",
                                 [scope, scope_id, provider])
        return bytes(rows[0][0]) if rows else None

    async def api_keys(self, scope: str, scope_id: int) -> list[tuple[str, str, datetime]]:
        """``(provider, hint, updated_at)`` of the scope's keys, by provider."""
        rows = await self._query("SELECT provider, hint, epoch_us(updated_at) FROM api_keys WHERE scope = ? AND scope_id = ?"
                                 " ORDER BY provider", [scope, scope_id])
        return [(p, h, from_us(t)) for p, h, t in rows]

    async def delete_api_keys(self, scope: str, scope_id: int, provider: str | None = None) -> int:
        """Delete the scope's key for ``provider`` (every key when None); returns how many."""
        sql, params = "DELETE FROM api_keys WHERE scope = ? AND scope_id = ?", [scope, scope_id]
        if provider is not None:
            sql += " AND provider = ?"
            params.append(provider)
        return len(await self._query(sql + " RETURNING provider", params))

    async def evicted_ids(self, chat_id: int) -> set[int]:
        """Message ids of ``chat_id`` whose memory the capacity cleanup evicted (``note_evictions``)."""
        rows = await self._query("SELECT message_id FROM memory_evictions WHERE chat_id = ?", [chat_id])
        return {r[0] for r in rows}

    async def max_message_id(self, chat_id: int) -> int | None:
        """The highest stored message id of ``chat_id``; None when the chat has no messages."""
        if chat_id not in self._chats_with_messages:
            return None
        await self._sync_chat(chat_id)
        rows = await self._query("SELECT max(message_id) FROM messages WHERE chat_id = ?", [chat_id])
        return rows[0][0]

    async def count_messages(self, chat_id: int | None = None, *, user_id: int | None = None) -> int:
        """Stored messages, in one chat and/or by one sender (all when both are None)."""
        await self._sync()
        sql, params = "SELECT count(*) FROM messages WHERE true", []
        if chat_id is not None:
            sql += " AND chat_id = ?"
            params.append(chat_id)
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        return int((await self._query(sql, params))[0][0])

    async def iter_messages(self, chat_id: int | None = None, *, batch: int = 5000) -> AsyncIterator[list[StoredMessage]]:
        """Every stored message (of one chat, or all), in pages of at most ``batch``, ordered by
        ``(chat_id, message_id)``. Keyset-paginated, so it tolerates writes between pages."""
        await self._sync()
        batch = max(1, batch)
        last: tuple[int, int] | None = None
        while True:
            sql, params = f"SELECT {_MSG_COLS} FROM messages WHERE true", []
            if chat_id is not None:
                sql += " AND chat_id = ?"
                params.append(chat_id)
            if last is not None:
                sql += " AND (chat_id > ? OR (chat_id = ? AND message_id > ?))"
                params += [last[0], last[0], last[1]]
            sql += " ORDER BY chat_id, message_id LIMIT ?"
            params.append(batch)
            rows = await self._query(sql, params)
            if not rows:
                return
            yield [_row_to_msg(r) for r in rows]
            if len(rows) < batch:
                return
            last = (rows[-1][0], rows[-1][1])

    # ------------------------------------------------------------ messages: delete

    async def delete_messages(
        self, chat_id: int, *, user_id: int | None = None, message_ids: Sequence[int] | None = None
    ) -> list[int]:
        """Delete messages of ``chat_id`` — all of them, or only ``user_id``'s, and/or only
        ``message_ids`` — and the recall rows that reference them, and the documents they carried
        (with their chunks). Returns the deleted message ids, ascending (so the caller can delete the
        same ids, and the chunks of those that carried documents, from vector memory)."""
        if message_ids is not None and not message_ids:
            return []
        await self._sync()
        cond = "chat_id = ?"
        params: list[Any] = [chat_id]
        if user_id is not None:
            cond += " AND user_id = ?"
            params.append(user_id)
        if message_ids is not None:
            cond += " AND message_id IN (SELECT unnest(?::BIGINT[]))"
            params.append(list(message_ids))

        def run() -> list[int]:
            con = self._conn()
            con.execute("BEGIN TRANSACTION")
            try:
                ids = sorted(r[0] for r in con.execute(f"DELETE FROM messages WHERE {cond} RETURNING message_id", params).fetchall())
                if ids:
                    con.execute(
                        "DELETE FROM recalls WHERE chat_id = ? AND (memory_message_id IN (SELECT unnest(?::BIGINT[]))"
                        " OR reply_message_id IN (SELECT unnest(?::BIGINT[])))",
                        [chat_id, ids, ids],
                    )
                    for table in ("document_chunks", "documents", "memory_evictions"):  # a document leaves with its message
                        con.execute(f"DELETE FROM {table} WHERE chat_id = ? AND message_id IN (SELECT unnest(?::BIGINT[]))",
                                    [chat_id, ids])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return ids

        return await self._run(run)

    async def update_text(self, chat_id: int, message_id: int, text: str) -> StoredMessage | None:
        """Replace the text of a stored message (an edit); returns the message as now stored, or None
        when it is not stored. Committed before it returns."""
        if chat_id not in self._chats_with_messages:
            return None
        await self._sync_chat(chat_id)
        rows = await self._query(
            f"UPDATE messages SET text = ? WHERE chat_id = ? AND message_id = ? RETURNING {_MSG_COLS}",
            [text, chat_id, message_id])
        return _row_to_msg(rows[0]) if rows else None

    # ------------------------------------------------------------ documents

    async def add_document(self, info: DocumentInfo, chunks: Sequence[DocumentChunk]) -> None:
        """Store a document read into memory and its chunks (replacing an earlier reading of the same
        ``(chat_id, message_id)``), in one transaction; returns when committed. The file message itself
        is stored with ``add`` like any message. raises ValueError when a chunk belongs to another
        message."""
        for c in chunks:
            if (c.chat_id, c.message_id) != (info.chat_id, info.message_id):
                raise ValueError(f"chunk {c.index} belongs to {c.chat_id}/{c.message_id}, not {info.chat_id}/{info.message_id}")
        tbl = pa.table({
            "chat_id": pa.array([c.chat_id for c in chunks], _I64),
            "message_id": pa.array([c.message_id for c in chunks], _I64),
            "chunk": pa.array([c.index for c in chunks], pa.int32()),
            "page": pa.array([c.page for c in chunks], pa.int32()),
            "section": pa.array([c.section for c in chunks], _STR),
            "text": pa.array([c.text for c in chunks], _STR),
        })

        def run() -> None:
            con = self._conn()
            con.execute("BEGIN TRANSACTION")
            try:
                key = [info.chat_id, info.message_id]
                con.execute("DELETE FROM document_chunks WHERE chat_id = ? AND message_id = ?", key)
                con.execute("DELETE FROM documents WHERE chat_id = ? AND message_id = ?", key)
                con.execute(
                    "INSERT INTO documents (chat_id, message_id, file_name, mime_type, kind, size_bytes, pages, chunks,"
                    f" user_id, user_name, date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {_TS.format('?')})",
                    [info.chat_id, info.message_id, info.file_name, info.mime_type, info.kind, info.size_bytes, info.pages,
                     info.chunks, info.user_id, info.user_name, to_us(info.date)],
                )
                if tbl.num_rows:
                    con.register("_kith_chunks_batch", tbl)
                    try:
                        con.execute("INSERT INTO document_chunks SELECT chat_id, message_id, chunk, page, section, text"
                                    " FROM _kith_chunks_batch")
                    finally:
                        con.unregister("_kith_chunks_batch")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

        await self._run(run)
        self._chats_with_documents.add(info.chat_id)

    def has_documents(self, chat_id: int) -> bool:
        """Whether documents were ever read into ``chat_id``'s memory (from the directory; may stay
        True after they were deleted)."""
        return chat_id in self._chats_with_documents

    async def documents(self, chat_id: int | None = None) -> list[DocumentInfo]:
        """The documents read into memory (of one chat, or all), oldest first."""
        await self._sync()
        sql = ("SELECT chat_id, message_id, file_name, mime_type, kind, size_bytes, pages, chunks, user_id, user_name,"
               " epoch_us(date) FROM documents")
        params: list[Any] = []
        if chat_id is not None:
            sql += " WHERE chat_id = ?"
            params.append(chat_id)
        rows = await self._query(sql + " ORDER BY date, chat_id, message_id", params)
        return [DocumentInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], from_us(r[10])) for r in rows]

    async def iter_document_chunks(self, chat_id: int | None = None, *, batch: int = 2000) -> AsyncIterator[list[DocumentChunk]]:
        """Every stored document chunk (of one chat, or all) with its provenance, in pages of at most
        ``batch``, ordered by ``(chat_id, message_id, chunk)`` (keyset-paginated)."""
        await self._sync()
        batch = max(1, batch)
        last: tuple[int, int, int] | None = None
        while True:
            sql = ("SELECT c.chat_id, c.message_id, c.chunk, c.text, c.page, c.section, d.file_name, d.user_id, d.user_name,"
                   " epoch_us(d.date) FROM document_chunks c JOIN documents d USING (chat_id, message_id) WHERE true")
            params: list[Any] = []
            if chat_id is not None:
                sql += " AND c.chat_id = ?"
                params.append(chat_id)
            if last is not None:
                sql += " AND (c.chat_id, c.message_id, c.chunk) > (?, ?, ?)"
                params += list(last)
            sql += " ORDER BY c.chat_id, c.message_id, c.chunk LIMIT ?"
            params.append(batch)
            rows = await self._query(sql, params)
            if not rows:
                return
            yield [DocumentChunk(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], from_us(r[9])) for r in rows]
            if len(rows) < batch:
                return
            last = (rows[-1][0], rows[-1][1], rows[-1][2])

    # ------------------------------------------------------------ chats and users

    async def upsert_chat(self, chat_id: int, type: str, title: str | None) -> None:
        """Create or update a chat (type: ``private|group|supergroup|channel``). A None title keeps
        the stored one; settings and ``created_at`` are kept. Queued with the hot-path writes (no
        database round trip; an unchanged chat queues nothing)."""
        self._check_writable()
        row = self._chat_rows.get(chat_id)
        if row is not None and row[0] == type and (title is None or title == row[1]):
            return
        settings = row[2] if row is not None else "{}"
        self._chat_rows[chat_id] = (type, title if title is not None else (row[1] if row else None), settings)
        self._q_chats.append((chat_id, type, title, to_us(self._clock())))
        self._enqueued(1)

    def knows_chat(self, chat_id: int) -> bool:
        """Whether ``chat_id`` has a chat row (from the directory)."""
        return chat_id in self._chat_rows

    async def chat_settings(self, chat_id: int) -> dict:
        """The chat's settings object ({} when the chat or its settings are unknown); from the
        directory, no database round trip. raises MemoryStoreError when the store is not open."""
        if not self._open:
            raise MemoryStoreError("the dialogue store is not open")
        row = self._chat_rows.get(chat_id)
        return json.loads(row[2]) if row is not None else {}

    async def set_chat_settings(self, chat_id: int, settings: dict) -> None:
        """Replace the chat's settings with ``settings`` (JSON-serialisable dict). Creates the chat row
        (type ``unknown``) if needed. raises TypeError for a non-dict or non-JSON value."""
        doc = _json_object(settings)
        await self._query(
            f"""INSERT INTO chats (chat_id, type, title, settings, created_at) VALUES (?, 'unknown', NULL, ?, {_TS.format('?')})
            ON CONFLICT (chat_id) DO UPDATE SET settings = excluded.settings""",
            [chat_id, doc, to_us(self._clock())],
        )
        row = self._chat_rows.get(chat_id)
        self._chat_rows[chat_id] = (row[0], row[1], doc) if row is not None else ("unknown", None, doc)

    async def user_settings(self, user_id: int) -> dict:
        """The user's settings object ({} when unknown); from the directory, no database round trip.
        raises MemoryStoreError when the store is not open."""
        if not self._open:
            raise MemoryStoreError("the dialogue store is not open")
        doc = self._user_rows.get(user_id)
        return json.loads(doc) if doc is not None else {}

    async def set_user_settings(
        self, user_id: int, settings: dict, *, username: str | None = None, name: str | None = None
    ) -> None:
        """Replace the user's settings; also update ``username``/``name`` when given (None keeps the
        stored value). Creates the user row if needed. raises TypeError for non-JSON settings."""
        doc = _json_object(settings)
        await self._query(
            f"""INSERT INTO users (user_id, username, name, settings, created_at) VALUES (?, ?, ?, ?, {_TS.format('?')})
            ON CONFLICT (user_id) DO UPDATE SET settings = excluded.settings,
                username = coalesce(excluded.username, users.username), name = coalesce(excluded.name, users.name)""",
            [user_id, username, name, doc, to_us(self._clock())],
        )
        if settings:
            self._user_rows[user_id] = doc
        else:
            self._user_rows.pop(user_id, None)

    async def chats(self) -> list[ChatInfo]:
        """Every chat with a chat row or stored messages, by chat id."""
        await self._sync()
        rows = await self._query(
            """
            WITH mc AS (SELECT chat_id, count(*) AS n, min(date) AS first, max(date) AS last
                        FROM messages GROUP BY chat_id)
            SELECT coalesce(c.chat_id, mc.chat_id), coalesce(c.type, 'unknown'), c.title, coalesce(mc.n, 0),
                   epoch_us(mc.first), epoch_us(mc.last)
            FROM chats c FULL OUTER JOIN mc ON c.chat_id = mc.chat_id
            ORDER BY 1
            """
        )
        return [
            ChatInfo(r[0], r[1], r[2], int(r[3]), None if r[4] is None else from_us(r[4]), None if r[5] is None else from_us(r[5]))
            for r in rows
        ]

    # ------------------------------------------------------------ usage and recalls

    async def usage_rows(self, *, since: datetime | None = None) -> list[UsageRecord]:
        """Usage records (all, or with ``ts >= since``), oldest first."""
        await self._sync()
        sql = (
            "SELECT epoch_us(ts), chat_id, user_id, kind, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,"
            " coalesce(seconds, 0), coalesce(images, 0), coalesce(pages, 0) FROM usage"
        )
        params: list[Any] = []
        if since is not None:
            sql += f" WHERE ts >= {_TS.format('?')}"
            params.append(to_us(since))
        rows = await self._query(sql + " ORDER BY ts", params)
        return [UsageRecord(from_us(r[0]), *r[1:]) for r in rows]

    async def recalls_for(self, chat_id: int, reply_message_id: int) -> list[tuple[int, float]]:
        """``(memory_message_id, score)`` injected into that reply, best score first."""
        await self._sync()
        rows = await self._query(
            "SELECT memory_message_id, score FROM recalls WHERE chat_id = ? AND reply_message_id = ?"
            " ORDER BY score DESC, memory_message_id",
            [chat_id, reply_message_id],
        )
        return [(r[0], r[1]) for r in rows]

    async def stats(self) -> dict:
        """``{"chats", "users", "messages", "usage", "recalls"}`` row counts, ``"file_bytes"`` (the
        database file plus its WAL), ``"schema_version"``, and the writer counters ``"commits"``,
        ``"rows_written"``, ``"dropped_rows"``, ``"pending"``."""
        await self._sync()

        def run() -> tuple[tuple, int]:
            row = self._conn().execute(
                "SELECT (SELECT count(*) FROM chats), (SELECT count(*) FROM users), (SELECT count(*) FROM messages),"
                " (SELECT count(*) FROM usage), (SELECT count(*) FROM recalls)"
            ).fetchone()
            size = 0
            for p in (self.path, self.path.with_name(self.path.name + ".wal")):
                try:
                    size += os.path.getsize(p)
                except OSError:
                    pass
            return row or (0, 0, 0, 0, 0), size

        row, size = await self._run(run)
        out: dict[str, Any] = dict(zip(("chats", "users", "messages", "usage", "recalls"), map(int, row)))
        out.update(
            file_bytes=size,
            schema_version=self.schema_version,
            commits=self.commits,
            rows_written=self.rows_written,
            dropped_rows=self.dropped_rows,
            pending=self.pending,
        )
        return out


# ---------------------------------------------------------------- batch → arrow / rows

_INSERT_SELECT = {
    "messages": (
        "INSERT OR IGNORE INTO messages (chat_id, message_id, thread_id, user_id, user_name, role, text, reply_to, date)"
        " SELECT chat_id, message_id, thread_id, user_id, user_name, role, text, reply_to, "
        + _TS.format("date_us")
        + " FROM {src}"
    ),
    "usage": (
        "INSERT INTO usage (ts, chat_id, user_id, kind, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,"
        " seconds, images, pages)"
        " SELECT " + _TS.format("ts_us") + ", chat_id, user_id, kind, model, prompt_tokens, completion_tokens,"
        " cost_usd, latency_ms, seconds, images, pages FROM {src}"
    ),
    "recalls": (
        "INSERT OR IGNORE INTO recalls (chat_id, reply_message_id, memory_message_id, score)"
        " SELECT chat_id, reply_message_id, memory_message_id, score FROM {src}"
    ),
    "chats": (
        "INSERT INTO chats (chat_id, type, title, settings, created_at)"
        " SELECT chat_id, type, title, '{{}}', " + _TS.format("created_us") + " FROM {src}"
        " ON CONFLICT (chat_id) DO UPDATE SET type = excluded.type, title = coalesce(excluded.title, chats.title)"
    ),
}

_INSERT_ROW = {
    "messages": (
        "INSERT OR IGNORE INTO messages (chat_id, message_id, thread_id, user_id, user_name, role, text, reply_to, date)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, " + _TS.format("?") + ")"
    ),
    "usage": (
        "INSERT INTO usage (ts, chat_id, user_id, kind, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,"
        " seconds, images, pages) VALUES (" + _TS.format("?") + ", ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    "recalls": (
        "INSERT OR IGNORE INTO recalls (chat_id, reply_message_id, memory_message_id, score) VALUES (?, ?, ?, ?)"
    ),
    "chats": (
        "INSERT INTO chats (chat_id, type, title, settings, created_at) VALUES (?, ?, ?, '{}', " + _TS.format("?") + ")"
        " ON CONFLICT (chat_id) DO UPDATE SET type = excluded.type, title = coalesce(excluded.title, chats.title)"
    ),
}

_I64 = pa.int64()
_STR = pa.string()
_F64 = pa.float64()


def _messages_table(msgs: list[StoredMessage]) -> pa.Table:
    seen: set[tuple[int, int]] = set()
    rows: list[StoredMessage] = []
    for m in msgs:  # dedupe within the batch: first write wins
        key = (m.chat_id, m.message_id)
        if key not in seen:
            seen.add(key)
            rows.append(m)
    return pa.table(
        {
            "chat_id": pa.array([m.chat_id for m in rows], _I64),
            "message_id": pa.array([m.message_id for m in rows], _I64),
            "thread_id": pa.array([m.thread_id for m in rows], _I64),
            "user_id": pa.array([m.user_id for m in rows], _I64),
            "user_name": pa.array([m.user_name for m in rows], _STR),
            "role": pa.array([m.role for m in rows], _STR),
            "text": pa.array([m.text for m in rows], _STR),
            "reply_to": pa.array([m.reply_to for m in rows], _I64),
            "date_us": pa.array([to_us(m.date) for m in rows], _I64),
        }
    )


def _usage_table(recs: list[UsageRecord]) -> pa.Table:
    return pa.table(
        {
            "ts_us": pa.array([to_us(u.ts) for u in recs], _I64),
            "chat_id": pa.array([u.chat_id for u in recs], _I64),
            "user_id": pa.array([u.user_id for u in recs], _I64),
            "kind": pa.array([u.kind for u in recs], _STR),
            "model": pa.array([u.model for u in recs], _STR),
            "prompt_tokens": pa.array([u.prompt_tokens for u in recs], _I64),
            "completion_tokens": pa.array([u.completion_tokens for u in recs], _I64),
            "cost_usd": pa.array([u.cost_usd for u in recs], _F64),
            "latency_ms": pa.array([u.latency_ms for u in recs], _F64),
            "seconds": pa.array([float(u.seconds) for u in recs], _F64),
            "images": pa.array([int(u.images) for u in recs], _I64),
            "pages": pa.array([int(u.pages) for u in recs], _I64),
        }
    )


def _recalls_table(rows: list[tuple[int, int, int, float]]) -> pa.Table:
    seen: set[tuple[int, int, int]] = set()
    uniq = []
    for r in rows:
        if r[:3] not in seen:
            seen.add(r[:3])
            uniq.append(r)
    return pa.table(
        {
            "chat_id": pa.array([r[0] for r in uniq], _I64),
            "reply_message_id": pa.array([r[1] for r in uniq], _I64),
            "memory_message_id": pa.array([r[2] for r in uniq], _I64),
            "score": pa.array([r[3] for r in uniq], _F64),
        }
    )


def _chats_table(rows: list[tuple[int, str, str | None, int]]) -> pa.Table:
    merged: dict[int, tuple[int, str, str | None, int]] = {}
    for r in rows:  # one row per chat (ON CONFLICT cannot update a row twice): last type, last title
        prev = merged.get(r[0])
        merged[r[0]] = r if prev is None or r[2] is not None else (r[0], r[1], prev[2], prev[3])
    rs = list(merged.values())
    return pa.table(
        {
            "chat_id": pa.array([r[0] for r in rs], _I64),
            "type": pa.array([r[1] for r in rs], _STR),
            "title": pa.array([r[2] for r in rs], _STR),
            "created_us": pa.array([r[3] for r in rs], _I64),
        }
    )


def _message_params(m: StoredMessage) -> list[Any]:
    return [m.chat_id, m.message_id, m.thread_id, m.user_id, m.user_name, m.role, m.text, m.reply_to, to_us(m.date)]


def _usage_params(u: UsageRecord) -> list[Any]:
    return [to_us(u.ts), u.chat_id, u.user_id, u.kind, u.model, u.prompt_tokens, u.completion_tokens, u.cost_usd, u.latency_ms,
            u.seconds, u.images, u.pages]


def _describe(row: Any) -> str:
    if isinstance(row, StoredMessage):
        return f"(chat_id={row.chat_id!r}, message_id={row.message_id!r})"
    if isinstance(row, UsageRecord):
        return f"(chat_id={row.chat_id!r}, ts={row.ts!r})"
    return repr(row)[:200]


def _json_object(settings: dict) -> str:
    if not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict, not {type(settings).__name__}")
    return json.dumps(settings, ensure_ascii=False)


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
