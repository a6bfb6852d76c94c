"""What the dialogue stores share: the front of the write-behind queue (the hot-path writes and
``flush``), their lifecycle around the writer task, and the small row helpers. A store subclasses
``QueuedStore`` and gives the queue its commit function (``memory.write_behind``)."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc

from .batch import RecallRow
from .errors import DiskFull
from .types import MemoryHit, StoredMessage, UsageRecord
from .write_behind import WriteBehind

__all__ = ["QueuedStore", "describe_row", "equalities", "keyset_pages"]


class QueuedStore:
    """The hot-path writes of a ``DialogueStore`` (``add``, ``add_many``, ``record_usage``,
    ``record_recall``, ``flush``, ``pending``, ``writer_lag_s``, ``disk_full``) over ``self._queue``.

    A subclass sets ``self._queue`` (a ``WriteBehind``) in its ``__init__``, calls ``_start_writer(close)``
    once open and ``_stop_writer(exc, close)`` when leaving; ``_on_messages`` sees every queued
    message (e.g. to keep a directory of chats with messages)."""

    _queue: WriteBehind
    _tg: anyio.abc.TaskGroup | None = None
    _owner: AsyncExitStack | None = None  # holds the writer's task group while the store is open

    def add(self, msg: StoredMessage) -> None:
        """Queue one message for the writer. Returns at once; ``flush()`` waits for the commit.

        Idempotent on ``(chat_id, message_id)``: the first write wins. raises MemoryStoreError when the
        store is not open; DiskFull once a commit failed for lack of space, or when the disk had no
        room for the store's reserve (intake stops; it clears when a later commit succeeds with the
        reserve in place). A reply (role ``assistant``) is accepted even then: it was already sent,
        and the reserve keeps it until it is committed (``memory.write_behind``).
        """
        self.add_many((msg,))

    def add_many(self, msgs: Iterable[StoredMessage]) -> None:
        """Queue many messages (see ``add``)."""
        self._on_messages(self._queue.put_messages(msgs))

    def _on_messages(self, msgs: list[StoredMessage]) -> None:
        """Called with every batch of queued messages (nothing by default)."""

    def record_usage(self, rec: UsageRecord) -> None:
        """Queue one usage record (one billed call, already made: accepted while intake is stopped).
        raises MemoryStoreError when the store is not open."""
        self._queue.put_usage(rec)

    def record_recall(self, chat_id: int, reply_message_id: int, hits: Sequence[MemoryHit]) -> None:
        """Queue which memories were injected into the reply ``reply_message_id`` of ``chat_id``, with
        their fused score. Recording the same (reply, memory) twice keeps the first.

        Accepted while intake is stopped (the reply was sent). raises ValueError when a hit belongs
        to another chat (memory never crosses chats, docs/design.md §4); MemoryStoreError when not open.
        """
        self._queue.check_open()
        rows: list[RecallRow] = []
        for h in hits:
            if h.chat_id != chat_id:
                raise ValueError(f"recall for chat {chat_id} contains a memory of chat {h.chat_id}")
            rows.append((chat_id, reply_message_id, h.message_id, float(h.score)))
        self._queue.put_recalls(rows)

    async def queue_sql(self, sql: str, params: Sequence[Any]) -> None:
        """Queue one statement of a per-domain store (one SQL text, ``?`` placeholders, JSON-able
        parameters), committed by the writer in its next transaction, after the rows queued before
        it. Returns once the reserve holds it (as durable against a ``kill -9`` as a commit), else
        once it is committed. For a write on the reply path (``memory.ledger``'s debit) that must not
        wait for a commit; reads of its table must ``flush()`` first. raises MemoryStoreError."""
        if not self._queue.put_sql((sql, list(params))):
            await self._queue.flush()

    async def sync(self) -> None:
        """Read-your-writes for a read across chats (usage, recalls): commit what is queued or being
        committed, if anything. raises MemoryStoreError."""
        await self._queue.sync()

    async def sync_chat(self, chat_id: int, *, deliveries: bool = False) -> None:
        """Read-your-writes for one chat's messages (and its deliveries with ``deliveries``): commit
        what is queued only if that chat has such rows queued or being committed (another chat's
        queue never delays the read). raises MemoryStoreError."""
        await self._queue.sync_chat(chat_id, deliveries=deliveries)

    async def flush(self) -> None:
        """Return when every row enqueued before the call is committed.

        raises MemoryStoreError when the database fails to write (the rows stay queued and are retried).
        """
        await self._queue.flush()

    async def settle(self) -> None:
        """Return when every row enqueued before the call survives a crash of the process: at once
        when the reserve holds them all (``WriteBehind.journaled``), else ``flush()``.
        raises MemoryStoreError (only when it flushes)."""
        if not self._queue.journaled:
            await self._queue.flush()

    @property
    def pending(self) -> int:
        """Rows queued and not yet handed to the database."""
        return self._queue.pending

    @property
    def writer_lag_s(self) -> float:
        """Seconds the oldest row not yet committed has waited (0 when everything is committed)."""
        return self._queue.writer_lag_s

    @property
    def disk_full(self) -> DiskFull | None:
        """Set while commits fail for lack of space, or the disk has no room for the reserve
        (intake raises it); None otherwise."""
        return self._queue.blocked

    # ------------------------------------------------------------ the writer's lifecycle

    async def _start_writer(self, close: Callable[[], Awaitable[None]]) -> None:
        """Start the writer task in a task group this store owns until ``_stop_writer``. When that
        fails half-way, the writer is stopped, its group left and the database ``close()``d
        (shielded) before the error propagates as itself."""
        stack = AsyncExitStack()
        try:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._queue.start(self._tg)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._queue.aclose()  # a writer already started returns (nothing was queued yet)
            await stack.aclose()  # joins it (a shield scope must not span the group's own scope)
            with anyio.CancelScope(shield=True):
                await close()
            raise
        self._owner = stack

    async def _stop_writer(self, exc: tuple[Any, Any, Any], close: Callable[[], Awaitable[None]]) -> bool | None:
        """Drain the queue, then ``close()`` the database (shielded), then leave the writer's task
        group; the body's own exception propagates as itself (not in an ExceptionGroup)."""
        owner, self._owner = self._owner, None
        assert owner is not None
        with anyio.CancelScope(shield=True):
            await self._queue.aclose()
            await close()
        if exc[0] is None or issubclass(exc[0], anyio.get_cancelled_exc_class()):
            return await owner.__aexit__(*exc)
        await owner.aclose()
        return False


def describe_row(row: Any) -> str:
    """A short description of a queued row, for the log line of one that was dropped."""
    if isinstance(row, StoredMessage):
        return f"(chat_id={row.chat_id!r}, message_id={row.message_id!r})"
    if isinstance(row, UsageRecord):
        return f"(chat_id={row.chat_id!r}, ts={row.ts!r})"
    return repr(row)[:200]


def equalities(where: Sequence[tuple[str, Any]], ph: str = "?") -> tuple[str, list[Any]]:
    """``(" AND col = ? …", [values])`` for the (column, value) pairs whose value is not None, to
    append to a query ending in ``WHERE true``. ``ph``: the driver's placeholder."""
    sql, params = "", []
    for col, value in where:
        if value is not None:
            sql += f" AND {col} = {ph}"
            params.append(value)
    return sql, params


async def keyset_pages(fetch: Callable[[str, list[Any]], Awaitable[list[tuple[Any, ...]]]], select: str,
                       where: Sequence[tuple[str, Any]], key: Sequence[str], batch: int,
                       ph: str = "?") -> AsyncIterator[list[tuple[Any, ...]]]:
    """Every row of ``select`` (a query ending in ``WHERE true`` whose first columns are ``key``), with
    the equalities ``where`` (column, value) whose value is not None, in pages of at most ``batch``
    ordered by ``key``. Keyset-paginated: each page starts after the last key of the one before, so
    writes between pages neither repeat nor skip rows. ``fetch(sql, params)``: the store's query;
    ``ph``: its driver's placeholder (``?`` DuckDB, ``%s`` psycopg)."""
    batch = max(1, batch)
    last: tuple[Any, ...] | None = None
    cols = ", ".join(key)
    while True:
        filters, params = equalities(where, ph)
        sql = select + filters
        if last is not None:
            sql += f" AND ({cols}) > ({', '.join([ph] * len(key))})"
            params += list(last)
        sql += f" ORDER BY {cols} LIMIT {ph}"
        params.append(batch)
        rows = await fetch(sql, params)
        if not rows:
            return
        yield rows
        if len(rows) < batch:
            return
        last = tuple(rows[-1][: len(key)])
