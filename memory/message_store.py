"""The stored messages of every chat, read, edited and deleted: the ``messages`` table of the
dialogue store's database (with the ``deliveries`` it reads for ``answered_ids``, and the recalls,
documents and evictions a delete takes along).

The writes stay on the dialogue store's write-behind queue (``store.add``, ``add_many``,
``note_delivery``: ``memory.write_behind``); this module reads them. Every read of one chat first
commits that chat's queued rows, and only those (``sync_chat``: another chat's queue never delays it);
a read across chats commits everything queued (``sync``). A chat the backend knows has no messages
is answered without a query (``may_have_messages``: DuckDB's directory; PostgreSQL, written by
several processes, always asks the database): a new chat's first turn reads nothing.

One SQL text per statement for DuckDB and PostgreSQL (``memory.sql_domain``); dates round-trip to the
microsecond as tz-aware UTC. The table comes with the dialogue store's schema.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Protocol

from .sql_domain import SqlBackend, SqlDomainStore, ts, us
from .store_base import equalities, keyset_pages
from .types import StoredMessage

__all__ = ["MessageBackend", "MessageStore"]

_COLS = "chat_id, message_id, user_id, user_name, text, {date}, role, reply_to, thread_id, imported"
_IN_IDS = "IN (SELECT unnest(?::BIGINT[]))"  # a list parameter of ids (both engines take the array cast)


class MessageBackend(SqlBackend, Protocol):
    """What ``MessageStore`` needs of the dialogue store besides SQL: its queue's read-your-writes for
    one chat, its directory of chats with messages, and how its engine keeps a text."""

    async def sync_chat(self, chat_id: int, *, deliveries: bool = False) -> None:
        """Commit the chat's queued messages (and deliveries with ``deliveries``), only if it has any."""

    def may_have_messages(self, chat_id: int) -> bool:
        """False only when the chat certainly has no stored or queued messages nor deliveries."""

    def stored_text(self, text: str) -> str:
        """``text`` as the engine keeps it (PostgreSQL: U+0000 as U+FFFD)."""


class MessageStore(SqlDomainStore):
    """The messages of the chats, by ``(chat_id, message_id)``; a chat's reads return only its rows
    (memory never crosses chats), ordered by message id.

    Every method raises MemoryStoreError when the database fails (DiskFull when it is out of space),
    or when the store is not open."""

    DOMAIN = "messages"
    backend: MessageBackend

    def __init__(self, backend: MessageBackend) -> None:
        super().__init__(backend)

    def _select(self) -> str:
        return "SELECT " + _COLS.format(date=self._us("date")) + " FROM messages"

    async def recent(self, chat_id: int, limit: int, *, thread_id: int | None = None, before_id: int | None = None,
                     general_only: bool = False) -> list[StoredMessage]:
        """The newest ``limit`` messages of ``chat_id`` (only thread ``thread_id`` if given; only the
        messages outside any thread with ``general_only``; only ids below ``before_id`` if given),
        returned oldest → newest by message id. The chat actor's window: on every actor start."""
        if limit <= 0 or not self.backend.may_have_messages(chat_id):
            return []
        await self.backend.sync_chat(chat_id)
        sql, params = self._select() + " WHERE chat_id = ?", [chat_id]
        if thread_id is not None:
            sql += " AND thread_id = ?"
            params.append(thread_id)
        elif general_only:
            sql += " AND thread_id IS NULL"
        if before_id is not None:
            sql += " AND message_id < ?"
            params.append(before_id)
        rows = await self._query(sql + " ORDER BY message_id DESC LIMIT ?", [*params, limit])
        return [_message(r) for r in reversed(rows)]

    async def get(self, chat_id: int, message_ids: Sequence[int]) -> list[StoredMessage]:
        """The stored messages of ``chat_id`` among ``message_ids``, by message id (ids not stored are
        skipped)."""
        if not message_ids or not self.backend.may_have_messages(chat_id):
            return []
        await self.backend.sync_chat(chat_id)
        rows = await self._query(self._select() + f" WHERE chat_id = ? AND message_id {_IN_IDS} ORDER BY message_id",
                                 [chat_id, list(message_ids)])
        return [_message(r) for r in rows]

    async def around(self, chat_id: int, message_ids: Sequence[int], before: int,
                     after: int) -> dict[int, list[StoredMessage]]:
        """For each stored id of ``message_ids``: up to ``before`` messages preceding it, itself, and up
        to ``after`` following it, in message-id order within ``chat_id``, oldest → newest. Ids not
        stored are absent from the result."""
        if not message_ids or not self.backend.may_have_messages(chat_id):
            return {}
        await self.backend.sync_chat(chat_id)
        rows = await self._query(
            "WITH m AS (SELECT " + _COLS.format(date=self._us("date") + " AS date_us")
            + ", row_number() OVER (ORDER BY message_id) AS rn FROM messages WHERE chat_id = ?),"
            f" c AS (SELECT message_id AS center, rn AS crn FROM m WHERE message_id {_IN_IDS})"
            " SELECT c.center, m.chat_id, m.message_id, m.user_id, m.user_name, m.text, m.date_us, m.role, m.reply_to,"
            " m.thread_id, m.imported FROM c JOIN m ON m.rn BETWEEN c.crn - ? AND c.crn + ?"
            " ORDER BY c.center, m.message_id",
            [chat_id, list(message_ids), max(0, before), max(0, after)])
        out: dict[int, list[StoredMessage]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(_message(r[1:]))
        return out

    async def answered_ids(self, chat_id: int) -> set[int]:
        """The ids of ``chat_id``'s messages the bot replied to: its stored replies' ``reply_to`` and
        the deliveries ``note_delivery`` noted (queued ones committed first). The durable record that
        keeps a restart, a replay or a re-delivered update from answering twice; read on every actor
        start."""
        if not self.backend.may_have_messages(chat_id):
            return set()
        await self.backend.sync_chat(chat_id, deliveries=True)
        rows = await self._query(
            "SELECT reply_to FROM messages WHERE chat_id = ? AND role = 'assistant' AND reply_to IS NOT NULL"
            " UNION SELECT message_id FROM deliveries WHERE chat_id = ?", [chat_id, chat_id])
        return {int(r[0]) for r in rows}

    async def max_id(self, chat_id: int) -> int | None:
        """The highest stored message id of ``chat_id``; None when the chat has no messages."""
        if not self.backend.may_have_messages(chat_id):
            return None
        await self.backend.sync_chat(chat_id)
        rows = await self._query("SELECT max(message_id) FROM messages WHERE chat_id = ?", [chat_id])
        return None if rows[0][0] is None else int(rows[0][0])

    async def count(self, chat_id: int | None = None, *, user_id: int | None = None,
                    imported: bool | None = None) -> int:
        """Stored messages, in one chat and/or by one sender (all when both are None); ``imported``
        True/False: only the host's imports / only what was said in the chat. Commits everything
        queued first."""
        await self.backend.sync()
        filters, params = equalities([("chat_id", chat_id), ("user_id", user_id), ("imported", imported)])
        return int((await self._query("SELECT count(*) FROM messages WHERE true" + filters, params))[0][0])

    async def iter(self, chat_id: int | None = None, *, batch: int = 5000) -> AsyncIterator[list[StoredMessage]]:
        """Every stored message (of one chat, or all), in pages of at most ``batch``, ordered by
        ``(chat_id, message_id)``. Keyset-paginated, so it tolerates writes between pages. Commits
        everything queued first."""
        await self.backend.sync()
        async for rows in keyset_pages(self._query, self._select() + " WHERE true", [("chat_id", chat_id)],
                                       ("chat_id", "message_id"), batch):
            yield [_message(r) for r in rows]

    async def keys(self, *, chat_id: int | None = None, user_id: int | None = None, before: datetime | None = None,
                   limit: int | None = None, imported: bool | None = None) -> list[tuple[int, int]]:
        """``(chat_id, message_id)`` of the stored messages of one chat and/or one sender (at least one
        given), dated before ``before`` if given (naive: UTC), oldest first by ``(date, message_id)``,
        at most ``limit``; ``imported`` as in ``count``. Commits everything queued first. raises
        ValueError when neither ``chat_id`` nor ``user_id`` is given."""
        if chat_id is None and user_id is None:
            raise ValueError("message keys need a chat_id or a user_id")
        await self.backend.sync()
        filters, params = equalities([("chat_id", chat_id), ("user_id", user_id), ("imported", imported)])
        sql = "SELECT chat_id, message_id FROM messages WHERE true" + filters
        if before is not None:
            sql += " AND date < {ts}"
            params.append(us(before))
        sql += " ORDER BY date, chat_id, message_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, limit))
        return [(int(c), int(m)) for c, m in await self._query(sql, params)]

    async def update_text(self, chat_id: int, message_id: int, text: str) -> StoredMessage | None:
        """Replace the text of a stored message (an edit); the message as now stored, or None when it
        is not stored. Committed before it returns."""
        if not self.backend.may_have_messages(chat_id):
            return None
        await self.backend.sync_chat(chat_id)
        rows = await self._query(
            "UPDATE messages SET text = ? WHERE chat_id = ? AND message_id = ? RETURNING "
            + _COLS.format(date=self._us("date")), [self.backend.stored_text(text), chat_id, message_id])
        return _message(rows[0]) if rows else None

    async def delete(self, chat_id: int, *, user_id: int | None = None,
                     message_ids: Sequence[int] | None = None) -> list[int]:
        """Delete messages of ``chat_id`` — all of them, or only ``user_id``'s, and/or only
        ``message_ids`` — with the recalls that reference them (as memory or as reply), the documents
        they carried (with their chunks) and their evictions, in one transaction. Returns the deleted
        message ids, ascending (so the caller can delete the same ids, and the chunks of those that
        carried documents, from vector memory). Commits everything queued first."""
        if message_ids is not None and not message_ids:
            return []
        await self.backend.sync()
        cond, params = "chat_id = ?", list[Any]([chat_id])
        if user_id is not None:
            cond += " AND user_id = ?"
            params.append(user_id)
        if message_ids is not None:
            cond += f" AND message_id {_IN_IDS}"
            params.append(list(message_ids))
        doomed = f"(SELECT message_id FROM messages WHERE {cond})"
        # what references the messages goes first, found through them; then the messages themselves
        *_, deleted = await self._tx(
            (f"DELETE FROM recalls WHERE chat_id = ? AND (memory_message_id IN {doomed} OR reply_message_id IN {doomed})",
             [chat_id, *params, *params]),
            *((f"DELETE FROM {table} WHERE chat_id = ? AND message_id IN {doomed}", [chat_id, *params])
              for table in ("document_chunks", "documents", "memory_evictions")),  # a document leaves with its message
            (f"DELETE FROM messages WHERE {cond} RETURNING message_id", params))
        return sorted(int(r[0]) for r in deleted)


def _message(r: Sequence[Any]) -> StoredMessage:
    """A row of ``_COLS`` (the date as µs since the epoch) as a ``StoredMessage``."""
    return StoredMessage(r[0], r[1], r[2], r[3], r[4], ts(r[5]), r[6], r[7], r[8], bool(r[9]))
