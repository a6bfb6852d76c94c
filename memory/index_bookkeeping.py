"""Vector-memory bookkeeping: what LanceDB should hold, per the dialogue store's database (user
messages with text and document chunks, minus the memories the capacity cleanup evicted on purpose),
the evictions themselves (``memory_evictions``) and the capacity cleanups' log (``cleanups``).

The start-up gap check and ``kith memory reindex`` (``memory.maintenance``) compare ``memory_ids``
with LanceDB; the capacity cleanup (``memory.cleanup``) notes evictions and logs what it removed;
``/memory``, ``/admin`` and the control server read the log.

One SQL text per statement for DuckDB and PostgreSQL (``memory.sql_domain``); every write is
committed before it returns. The tables come with the dialogue store's schema (DuckDB versions 4
and 5, PostgreSQL versions 4 and 5); moving a chat's rows to its supergroup and deleting messages
(with their evictions) stay with the dialogue store's ``migrate_chat`` / ``delete_messages``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from .sql_domain import SqlBackend, SqlDomainStore, ts, us
from .types import DOC_ID_BASE, CleanupRecord

__all__ = ["IndexBookkeeping"]


class IndexBookkeeping(SqlDomainStore):
    """The ids vector memory should hold, the evictions, and the capacity cleanups' log.

    clock: the current tz-aware UTC time (``evicted_at``). Every method raises MemoryStoreError
    (naming "memory bookkeeping") when the database fails."""

    DOMAIN = "memory bookkeeping"

    def __init__(self, backend: SqlBackend, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__(backend)
        self._clock = clock

    async def memory_ids(self, chat_id: int | None = None) -> dict[int, set[int]]:
        """Per chat id, the ids vector memory should hold: every stored user message with text (some
        may be whitespace only: the indexer skips those) and every document chunk
        (``types.chunk_memory_id``: ``DOC_ID_BASE + (message_id << 16) + chunk``), minus what the
        capacity cleanup evicted; of one chat (``{}`` when it has none), or of all. Commits the
        queued writes first (read-your-writes)."""
        await self.backend.sync()
        only, chat = ("", []) if chat_id is None else (" AND chat_id = ?", [chat_id])
        rows = await self._query(
            "SELECT chat_id, message_id FROM messages m"
            " WHERE role = 'user' AND length(text) > 0" + only +
            "   AND NOT EXISTS (SELECT 1 FROM memory_evictions e WHERE e.chat_id = m.chat_id AND e.message_id = m.message_id)"
            " UNION ALL"
            " SELECT chat_id, CAST(? AS BIGINT) + message_id * 65536 + chunk FROM document_chunks c"
            " WHERE true" + only +
            "   AND NOT EXISTS (SELECT 1 FROM memory_evictions e WHERE e.chat_id = c.chat_id AND e.message_id = c.message_id)",
            [*chat, DOC_ID_BASE, *chat])
        out: dict[int, set[int]] = {}
        for c, mid in rows:
            out.setdefault(int(c), set()).add(int(mid))
        return out

    async def note_evictions(self, chat_id: int, message_ids: Sequence[int]) -> None:
        """Record that the memories of ``message_ids`` (messages of ``chat_id``; a document's message
        id stands for its chunks) were dropped on purpose (capacity cleanup over a memory limit; the
        messages stay readable): ``memory_ids`` leaves them out, so neither the gap check nor
        ``kith memory reindex`` embeds them again. Idempotent: an id noted before (or twice in one
        call) is kept once, with its first time. Nothing for no ids."""
        ids = sorted({int(i) for i in message_ids})
        if not ids:
            return
        await self._query(
            "INSERT INTO memory_evictions (chat_id, message_id, evicted_at)"
            " SELECT ?, unnest(CAST(? AS BIGINT[])), {ts} ON CONFLICT DO NOTHING",
            [chat_id, ids, us(self._clock())])

    async def evicted_ids(self, chat_id: int) -> set[int]:
        """Message ids of ``chat_id`` whose memory the capacity cleanup evicted (``note_evictions``)."""
        rows = await self._query("SELECT message_id FROM memory_evictions WHERE chat_id = ?", [chat_id])
        return {int(r[0]) for r in rows}

    async def record_cleanup(self, record: CleanupRecord) -> None:
        """Log what one capacity cleanup removed from one chat, and why (``record.at``: a naive time
        is taken as UTC; kept to the microsecond)."""
        r = record
        await self._query(
            "INSERT INTO cleanups (chat_id, cleaned_at, scope, scope_id, tier, limit_name, limit_value, messages, memories)"
            " VALUES (?, {ts}, ?, ?, ?, ?, ?, ?, ?)",
            [r.chat_id, us(r.at), r.scope, r.scope_id, r.tier, r.limit_name, r.limit, r.messages, r.memories])

    async def cleanups(self, chat_id: int | None = None) -> list[CleanupRecord]:
        """What capacity cleanups removed, per chat and reason (scope, scope id, tier, limit name and
        value): one ``CleanupRecord`` each, with the sums of ``messages`` and ``memories`` and the
        latest ``at`` (tz-aware UTC); of one chat or of all, by chat id, then oldest first."""
        only, params = ("", []) if chat_id is None else (" WHERE chat_id = ?", [chat_id])
        rows = await self._query(
            f"SELECT chat_id, {self._us('max(cleaned_at)')}, scope, scope_id, tier, limit_name, limit_value,"
            " sum(messages), sum(memories) FROM cleanups" + only +
            " GROUP BY chat_id, scope, scope_id, tier, limit_name, limit_value ORDER BY chat_id, max(cleaned_at)",
            params)
        return [CleanupRecord(int(c), ts(at), sc, int(sid), t, ln, int(lv), int(m), int(mm))
                for c, at, sc, sid, t, ln, lv, m, mm in rows]
