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
This store has no reserve (``memory.reserve.Journal``: a file next to an embedded database), so the
delivery record before a reply's first byte (``note_delivery``) is queued and flushed: committed,
with the chat's queued messages, before it returns.

Differences from the DuckDB store, both from PostgreSQL itself:
- a NUL character (U+0000, which Telegram never sends) in a text is stored as U+FFFD: PostgreSQL's
  ``text`` and ``jsonb`` cannot hold it;
- the directory of small tables is per process: the synchronous hints ``knows_chat`` and
  ``documents.has`` come from what this process loaded at open and wrote since.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc

from .batch import Batch, save_unsaved
from .domains import DomainStores
from .errors import DiskFull, MemoryStoreError, is_disk_full
from .postgres_schema import migrate
from .schema import from_us, to_us
from .settings_store import settings_json
from .sql_domain import POSTGRESQL, Dialect
from .sql_domain import no_nul as _clean
from .store_base import QueuedStore, describe_row
from .types import (
    MIGRATION_SHIFT,
    StoredMessage,
    UsageRecord,
)
from .write_behind import WriteBehind

T = TypeVar("T")

__all__ = ["PostgresStore", "redact"]

log = logging.getLogger(__name__)

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


def _utc(ts: datetime) -> datetime:
    """A naive datetime is taken as UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


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
            import psycopg  # deferred: psycopg (~110 ms), only on the PostgreSQL backend
            from psycopg_pool import AsyncConnectionPool  # deferred: psycopg, only on the PostgreSQL backend
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
        await self._open_domains(self._close)
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

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) and return its rows ([] for a statement without rows)."""
        async def work(con: Any) -> list[tuple[Any, ...]]:
            cur = await con.execute(sql, params)
            return await cur.fetchall() if cur.description is not None else []

        return await self._on_connection(work, transaction=False)

    async def _transaction(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``await work(con)`` in one transaction on a pooled connection."""
        return await self._on_connection(work, transaction=True)

    async def _on_connection(self, work: Callable[[Any], Awaitable[T]], *, transaction: bool) -> T:
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

    async def sql_query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders, as the DuckDB store takes them; no other ``?`` or
        ``%``), committed on return; its rows ([] for none). For the per-domain stores
        (``memory.sql_domain``). raises psycopg.Error; MemoryStoreError when the server fails."""
        return await self._fetch(sql.replace("?", "%s"), list(params))

    async def sql_transaction(self, statements: Sequence[tuple[str, Sequence[Any]]], *,
                              lock: str | None = None) -> list[list[tuple[Any, ...]]]:
        """Run ``statements`` (SQL with ``?`` placeholders, as the DuckDB store takes them, and their
        parameters) in one transaction, committed before it returns; each statement's rows ([] for
        none). For the small per-domain stores of this package (``memory.reminders``); not part of
        the ``DialogueStore`` contract. The SQL must hold no other ``?`` or ``%``. ``lock``: a name
        the transaction holds a PostgreSQL advisory lock on first (``pg_advisory_xact_lock``), so
        transactions of several processes on the same name run one after another (READ COMMITTED:
        each statement after it sees what the one before committed)."""
        async def work(con: Any) -> list[list[tuple[Any, ...]]]:
            if lock is not None:
                await con.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [lock])
            out = []
            for sql, params in statements:
                cur = await con.execute(sql.replace("?", "%s"), list(params))
                out.append(await cur.fetchall() if cur.description is not None else [])
            return out

        return await self._transaction(work)

    def _wrap(self, exc: BaseException) -> BaseException:
        import psycopg  # deferred: psycopg (~110 ms), only on the PostgreSQL backend

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
        import psycopg  # deferred: psycopg (~110 ms), only on the PostgreSQL backend

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
        import psycopg  # deferred: psycopg (~110 ms), only on the PostgreSQL backend

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

    # ------------------------------------------------------------ messages (store.messages reads them: memory.message_store)

    def may_have_messages(self, chat_id: int) -> bool:
        """Always True: other processes write the database too, so no set this process keeps can say
        a chat has no messages; ``store.messages`` asks the database."""
        return True

    def stored_text(self, text: str) -> str:
        """``text`` as PostgreSQL keeps it: U+0000 as U+FFFD (its ``text`` cannot hold U+0000)."""
        return _clean(text) or text

    async def note_delivery(self, chat_id: int, message_id: int) -> None:
        """Durably note a reply to ``message_id`` is being sent: queued and flushed (no reserve here),
        so it is committed with the chat's queued messages before this returns. raises
        MemoryStoreError when the server cannot write (the row stays queued and is retried)."""
        if not self._queue.put_delivery((chat_id, message_id, to_us(self._clock()))):
            await self._queue.flush()

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
                [new, name, settings_json(settings), self._clock()])
            await con.execute("DELETE FROM chats WHERE chat_id = %s", [old])
            return int(moved), name

        moved, name = await self._transaction(work)
        self._chat_rows[new] = ("supergroup", name)
        self._settings_moved()
        self._chat_rows.pop(old, None)
        self.documents.chat_moved(old, new)
        return moved


    # ------------------------------------------------------------ chats and users

    def knows_chat(self, chat_id: int) -> bool:
        """Whether this process has seen a chat row for ``chat_id`` (loaded at open, then its own writes)."""
        return chat_id in self._chat_rows


    # ------------------------------------------------------------ operations

    async def stats(self) -> dict[str, Any]:
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

def _message_params(m: StoredMessage) -> tuple[Any, ...]:
    return (m.chat_id, m.message_id, m.thread_id, m.user_id, _clean(m.user_name), m.role, _clean(m.text), m.reply_to,
            _utc(m.date), m.imported)


def _usage_params(u: UsageRecord) -> tuple[Any, ...]:
    return (_utc(u.ts), u.chat_id, u.user_id, u.kind, u.model, u.prompt_tokens, u.completion_tokens, u.cost_usd,
            u.latency_ms, float(u.seconds), int(u.images), int(u.pages))


def _chat_params(c: tuple[Any, ...]) -> tuple[Any, ...]:
    return (c[0], c[1], _clean(c[2]), from_us(c[3]))


def _delivery_params(d: tuple[Any, ...]) -> tuple[Any, ...]:
    return (d[0], d[1], from_us(d[2]))
