"""The PostgreSQL dialogue store: the ``DialogueStore`` contract (``memory.store``) on a PostgreSQL
server, shared by any number of processes (bots, ``kith`` CLI calls, workers) without a file lock.

Selected by ``storage.dialogue: postgresql://user@host:5432/db`` (libpq's URL; a password is better
kept in ``PGPASSWORD`` or ``~/.pgpass`` than in the YAML). psycopg 3 with an async connection pool:
queries do not block the event loop and need no worker thread. The schema is migrated at open under
an advisory lock (``memory.postgres_schema``), so several processes may start at once.

Hot-path writes go through the write-behind queue (``memory.write_behind``); its commit function
here writes a batch in one transaction (``executemany`` in pipeline mode). A batch that fails on bad
data is retried row by row, dropping only the rows PostgreSQL can never take (an id beyond 64 bits,
a lone UTF-16 surrogate); a failing server (connection lost, disk full, shutdown) keeps the rows queued
and retried; rows still unwritable at shutdown are dumped to ``<dump_dir>/kith-postgresql.unsaved-<utc>.jsonl``.
This store has no reserve (``write_behind.Journal``: a file next to an embedded database), so the
delivery record before a reply's first byte (``note_delivery``) is queued and flushed: committed,
with the chat's queued messages, before it returns.

Differences from the DuckDB store, both from PostgreSQL itself:
- a NUL character (U+0000, which Telegram never sends) in a text is stored as U+FFFD: PostgreSQL's
  ``text`` and ``jsonb`` cannot hold it;
- the directory of small tables is per process: the synchronous hints ``knows_chat`` and
  ``has_documents`` come from what this process loaded at open and wrote since.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc

from .domains import DomainStores
from .errors import DiskFull, MemoryStoreError, is_disk_full
from .postgres_schema import migrate
from .schema import from_us, to_us
from .sql_domain import POSTGRESQL, Dialect
from .store_base import CHUNKS_SELECT, QueuedStore, describe_row, equalities, json_object, keyset_pages
from .types import (
    DOC_ID_BASE,
    MIGRATION_SHIFT,
    USAGE_GROUPINGS,
    CleanupRecord,
    DocumentChunk,
    DocumentInfo,
    StoredMessage,
    UsageCount,
    UsageRecord,
    UsageTotal,
)
from .write_behind import Batch, WriteBehind, save_unsaved

__all__ = ["PostgresStore", "redact"]

log = logging.getLogger(__name__)

_MSG_COLS = "chat_id, message_id, user_id, user_name, text, date, role, reply_to, thread_id, imported"
_USAGE_KEY = {
    "kind": "kind",
    "user": "user_id::text",
    "chat": "chat_id::text",
    "model": "model",
    "day": "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "plugin": "model",  # a tool call's row names its plugin as its model
}
_USAGE_ONLY = {"plugin": "kind = 'tool'"}  # usage_totals: the rows a grouping sums (all when absent)
_INSERT_MESSAGE = (
    "INSERT INTO messages (chat_id, message_id, thread_id, user_id, user_name, role, text, reply_to, date, imported)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
_INSERT_USAGE = (
    "INSERT INTO usage (ts, chat_id, user_id, kind, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,"
    " seconds, images, pages) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
_INSERT_RECALL = (
    "INSERT INTO recalls (chat_id, reply_message_id, memory_message_id, score) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT DO NOTHING")
_INSERT_DELIVERY = "INSERT INTO deliveries (chat_id, message_id, sent_at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
_UPSERT_CHAT = (
    "INSERT INTO chats (chat_id, type, title, settings, created_at) VALUES (%s, %s, %s, '{}', %s)"
    " ON CONFLICT (chat_id) DO UPDATE SET type = excluded.type, title = coalesce(excluded.title, chats.title)")


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and ``kith doctor``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def _clean(text: str | None) -> str | None:
    """PostgreSQL's text cannot hold U+0000: store U+FFFD in its place."""
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


def _utc(ts: datetime) -> datetime:
    """A naive datetime is taken as UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def _json_object(settings: dict) -> str:
    return json_object(settings).replace("\\u0000", "\\ufffd")  # jsonb cannot hold U+0000


def _row_to_msg(r: Sequence[Any]) -> StoredMessage:
    return StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], bool(r[9]))


class PostgresStore(QueuedStore, DomainStores):
    """The ``DialogueStore`` on PostgreSQL (see the module docstring).

    shared: several processes may write the database (what the per-domain stores' in-memory caches,
    e.g. ``memory.ledger.Ledger``'s balances, must not assume away).

    url: a libpq connection URL (``postgresql://…``). pool_size: connections at most (reads run
    concurrently; the writer uses one). dump_dir: where rows unwritable at shutdown are saved.
    flush_interval_s / flush_rows: the write-behind queue's batching. clock: tz-aware UTC now.
    raises MemoryStoreError on open when the server cannot be reached or the schema is newer.
    """

    shared = True

    def __init__(
        self,
        url: str,
        *,
        flush_interval_s: float = 0.05,
        flush_rows: int = 2000,
        pool_size: int = 8,
        dump_dir: Path | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self._clock = clock
        self._pool_size = max(2, pool_size)
        self._connect_timeout_s = connect_timeout_s
        self._dump_dir = Path(dump_dir) if dump_dir is not None else Path.cwd()
        self._pool: Any = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._open = False
        self._queue = WriteBehind(
            self._commit, describe_error=self._describe_error, save_unsaved=self._dump_unsaved,
            flush_interval_s=flush_interval_s, flush_rows=flush_rows)
        self._chat_rows: dict[int, tuple[str, str | None]] = {}  # chat_id -> (type, title), this process's view
        self._chats_with_documents: set[int] = set()
        self.schema_version: int | None = None
        self.commits = 0
        self.rows_written = 0
        self.dropped_rows = 0

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    def __str__(self) -> str:
        return f"PostgreSQL {redact(self.url)}"

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> PostgresStore:
        try:
            import psycopg
            from psycopg_pool import AsyncConnectionPool
        except ImportError as exc:  # pragma: no cover - the extra is part of the test install
            raise MemoryStoreError(
                "storage.dialogue is a PostgreSQL URL but psycopg is not installed: pip install 'kith[postgresql]'") from exc

        async def configure(con: Any) -> None:
            await con.execute("SET TIME ZONE 'UTC'")

        # one connection first: a server that cannot be reached says why at once (the pool would
        # retry quietly until its timeout), and the schema is migrated before any pooled use
        try:
            async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, round(self._connect_timeout_s))) as con:
                self.schema_version = await migrate(con)
        except MemoryStoreError:
            raise
        except (psycopg.Error, OSError) as exc:
            raise MemoryStoreError(f"cannot open the PostgreSQL dialogue store {redact(self.url)}: {exc}") from exc

        pool = AsyncConnectionPool(
            self.url, min_size=1, max_size=self._pool_size, open=False, configure=configure,
            check=AsyncConnectionPool.check_connection,  # a server restart leaves broken connections behind
            kwargs={"autocommit": True}, timeout=self._connect_timeout_s, name="kith-dialogue")
        try:
            await pool.open(wait=True, timeout=self._connect_timeout_s)
            async with pool.connection() as con:
                self._chat_rows = {r[0]: (r[1], r[2]) for r in await (await con.execute(
                    "SELECT chat_id, type, title FROM chats")).fetchall()}
                self._chats_with_documents = {r[0] for r in await (await con.execute(
                    "SELECT DISTINCT chat_id FROM documents")).fetchall()}
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await pool.close()
            if isinstance(exc, MemoryStoreError):
                raise
            if isinstance(exc, (psycopg.Error, OSError)) or type(exc).__name__ == "PoolTimeout":
                raise MemoryStoreError(f"cannot open the PostgreSQL dialogue store {redact(self.url)}: {exc}") from exc
            raise
        self._pool = pool
        self._open = True
        await self._start_writer(self._close)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._stop_writer(exc, self._close)

    async def _close(self) -> None:
        self._open = False
        if self._pool is not None:
            try:
                await self._pool.close()
            finally:
                self._pool = None

    # ------------------------------------------------------------ plumbing

    def _check_open(self) -> None:
        if not self._open or self._pool is None:
            raise MemoryStoreError("the dialogue store is not open")

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement (autocommit) and return its rows ([] for a statement without rows)."""
        async def work(con: Any) -> list[tuple]:
            cur = await con.execute(sql, params)
            return await cur.fetchall() if cur.description is not None else []

        return await self._on_connection(work, transaction=False)

    async def _transaction(self, work: Callable[[Any], Any]) -> Any:
        """Run ``await work(con)`` in one transaction on a pooled connection."""
        return await self._on_connection(work, transaction=True)

    async def _on_connection(self, work: Callable[[Any], Any], *, transaction: bool) -> Any:
        """``await work(con)`` on a pooled connection (in a transaction if asked); a failing server
        becomes MemoryStoreError (DiskFull when it is out of space), other errors pass as they are."""
        self._check_open()
        try:
            async with self._pool.connection() as con:
                if not transaction:
                    return await work(con)
                async with con.transaction():
                    return await work(con)
        except MemoryStoreError:
            raise
        except Exception as exc:
            wrapped = self._wrap(exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

    @property
    def local_dir(self) -> Path:
        """The directory of this machine that goes with the store (``dump_dir``): a per-domain
        store's side files (``memory.reminders``' delivery journal) live there."""
        return self._dump_dir

    @property
    def dialect(self) -> Dialect:
        """PostgreSQL's spellings of times for the per-domain stores' SQL (``memory.sql_domain``)."""
        return POSTGRESQL

    async def sql_query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement (``?`` placeholders, as the DuckDB store takes them; no other ``?`` or
        ``%``), committed on return; its rows ([] for none). For the per-domain stores
        (``memory.sql_domain``). raises psycopg.Error; MemoryStoreError when the server fails."""
        return await self._fetch(sql.replace("?", "%s"), list(params))

    async def sql_transaction(self, statements: Sequence[tuple[str, Sequence[Any]]], *,
                              lock: str | None = None) -> list[list[tuple]]:
        """Run ``statements`` (SQL with ``?`` placeholders, as the DuckDB store takes them, and their
        parameters) in one transaction, committed before it returns; each statement's rows ([] for
        none). For the small per-domain stores of this package (``memory.reminders``); not part of
        the ``DialogueStore`` contract. The SQL must hold no other ``?`` or ``%``. ``lock``: a name
        the transaction holds a PostgreSQL advisory lock on first (``pg_advisory_xact_lock``), so
        transactions of several processes on the same name run one after another (READ COMMITTED:
        each statement after it sees what the one before committed)."""
        async def work(con: Any) -> list[list[tuple]]:
            if lock is not None:
                await con.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [lock])
            out = []
            for sql, params in statements:
                cur = await con.execute(sql.replace("?", "%s"), list(params))
                out.append(await cur.fetchall() if cur.description is not None else [])
            return out

        return await self._transaction(work)

    def _wrap(self, exc: BaseException) -> BaseException:
        import psycopg

        if is_disk_full(exc) or getattr(exc, "sqlstate", None) == "53100":
            return self._disk_full(exc, self.pending)
        if isinstance(exc, psycopg.OperationalError) or type(exc).__name__ == "PoolTimeout":
            return MemoryStoreError(f"the PostgreSQL dialogue store {redact(self.url)} failed: {exc}")
        return exc

    def _disk_full(self, exc: BaseException, queued: int) -> DiskFull:
        return DiskFull(redact(self.url), 0, max(queued * 1024, 16 * 2**20), unsaved=queued)

    # ------------------------------------------------------------ the write-behind queue

    async def upsert_chat(self, chat_id: int, type: str, title: str | None) -> None:
        """Create or rename a chat (queued; a chat this process knows unchanged queues nothing)."""
        self._queue.check_writable()
        row = self._chat_rows.get(chat_id)
        if row is not None and row[0] == type and (title is None or title == row[1]):
            return
        self._chat_rows[chat_id] = (type, title if title is not None else (row[1] if row else None))
        self._queue.put_chat((chat_id, type, title, to_us(self._clock())))

    def _describe_error(self, exc: BaseException, queued: int) -> MemoryStoreError:
        wrapped = self._wrap(exc)
        if isinstance(wrapped, DiskFull):
            return wrapped
        return MemoryStoreError(f"dialogue store cannot write ({queued} rows kept queued for a retry): {exc}")

    def _dump_unsaved(self, batch: Batch) -> None:
        stamp = self._clock().astimezone(UTC).strftime("%Y%m%dT%H%M%S")
        self._dump_dir.mkdir(parents=True, exist_ok=True)
        save_unsaved(batch, self._dump_dir / f"kith-postgresql.unsaved-{stamp}")

    async def _commit(self, batch: Batch) -> None:
        """The queue's commit function: one transaction; bad data → row by row; a failing server raises."""
        import psycopg

        if self._pool is None:
            raise MemoryStoreError("the dialogue store is not open")
        # a failing server (OperationalError, InterfaceError, the pool's timeout) propagates: systemic
        async with self._pool.connection() as con:
            try:
                async with con.transaction(), con.cursor() as cur:
                    if batch.messages:
                        await cur.executemany(_INSERT_MESSAGE, [_message_params(m) for m in batch.messages])
                    if batch.usage:
                        await cur.executemany(_INSERT_USAGE, [_usage_params(u) for u in batch.usage])
                    if batch.recalls:
                        await cur.executemany(_INSERT_RECALL, batch.recalls)
                    if batch.chats:
                        await cur.executemany(_UPSERT_CHAT, [_chat_params(c) for c in batch.chats])
                    if batch.deliveries:
                        await cur.executemany(_INSERT_DELIVERY, [_delivery_params(d) for d in batch.deliveries])
                    for sql, params in batch.sql:
                        await cur.execute(sql.replace("?", "%s"), params)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except (psycopg.Error, ValueError, OverflowError) as exc:  # bad data somewhere in the batch
                log.warning("dialogue store: batch of %d rows failed (%s); retrying row by row", len(batch), exc)
                await self._write_rows(con, batch)
                return
        self.commits += 1
        self.rows_written += len(batch)
        batch.clear()

    async def _write_rows(self, con: Any, batch: Batch) -> None:
        import psycopg

        for attr, sql, params in (
            ("messages", _INSERT_MESSAGE, _message_params),
            ("usage", _INSERT_USAGE, _usage_params),
            ("recalls", _INSERT_RECALL, lambda r: list(r)),
            ("chats", _UPSERT_CHAT, _chat_params),
            ("deliveries", _INSERT_DELIVERY, _delivery_params),
            ("sql", None, lambda r: r[1]),
        ):
            rows = getattr(batch, attr)
            i = 0
            try:
                while i < len(rows):
                    row = rows[i]
                    try:
                        await con.execute(sql or row[0].replace("?", "%s"), params(row))  # autocommit: one transaction per row
                        self.commits += 1
                        self.rows_written += 1
                    except (psycopg.OperationalError, psycopg.InterfaceError):
                        raise
                    except (psycopg.Error, ValueError, OverflowError) as exc:  # this row can never be stored
                        self.dropped_rows += 1
                        log.error("dialogue store: dropped an unstorable %s row %s: %s", attr, describe_row(row), exc)
                    i += 1
            finally:
                setattr(batch, attr, rows[i:])

    # ------------------------------------------------------------ messages

    async def recent(self, chat_id: int, limit: int, *, thread_id: int | None = None, before_id: int | None = None,
                     general_only: bool = False) -> list[StoredMessage]:
        """The newest ``limit`` messages of a chat (see ``memory.store``), oldest → newest."""
        if limit <= 0:
            return []
        await self._queue.sync_chat(chat_id)
        sql, params = f"SELECT {_MSG_COLS} FROM messages WHERE chat_id = %s", [chat_id]
        if thread_id is not None:
            sql += " AND thread_id = %s"
            params.append(thread_id)
        elif general_only:
            sql += " AND thread_id IS NULL"
        if before_id is not None:
            sql += " AND message_id < %s"
            params.append(before_id)
        sql += " ORDER BY message_id DESC LIMIT %s"
        params.append(limit)
        return [_row_to_msg(r) for r in reversed(await self._fetch(sql, params))]

    async def get_messages(self, chat_id: int, message_ids: Sequence[int]) -> list[StoredMessage]:
        if not message_ids:
            return []
        await self._queue.sync_chat(chat_id)
        rows = await self._fetch(
            f"SELECT {_MSG_COLS} FROM messages WHERE chat_id = %s AND message_id = ANY(%s) ORDER BY message_id",
            [chat_id, list(message_ids)])
        return [_row_to_msg(r) for r in rows]

    async def around(self, chat_id: int, message_ids: Sequence[int], before: int, after: int) -> dict[int, list[StoredMessage]]:
        if not message_ids:
            return {}
        await self._queue.sync_chat(chat_id)
        rows = await self._fetch(
            f"""
            WITH m AS (SELECT {_MSG_COLS}, row_number() OVER (ORDER BY message_id) AS rn
                       FROM messages WHERE chat_id = %s),
                 c AS (SELECT message_id AS center, rn AS crn FROM m WHERE message_id = ANY(%s))
            SELECT c.center, m.chat_id, m.message_id, m.user_id, m.user_name, m.text, m.date, m.role, m.reply_to,
                   m.thread_id, m.imported
            FROM c JOIN m ON m.rn BETWEEN c.crn - %s AND c.crn + %s
            ORDER BY c.center, m.message_id
            """,
            [chat_id, list(message_ids), max(0, before), max(0, after)])
        out: dict[int, list[StoredMessage]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(_row_to_msg(r[1:]))
        return out

    async def answered_ids(self, chat_id: int) -> set[int]:
        await self._queue.sync_chat(chat_id, deliveries=True)
        rows = await self._fetch(
            "SELECT reply_to FROM messages WHERE chat_id = %s AND role = 'assistant' AND reply_to IS NOT NULL"
            " UNION SELECT message_id FROM deliveries WHERE chat_id = %s", [chat_id, chat_id])
        return {r[0] for r in rows}

    async def note_delivery(self, chat_id: int, message_id: int) -> None:
        """Durably note a reply to ``message_id`` is being sent: queued and flushed (no reserve here),
        so it is committed with the chat's queued messages before this returns. raises
        MemoryStoreError when the server cannot write (the row stays queued and is retried)."""
        if not self._queue.put_delivery((chat_id, message_id, to_us(self._clock()))):
            await self._queue.flush()

    async def max_message_id(self, chat_id: int) -> int | None:
        await self._queue.sync_chat(chat_id)
        rows = await self._fetch("SELECT max(message_id) FROM messages WHERE chat_id = %s", [chat_id])
        return rows[0][0]

    async def count_messages(self, chat_id: int | None = None, *, user_id: int | None = None,
                             imported: bool | None = None) -> int:
        await self._queue.sync()
        filters, params = equalities([("chat_id", chat_id), ("user_id", user_id), ("imported", imported)], "%s")
        return int((await self._fetch("SELECT count(*) FROM messages WHERE true" + filters, params))[0][0])

    async def iter_messages(self, chat_id: int | None = None, *, batch: int = 5000) -> AsyncIterator[list[StoredMessage]]:
        await self._queue.sync()
        async for rows in keyset_pages(self._fetch, f"SELECT {_MSG_COLS} FROM messages WHERE true",
                                       [("chat_id", chat_id)], ("chat_id", "message_id"), batch, ph="%s"):
            yield [_row_to_msg(r) for r in rows]

    async def message_keys(self, *, chat_id: int | None = None, user_id: int | None = None,
                           before: datetime | None = None, limit: int | None = None,
                           imported: bool | None = None) -> list[tuple[int, int]]:
        if chat_id is None and user_id is None:
            raise ValueError("message_keys needs a chat_id or a user_id")
        await self._queue.sync()
        filters, params = equalities([("chat_id", chat_id), ("user_id", user_id), ("imported", imported)], "%s")
        sql = "SELECT chat_id, message_id FROM messages WHERE true" + filters
        if before is not None:
            sql += " AND date < %s"
            params.append(_utc(before))
        sql += " ORDER BY date, chat_id, message_id"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(max(0, limit))
        return [(int(c), int(m)) for c, m in await self._fetch(sql, params)]

    async def delete_messages(self, chat_id: int, *, user_id: int | None = None,
                              message_ids: Sequence[int] | None = None) -> list[int]:
        if message_ids is not None and not message_ids:
            return []
        await self._queue.sync()
        cond, params = "chat_id = %s", list[Any]([chat_id])
        if user_id is not None:
            cond += " AND user_id = %s"
            params.append(user_id)
        if message_ids is not None:
            cond += " AND message_id = ANY(%s)"
            params.append(list(message_ids))

        async def work(con: Any) -> list[int]:
            cur = await con.execute(f"DELETE FROM messages WHERE {cond} RETURNING message_id", params)
            ids = sorted(r[0] for r in await cur.fetchall())
            if ids:
                await con.execute(
                    "DELETE FROM recalls WHERE chat_id = %s AND (memory_message_id = ANY(%s) OR reply_message_id = ANY(%s))",
                    [chat_id, ids, ids])
                for table in ("document_chunks", "documents", "memory_evictions"):
                    await con.execute(f"DELETE FROM {table} WHERE chat_id = %s AND message_id = ANY(%s)", [chat_id, ids])
            return ids

        return await self._transaction(work)

    async def update_text(self, chat_id: int, message_id: int, text: str) -> StoredMessage | None:
        await self._queue.sync_chat(chat_id)
        rows = await self._fetch(
            f"UPDATE messages SET text = %s WHERE chat_id = %s AND message_id = %s RETURNING {_MSG_COLS}",
            [_clean(text), chat_id, message_id])
        return _row_to_msg(rows[0]) if rows else None

    async def migrate_chat(self, old: int, new: int, *, title: str | None = None) -> int:
        """Move basic group ``old`` to supergroup ``new`` in one transaction (see ``DuckDBStore.migrate_chat``)."""
        await self._queue.sync()
        shift = MIGRATION_SHIFT

        async def work(con: Any) -> tuple[int, str | None]:
            cur = await con.execute("SELECT chat_id, title, settings FROM chats WHERE chat_id = ANY(%s)", [[old, new]])
            rows = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
            settings = dict(rows.get(old, (None, {}))[1] or {})
            if isinstance(settings.get("context_from"), int):
                settings["context_from"] -= shift
            settings.update(rows.get(new, (None, {}))[1] or {})
            name = title or rows.get(new, (None, None))[0] or rows.get(old, (None, None))[0]
            cur = await con.execute(
                "INSERT INTO messages (chat_id, message_id, thread_id, user_id, user_name, role, text, reply_to, date, imported)"
                " SELECT %s, message_id - %s, thread_id, user_id, user_name, role, text, reply_to - %s, date, imported"
                " FROM messages WHERE chat_id = %s ON CONFLICT DO NOTHING", [new, shift, shift, old])
            moved = cur.rowcount
            await con.execute("INSERT INTO recalls SELECT %s, reply_message_id - %s, memory_message_id - %s, score"
                              " FROM recalls WHERE chat_id = %s ON CONFLICT DO NOTHING", [new, shift, shift, old])
            await con.execute(
                "INSERT INTO documents SELECT %s, message_id - %s, file_name, mime_type, kind, size_bytes, pages, chunks,"
                " user_id, user_name, date FROM documents WHERE chat_id = %s ON CONFLICT DO NOTHING", [new, shift, old])
            await con.execute(
                "INSERT INTO document_chunks SELECT %s, message_id - %s, chunk, page, section, text"
                " FROM document_chunks WHERE chat_id = %s ON CONFLICT DO NOTHING", [new, shift, old])
            await con.execute("INSERT INTO deliveries SELECT %s, message_id - %s, sent_at FROM deliveries"
                              " WHERE chat_id = %s ON CONFLICT DO NOTHING", [new, shift, old])
            await con.execute("INSERT INTO memory_evictions SELECT %s, message_id - %s, evicted_at FROM memory_evictions"
                              " WHERE chat_id = %s ON CONFLICT DO NOTHING", [new, shift, old])
            for table in ("messages", "recalls", "documents", "document_chunks", "deliveries", "memory_evictions"):
                await con.execute(f"DELETE FROM {table} WHERE chat_id = %s", [old])
            await con.execute("UPDATE usage SET chat_id = %s WHERE chat_id = %s", [new, old])
            await con.execute("UPDATE cleanups SET chat_id = %s WHERE chat_id = %s", [new, old])
            await con.execute("INSERT INTO subscriptions SELECT scope, %s, tier, expires_at, source, updated_at, renews, charge_id"
                              " FROM subscriptions WHERE scope = 'chat' AND scope_id = %s ON CONFLICT DO NOTHING", [new, old])
            await con.execute("INSERT INTO api_keys SELECT scope, %s, provider, token, hint, updated_at"
                              " FROM api_keys WHERE scope = 'chat' AND scope_id = %s ON CONFLICT DO NOTHING", [new, old])
            for table in ("subscriptions", "api_keys"):
                await con.execute(f"DELETE FROM {table} WHERE scope = 'chat' AND scope_id = %s", [old])
            await con.execute(
                "INSERT INTO chats (chat_id, type, title, settings, created_at) VALUES (%s, 'supergroup', %s, %s::jsonb, %s)"
                " ON CONFLICT (chat_id) DO UPDATE SET type = 'supergroup', title = excluded.title, settings = excluded.settings",
                [new, name, _json_object(settings), self._clock()])
            await con.execute("DELETE FROM chats WHERE chat_id = %s", [old])
            return int(moved), name

        moved, name = await self._transaction(work)
        self._chat_rows[new] = ("supergroup", name)
        self._settings_moved()
        self._chat_rows.pop(old, None)
        if old in self._chats_with_documents:
            self._chats_with_documents.discard(old)
            self._chats_with_documents.add(new)
        return moved

    # ------------------------------------------------------------ vector-memory bookkeeping

    async def memory_ids(self, chat_id: int | None = None) -> dict[int, set[int]]:
        await self._queue.sync()
        only, params = "", [DOC_ID_BASE]
        if chat_id is not None:
            only = " AND chat_id = %s"
        rows = await self._fetch(
            f"""
            SELECT chat_id, message_id FROM messages m
             WHERE role = 'user' AND length(text) > 0{only}
               AND NOT EXISTS (SELECT 1 FROM memory_evictions e WHERE e.chat_id = m.chat_id AND e.message_id = m.message_id)
            UNION ALL
            SELECT chat_id, %s::bigint + message_id * 65536 + chunk FROM document_chunks c
             WHERE true{only}
               AND NOT EXISTS (SELECT 1 FROM memory_evictions e WHERE e.chat_id = c.chat_id AND e.message_id = c.message_id)
            """,
            ([chat_id] if chat_id is not None else []) + params + ([chat_id] if chat_id is not None else []))
        out: dict[int, set[int]] = {}
        for c, mid in rows:
            out.setdefault(c, set()).add(mid)
        return out

    async def note_evictions(self, chat_id: int, message_ids: Sequence[int]) -> None:
        if not message_ids:
            return
        await self._fetch("INSERT INTO memory_evictions SELECT %s, unnest(%s::bigint[]), %s ON CONFLICT DO NOTHING",
                          [chat_id, list(message_ids), self._clock()])

    async def evicted_ids(self, chat_id: int) -> set[int]:
        return {r[0] for r in await self._fetch("SELECT message_id FROM memory_evictions WHERE chat_id = %s", [chat_id])}

    async def record_cleanup(self, record: CleanupRecord) -> None:
        r = record
        await self._fetch("INSERT INTO cleanups VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                          [r.chat_id, _utc(r.at), r.scope, r.scope_id, r.tier, r.limit_name, r.limit, r.messages, r.memories])

    async def cleanups(self, chat_id: int | None = None) -> list[CleanupRecord]:
        filters, params = equalities([("chat_id", chat_id)], "%s")
        rows = await self._fetch(
            "SELECT chat_id, max(cleaned_at), scope, scope_id, tier, limit_name, limit_value, sum(messages), sum(memories)"
            " FROM cleanups WHERE true" + filters +
            " GROUP BY chat_id, scope, scope_id, tier, limit_name, limit_value ORDER BY chat_id, max(cleaned_at)", params)
        return [CleanupRecord(int(c), at, sc, int(sid), t, ln, int(lv), int(m), int(mm))
                for c, at, sc, sid, t, ln, lv, m, mm in rows]

    # ------------------------------------------------------------ documents

    async def add_document(self, info: DocumentInfo, chunks: Sequence[DocumentChunk]) -> None:
        for c in chunks:
            if (c.chat_id, c.message_id) != (info.chat_id, info.message_id):
                raise ValueError(f"chunk {c.index} belongs to {c.chat_id}/{c.message_id}, not {info.chat_id}/{info.message_id}")

        async def work(con: Any) -> None:
            key = [info.chat_id, info.message_id]
            await con.execute("DELETE FROM document_chunks WHERE chat_id = %s AND message_id = %s", key)
            await con.execute("DELETE FROM documents WHERE chat_id = %s AND message_id = %s", key)
            await con.execute(
                "INSERT INTO documents (chat_id, message_id, file_name, mime_type, kind, size_bytes, pages, chunks,"
                " user_id, user_name, date) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [info.chat_id, info.message_id, _clean(info.file_name), info.mime_type, info.kind, info.size_bytes,
                 info.pages, info.chunks, info.user_id, _clean(info.user_name), _utc(info.date)])
            if chunks:
                async with con.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO document_chunks (chat_id, message_id, chunk, page, section, text)"
                        " VALUES (%s, %s, %s, %s, %s, %s)",
                        [(c.chat_id, c.message_id, c.index, c.page, _clean(c.section), _clean(c.text)) for c in chunks])

        await self._transaction(work)
        self._chats_with_documents.add(info.chat_id)

    def has_documents(self, chat_id: int) -> bool:
        """Whether this process has seen documents in the chat (loaded at open, then its own writes)."""
        return chat_id in self._chats_with_documents

    async def documents(self, chat_id: int | None = None) -> list[DocumentInfo]:
        await self._queue.sync()
        sql = ("SELECT chat_id, message_id, file_name, mime_type, kind, size_bytes, pages, chunks, user_id, user_name, date"
               " FROM documents")
        params: list[Any] = []
        if chat_id is not None:
            sql += " WHERE chat_id = %s"
            params.append(chat_id)
        rows = await self._fetch(sql + " ORDER BY date, chat_id, message_id", params)
        return [DocumentInfo(*r) for r in rows]

    async def iter_document_chunks(self, chat_id: int | None = None, *, batch: int = 2000) -> AsyncIterator[list[DocumentChunk]]:
        await self._queue.sync()
        async for rows in keyset_pages(self._fetch, CHUNKS_SELECT.format(date="d.date"), [("c.chat_id", chat_id)],
                                       ("c.chat_id", "c.message_id", "c.chunk"), batch, ph="%s"):
            yield [DocumentChunk(*r) for r in rows]

    # ------------------------------------------------------------ chats and users

    def knows_chat(self, chat_id: int) -> bool:
        """Whether this process has seen a chat row for ``chat_id`` (loaded at open, then its own writes)."""
        return chat_id in self._chat_rows

    # ------------------------------------------------------------ usage and recalls

    async def usage_rows(self, *, since: datetime | None = None) -> list[UsageRecord]:
        await self._queue.sync()
        sql = ("SELECT ts, chat_id, user_id, kind, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,"
               " seconds, images, pages FROM usage")
        params: list[Any] = []
        if since is not None:
            sql += " WHERE ts >= %s"
            params.append(_utc(since))
        return [UsageRecord(*r) for r in await self._fetch(sql + " ORDER BY ts", params)]

    async def usage_totals(self, by: str, *, since: datetime | None = None) -> list[UsageTotal]:
        if by not in _USAGE_KEY:
            raise ValueError(f"usage can be grouped by {', '.join(USAGE_GROUPINGS)}, not {by!r}")
        await self._queue.sync()
        conds: list[str] = [_USAGE_ONLY[by]] if by in _USAGE_ONLY else []
        params: list[Any] = []
        if since is not None:
            conds.append("ts >= %s")
            params.append(_utc(since))
        where = " WHERE " + " AND ".join(conds) if conds else ""
        rows = await self._fetch(
            f"SELECT {_USAGE_KEY[by]} AS k, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),"
            " coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL), coalesce(sum(seconds), 0),"
            f" coalesce(sum(images), 0), coalesce(sum(pages), 0) FROM usage{where} GROUP BY k ORDER BY k", params)
        return [UsageTotal(str(k), int(n), int(p), int(c), float(usd), int(u), float(sec), int(img), int(pg))
                for k, n, p, c, usd, u, sec, img, pg in rows]

    async def usage_counts(self, start: datetime, end: datetime) -> list[UsageCount]:
        await self._queue.sync()
        rows = await self._fetch(
            "SELECT chat_id, user_id, model, kind, count(*), coalesce(sum(prompt_tokens + completion_tokens), 0),"
            " coalesce(sum(images), 0), coalesce(sum(seconds), 0), coalesce(sum(pages), 0) FROM usage WHERE ts >= %s AND ts < %s"
            " GROUP BY 1, 2, 3, 4", [_utc(start), _utc(end)])
        return [UsageCount(int(c), int(u), m, k, int(n), int(t), int(i), float(sec), int(pg))
                for c, u, m, k, n, t, i, sec, pg in rows]

    async def recalls_for(self, chat_id: int, reply_message_id: int) -> list[tuple[int, float]]:
        await self._queue.sync()
        rows = await self._fetch(
            "SELECT memory_message_id, score FROM recalls WHERE chat_id = %s AND reply_message_id = %s"
            " ORDER BY score DESC, memory_message_id", [chat_id, reply_message_id])
        return [(r[0], r[1]) for r in rows]

    # ------------------------------------------------------------ operations

    async def stats(self) -> dict:
        """Row counts, ``file_bytes`` (the database's size on the server), ``schema_version`` and the
        writer counters of this process (see ``memory.store``)."""
        await self._queue.sync()
        (row,) = await self._fetch(
            "SELECT (SELECT count(*) FROM chats), (SELECT count(*) FROM users), (SELECT count(*) FROM messages),"
            " (SELECT count(*) FROM usage), (SELECT count(*) FROM recalls), pg_database_size(current_database())")
        out: dict[str, Any] = dict(zip(("chats", "users", "messages", "usage", "recalls"), map(int, row[:5])))
        out.update(file_bytes=int(row[5]), schema_version=self.schema_version, commits=self.commits,
                   rows_written=self.rows_written, dropped_rows=self.dropped_rows, pending=self.pending)
        return out


# ---------------------------------------------------------------- rows → parameters

def _message_params(m: StoredMessage) -> tuple:
    return (m.chat_id, m.message_id, m.thread_id, m.user_id, _clean(m.user_name), m.role, _clean(m.text), m.reply_to,
            _utc(m.date), m.imported)


def _usage_params(u: UsageRecord) -> tuple:
    return (_utc(u.ts), u.chat_id, u.user_id, u.kind, u.model, u.prompt_tokens, u.completion_tokens, u.cost_usd,
            u.latency_ms, float(u.seconds), int(u.images), int(u.pages))


def _chat_params(c: tuple) -> tuple:
    return (c[0], c[1], _clean(c[2]), from_us(c[3]))


def _delivery_params(d: tuple) -> tuple:
    return (d[0], d[1], from_us(d[2]))
