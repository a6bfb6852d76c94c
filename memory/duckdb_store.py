"""The DuckDB dialogue store: every message, chat, user, usage record, recall, subscription and
payment of a bot, in one DuckDB file (the default ``DialogueStore``; the contract is in ``memory.store``).

One process owns the file (DuckDB takes an exclusive lock; a second process gets ``StoreLocked``).
The store holds one connection; every DuckDB call runs in a worker thread behind a
``CapacityLimiter(1)``, never on the event loop.

Hot-path writes go through the write-behind queue (``memory.write_behind``); its commit function
here inserts everything queued in one transaction (one pyarrow table per table, one
``INSERT … SELECT`` each: ``memory.duckdb_batch``), and retries a failing batch row by row: rows that can never be stored
(e.g. a lone UTF-16 surrogate in ``text``, an id beyond 64 bits) are logged at ERROR and counted in
``dropped_rows``. Every queued row is also kept in the reserve ``<file>.reserve`` (a 4 MiB file
preallocated next to the database, ``memory.reserve.Journal``) until a commit covers it, so rows the
queue accepted survive a full disk and a ``kill -9``: the next open stores them (and any
``<file>.unsaved-<utc>.jsonl`` / ``.other.jsonl`` dump of rows the reserve could not hold) before
anything is read. When the disk has no room for the reserve, intake is refused (``DiskFull``).
The delivery record written before a reply's first byte (``note_delivery``) is such a row too: in
the reserve when it returns, committed with the chat's messages by the writer.

Timestamps are stored as ``TIMESTAMPTZ`` and returned as tz-aware UTC ``datetime``; a naive
``datetime`` given to the store is taken as UTC.

A directory of the small tables lives in memory, loaded at open and kept by every write (this process
is the file's only writer): the chats' types and titles (so an unchanged ``upsert_chat`` queues
nothing) and the set of chats that have messages. So a new chat's empty recent window needs no read,
and a read of one chat waits only for that chat's queued rows, not for everyone's. (Settings are read
from the database: ``store.settings``, ``memory.settings_store``.) ``add`` and friends must be called from the event-loop thread.

Usage::

    async with DuckDBStore(Path("data/kith.duckdb")) as store:
        store.add(msg)
        window = await store.messages.recent(msg.chat_id, 20)
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import duckdb

from .batch import Batch, load_unsaved, save_unsaved, unsaved_files
from .domains import DomainStores
from .duckdb_batch import SYSTEMIC, insert_batch, insert_rows
from .errors import DiskFull, MemoryStoreError, StoreLocked, is_disk_full
from .reserve import Journal
from .schema import migrate, to_us
from .settings_store import settings_json
from .sql_domain import DUCKDB, Dialect
from .store_base import QueuedStore
from .types import (
    MIGRATION_SHIFT,
    StoredMessage,
)
from .write_behind import WriteBehind

T = TypeVar("T")

__all__ = ["NEW_DATABASE_BYTES", "DuckDBStore"]

log = logging.getLogger(__name__)

# Files open in this process: DuckDB would silently share one database between two connects of the
# same path in one process, so the one-owner rule is enforced here too.
_OPEN_PATHS: set[str] = set()


NEW_DATABASE_BYTES = 16 * 2**20  # what a new database needs free to start (its first blocks, the WAL, the schema)


def _remove_failed_new_database(path: Path) -> None:
    """Remove what a failed first open of ``path`` left: an empty database file and its WAL."""
    for leftover in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(OSError):
            if leftover.stat().st_size == 0 or leftover != path:
                leftover.unlink()


class DuckDBStore(QueuedStore, DomainStores):
    """The ``DialogueStore`` in one DuckDB file (see ``memory.store`` for the contract and the
    module docstring for how this implementation keeps it).

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
        self._clock = clock
        self._con: duckdb.DuckDBPyConnection | None = None
        self._key = ""
        self._limiter = anyio.CapacityLimiter(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._open = False
        self.reserve = Journal(self.path.with_name(self.path.name + ".reserve"))
        self._queue = WriteBehind(
            self._commit, describe_error=self._describe_error, save_unsaved=self._dump_unsaved,
            flush_interval_s=flush_interval_s, flush_rows=flush_rows, journal=self.reserve)
        # the directory (see the module docstring): chat_id -> (type, title); chats with stored or
        # queued messages (or deliveries)
        self._chat_rows: dict[int, tuple[str, str | None]] = {}
        self._chats_with_messages: set[int] = set()
        self.schema_version: int | None = None
        self.commits = 0
        self.rows_written = 0
        self.dropped_rows = 0
        self.recovered_rows = 0  # rows an earlier run could not store, stored at this open

    def __repr__(self) -> str:
        return f"DuckDBStore({str(self.path)!r})"

    def __str__(self) -> str:
        return f"DuckDB {self.path}"

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> DuckDBStore:
        await anyio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
        self._open = True
        await self._open_domains(self._close)
        await self._start_writer(self._close)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._stop_writer(exc, self._close)

    async def _close(self) -> None:
        self._open = False
        if self._con is not None:
            try:
                await anyio.to_thread.run_sync(self._con.close, limiter=self._limiter)
            finally:
                self._con = None
                _OPEN_PATHS.discard(self._key)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _OPEN_PATHS:
            raise StoreLocked(f"{self.path} is already open in this process (one DialogueStore per file)")
        existed = self.path.exists()
        try:
            con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreLocked(
                    f"{self.path} is in use by another process (most likely a running Kith bot). "
                    f"Stop the bot, or go through it, and retry. DuckDB said: {exc}"
                ) from exc
            if not existed:  # a new file a full disk left empty reads as "not a valid DuckDB file" ever after
                _remove_failed_new_database(self.path)
            if "no space left" in str(exc).lower():
                raise DiskFull(self.path.parent, shutil.disk_usage(self.path.parent).free, NEW_DATABASE_BYTES) from None
            raise MemoryStoreError(f"cannot open {self.path}: {exc}") from exc
        except duckdb.Error as exc:
            raise MemoryStoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            con.execute("SET TimeZone = 'UTC'")
            _, self.schema_version = migrate(con, clock=self._clock)
            self._recover_sync(con)
            self._load_directory(con)
        except BaseException:
            con.close()
            raise
        self._con = con
        self._key = key
        _OPEN_PATHS.add(key)

    def _recover_sync(self, con: duckdb.DuckDBPyConnection) -> None:
        """At open: store what an earlier run could not — the rows its reserve kept, then the
        ``.unsaved-*`` dumps next to the database (removed once stored). Idempotent (a usage row
        already stored is not stored twice). When there is still no space, the reserve is left as it
        is and intake stays stopped for this run (``WriteBehind.hold``)."""
        try:
            kept, bad = self.reserve.recover()
        except OSError as exc:
            log.error("dialogue store: cannot read the reserve %s: %s", self.reserve.path, exc)
            kept, bad = Batch(), 0
        if bad:
            log.error("dialogue store: %d rows of the reserve %s could not be read back", bad, self.reserve.path)
        sources: list[tuple[str, Batch, list[Path]]] = [(str(self.reserve.path), kept, [])] if len(kept) else []
        for base, files in unsaved_files(self.path.parent, self.path.name):
            try:
                batch, unreadable = load_unsaved(files)
            except OSError as exc:
                log.error("dialogue store: cannot read %s: %s", files[0], exc)
                continue
            for line in unreadable:
                log.error("dialogue store: skipped %s", line)
            sources.append((base, batch, [] if unreadable else files))
        for name, batch, files in sources:
            n, replies = len(batch), sum(1 for m in batch.messages if m.role == "assistant")
            try:
                self._write_sync(batch, con=con, recovering=True)
            except SYSTEMIC as exc:
                if is_disk_full(exc):
                    self._queue.hold(self._disk_full(exc, n))
                    log.error("dialogue store: %d rows of %s are not stored yet (no space left); new messages are "
                              "refused until space is freed and Kith started again", n, name)
                    return
                raise MemoryStoreError(f"cannot store the rows kept in {name}: {exc}") from exc
            self.recovered_rows += n
            log.warning("dialogue store: stored %d rows an earlier run could not store (%d of them replies), from %s",
                        n, replies, name)
            for f in files:
                try:
                    f.unlink()
                except OSError as exc:
                    log.error("dialogue store: stored %s, but cannot remove it: %s", f, exc)

    def _load_directory(self, con: duckdb.DuckDBPyConnection) -> None:
        self._chat_rows = {r[0]: (r[1], r[2]) for r in con.execute("SELECT chat_id, type, title FROM chats").fetchall()}
        self._chats_with_messages = {r[0] for r in con.execute(  # (a delivery's chat: answered_ids reads it)
            "SELECT chat_id FROM messages UNION SELECT chat_id FROM deliveries").fetchall()}

    # ------------------------------------------------------------ enqueue (non-blocking)

    def _on_messages(self, msgs: list[StoredMessage]) -> None:
        for m in msgs:
            self._chats_with_messages.add(m.chat_id)

    def _describe_error(self, exc: BaseException, queued: int) -> MemoryStoreError:
        if is_disk_full(exc):
            return self._disk_full(exc, queued)
        return MemoryStoreError(f"dialogue store cannot write ({queued} rows kept queued for a retry): {exc}")

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

    # ------------------------------------------------------------ the queue's commit function

    async def _commit(self, batch: Batch) -> None:
        await anyio.to_thread.run_sync(self._write_sync, batch, limiter=self._limiter)

    def _write_sync(self, batch: Batch, *, con: duckdb.DuckDBPyConnection | None = None, recovering: bool = False) -> None:
        """Worker thread: commit ``batch`` in one transaction, else row by row. Systemic errors raise
        with ``batch`` trimmed to the rows not yet written. ``recovering``: rows of an earlier run
        (the reserve, a dump), where a usage row already stored is skipped."""
        con = con or self._conn()
        usage = "usage_new" if recovering else "usage"
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                insert_batch(con, batch, usage)
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
        except SYSTEMIC:
            raise
        except Exception as exc:
            log.warning("dialogue store: batch of %d rows failed (%s); retrying row by row", len(batch), exc)
            self._write_rows_sync(con, batch, usage)
            return
        self.commits += 1
        self.rows_written += len(batch)
        batch.clear()

    def _write_rows_sync(self, con: duckdb.DuckDBPyConnection, batch: Batch, usage: str = "usage") -> None:
        written, dropped = insert_rows(con, batch, usage)
        self.commits += written
        self.rows_written += written
        self.dropped_rows += dropped

    def _dump_unsaved(self, batch: Batch) -> None:
        """Shutdown with a failing database: write the rows left next to the database file."""
        if not len(batch):
            return
        stamp = self._clock().astimezone(UTC).strftime("%Y%m%dT%H%M%S")
        base = self.path.with_name(f"{self.path.name}.unsaved-{stamp}")
        save_unsaved(batch, base)

    # ------------------------------------------------------------ plumbing

    def _conn(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise MemoryStoreError("the dialogue store is not open")
        return self._con

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._open:
            raise MemoryStoreError("the dialogue store is not open")
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except duckdb.Error as exc:
            if is_disk_full(exc):
                raise self._disk_full(exc, self.pending) from exc
            raise

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            return self._conn().execute(sql, list(params)).fetchall()

        return await self._run(run)

    # ------------------------------------------------------------ per-domain stores (memory.reminders)

    @property
    def local_dir(self) -> Path:
        """The directory of this machine that goes with the store (the DuckDB file's): a per-domain
        store's side files (``memory.reminders``' delivery journal) live there."""
        return self.path.parent

    @property
    def dialect(self) -> Dialect:
        """DuckDB's spellings of times for the per-domain stores' SQL (``memory.sql_domain``)."""
        return DUCKDB

    async def sql_query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders), committed on return (autocommit); its rows ([] for
        none). For the per-domain stores (``memory.sql_domain``). raises duckdb.Error; DiskFull."""
        return await self._query(sql, params)

    async def sql_transaction(self, statements: Sequence[tuple[str, Sequence[Any]]], *,
                              lock: str | None = None) -> list[list[tuple[Any, ...]]]:
        """Run ``statements`` (SQL with ``?`` placeholders, and their parameters) in one transaction,
        committed before it returns; each statement's rows ([] for none). For the small per-domain
        stores of this package (``memory.reminders``), whose one SQL text runs on both backends; not
        part of the ``DialogueStore`` contract. ``lock`` is for PostgreSQL's several processes: one
        process owns a DuckDB file, and its transactions on this connection already run one at a
        time. raises duckdb.Error (the transaction rolled back)."""
        def run() -> list[list[tuple[Any, ...]]]:
            con = self._conn()
            con.execute("BEGIN TRANSACTION")
            try:
                out = []
                for sql, params in statements:
                    cur = con.execute(sql, list(params))
                    out.append(cur.fetchall() if cur.description is not None else [])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return out

        return await self._run(run)

    # ------------------------------------------------------------ messages (store.messages reads them: memory.message_store)

    def may_have_messages(self, chat_id: int) -> bool:
        """Whether ``chat_id`` may have stored or queued messages or deliveries (from the directory:
        this process is the file's only writer, so False is certain); ``store.messages`` answers a
        chat without any at once, with no database round trip."""
        return chat_id in self._chats_with_messages

    def stored_text(self, text: str) -> str:
        """``text`` as DuckDB keeps it: as it is (U+0000 included)."""
        return text

    async def note_delivery(self, chat_id: int, message_id: int) -> None:
        """Durably note that a reply to ``message_id`` is about to be sent. Called before the reply's
        first byte leaves, so a crash at any later moment never answers the message again (at most
        once: a crash between this and the send leaves it unanswered).

        The ``deliveries`` row is queued like a reply (accepted on a full disk too, into the
        reserve's part for what was sent) and written to the reserve before this returns — no
        database round trip: a ``kill -9`` from then on finds it there at the next open, which
        stores it (with the chat's messages queued before it) before anything is read. The writer
        commits it in the same transaction as the chat's queued messages. Without the reserve (it
        could not be made, or is full) this flushes the queue instead: the row, with the chat's
        queued messages, is committed before it returns. raises MemoryStoreError when it is closed,
        or (no reserve) when the database cannot write (the row stays queued and is retried)."""
        self._chats_with_messages.add(chat_id)
        if not self._queue.put_delivery((chat_id, message_id, to_us(self._clock()))):
            await self._queue.flush()

    # ------------------------------------------------------------ group → supergroup

    async def migrate_chat(self, old: int, new: int, *, title: str | None = None) -> int:
        """Move basic group ``old`` to supergroup ``new`` (Telegram's ``migrate_to_chat_id``), in one
        transaction: its messages (as ``migrated_id``: negative, so they stay older than the
        supergroup's own, which restart at 1), replies, recalls, documents, deliveries and
        evictions; its usage rows; its settings (under the new chat's own); its subscription and
        API keys (unless the new chat has its own). Returns the messages moved (0 when there was
        nothing left to move: a second call is harmless)."""
        await self._queue.sync()
        shift = MIGRATION_SHIFT

        def run() -> tuple[int, str | None]:
            con = self._conn()
            con.execute("BEGIN TRANSACTION")
            try:
                rows = {r[0]: (r[1], r[2]) for r in con.execute(
                    "SELECT chat_id, title, settings::VARCHAR FROM chats WHERE chat_id IN (?, ?)", [old, new]).fetchall()}
                settings = json.loads(rows.get(old, (None, "{}"))[1] or "{}")
                if isinstance(settings.get("context_from"), int):
                    settings["context_from"] -= shift
                settings.update(json.loads(rows.get(new, (None, "{}"))[1] or "{}"))
                name = title or rows.get(new, (None, None))[0] or rows.get(old, (None, None))[0]
                moved = con.execute(
                    "INSERT OR IGNORE INTO messages (chat_id, message_id, thread_id, user_id, user_name, role, text, reply_to, date, imported)"
                    " SELECT ?, message_id - ?, thread_id, user_id, user_name, role, text, reply_to - ?, date, imported"
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
                con.execute("UPDATE cleanups SET chat_id = ? WHERE chat_id = ?", [new, old])
                for table in ("subscriptions", "api_keys"):  # the new chat's own wins
                    con.execute(f"INSERT OR IGNORE INTO {table} SELECT * REPLACE (? AS scope_id) FROM {table}"
                                " WHERE scope = 'chat' AND scope_id = ?", [new, old])
                    con.execute(f"DELETE FROM {table} WHERE scope = 'chat' AND scope_id = ?", [old])
                con.execute(
                    f"INSERT INTO chats (chat_id, type, title, settings, created_at) VALUES (?, 'supergroup', ?, ?, {DUCKDB.ts})"
                    " ON CONFLICT (chat_id) DO UPDATE SET type = 'supergroup', title = excluded.title, settings = excluded.settings",
                    [new, name, settings_json(settings), to_us(self._clock())])
                con.execute("DELETE FROM chats WHERE chat_id = ?", [old])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return int(moved), name

        moved, name = await self._run(run)
        self._chat_rows[new] = ("supergroup", name)
        self._settings_moved()
        self._chat_rows.pop(old, None)
        if old in self._chats_with_messages:
            self._chats_with_messages.discard(old)
            self._chats_with_messages.add(new)
        self.documents.chat_moved(old, new)
        return moved

    # ------------------------------------------------------------ chats and users

    async def upsert_chat(self, chat_id: int, type: str, title: str | None) -> None:
        """Create or update a chat (type: ``private|group|supergroup|channel``). A None title keeps
        the stored one; settings and ``created_at`` are kept. Queued with the hot-path writes (no
        database round trip; an unchanged chat queues nothing)."""
        self._queue.check_writable()
        row = self._chat_rows.get(chat_id)
        if row is not None and row[0] == type and (title is None or title == row[1]):
            return
        self._chat_rows[chat_id] = (type, title if title is not None else (row[1] if row else None))
        self._queue.put_chat((chat_id, type, title, to_us(self._clock())))

    def knows_chat(self, chat_id: int) -> bool:
        """Whether ``chat_id`` has a chat row (from the directory)."""
        return chat_id in self._chat_rows


    async def stats(self) -> dict[str, Any]:
        """``{"chats", "users", "messages", "usage", "recalls"}`` row counts, ``"file_bytes"`` (the
        database file plus its WAL), ``"schema_version"``, and the writer counters ``"commits"``,
        ``"rows_written"``, ``"dropped_rows"``, ``"pending"``."""
        await self._queue.sync()

        def run() -> tuple[tuple[Any, ...], int]:
            row = self._conn().execute(
                "SELECT (SELECT count(*) FROM chats), (SELECT count(*) FROM users), (SELECT count(*) FROM messages),"
                " (SELECT count(*) FROM usage), (SELECT count(*) FROM recalls)"
            ).fetchone()
            size = 0
            for p in (self.path, self.path.with_name(self.path.name + ".wal")):
                with contextlib.suppress(OSError):
                    size += os.path.getsize(p)
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
