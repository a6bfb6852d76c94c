"""Reads of what the model calls cost and what memory a reply was given: the ``usage`` and ``recalls``
tables of the dialogue store's database (usage reports, the quota and budget counters, evaluations).

The WRITES are not here: ``record_usage`` and ``record_recall`` stay on the dialogue store, whose
write-behind queue commits them off the hot path. So every read here first commits what that queue
holds (``backend.sync()``): a read sees every row recorded before it in this process.

One SQL text per statement for DuckDB and PostgreSQL (``memory.sql_domain``); the tables come with
the dialogue store's schema.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from .sql_domain import SqlDomainStore, ts, us
from .types import USAGE_GROUPINGS, UsageCount, UsageRecord, UsageTotal

__all__ = ["USAGE_GROUPINGS", "UsageStore"]

# totals: the SQL of each grouping's key (standard SQL: the same on both engines). ``day``: the UTC
# date (a DATE value: formatted here, not by the server, whose date style may vary).
_KEY = {
    "user": "CAST(user_id AS VARCHAR)",
    "chat": "CAST(chat_id AS VARCHAR)",
    "model": "model",
    "day": "CAST(ts AT TIME ZONE 'UTC' AS DATE)",
    "kind": "kind",
    "plugin": "model",  # a tool call's row names its plugin as its model
}
_ONLY = {"plugin": "kind = 'tool'"}  # totals: the rows a grouping sums (all when absent)


class UsageStore(SqlDomainStore):
    """The stored usage records (one per billed call) and recalls (memories injected into a reply).

    Times are tz-aware UTC with microsecond precision (a naive parameter is taken as UTC). Every
    method raises MemoryStoreError when the database fails."""

    DOMAIN = "usage"

    async def rows(self, *, since: datetime | None = None) -> list[UsageRecord]:
        """Every usage record (or those with ``ts >= since``), oldest first; ``seconds``, ``images``
        and ``pages`` are 0 where a row has none."""
        await self.backend.sync()
        sql = (f"SELECT {self._us('ts')}, chat_id, user_id, kind, model, prompt_tokens, completion_tokens, cost_usd,"
               " latency_ms, coalesce(seconds, 0), coalesce(images, 0), coalesce(pages, 0) FROM usage")
        params: list[Any] = []
        if since is not None:
            sql += " WHERE ts >= {ts}"
            params.append(us(since))
        rows = await self._query(sql + " ORDER BY ts", params)
        return [UsageRecord(ts(r[0]), int(r[1]), int(r[2]), r[3], r[4], int(r[5]), int(r[6]),
                            None if r[7] is None else float(r[7]), float(r[8]), float(r[9]), int(r[10]), int(r[11]))
                for r in rows]

    async def totals(self, by: str, *, since: datetime | None = None) -> list[UsageTotal]:
        """Usage summed per ``by`` — ``user`` | ``chat`` (the id as text) | ``model`` | ``day`` (UTC,
        ``YYYY-MM-DD``) | ``kind`` | ``plugin`` (the tool calls only, keyed by plugin); the names are
        ``USAGE_GROUPINGS`` — over the records with ``ts >= since`` (all when None), ordered by key
        as text (code point order, the same on every engine). raises ValueError for another ``by``."""
        if by not in _KEY:
            raise ValueError(f"usage can be grouped by {', '.join(USAGE_GROUPINGS)}, not {by!r}")
        await self.backend.sync()
        conds: list[str] = [_ONLY[by]] if by in _ONLY else []
        params: list[Any] = []
        if since is not None:
            conds.append("ts >= {ts}")
            params.append(us(since))
        where = " WHERE " + " AND ".join(conds) if conds else ""
        rows = await self._query(
            f"SELECT {_KEY[by]}, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),"
            " coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL), coalesce(sum(seconds), 0),"
            f" coalesce(sum(images), 0), coalesce(sum(pages), 0) FROM usage{where} GROUP BY 1", params)
        totals = [UsageTotal(str(k), int(n), int(p), int(c), float(usd), int(u), float(sec), int(img), int(pg))
                  for k, n, p, c, usd, u, sec, img, pg in rows]
        return sorted(totals, key=lambda t: t.key)

    async def counts(self, start: datetime, end: datetime) -> list[UsageCount]:
        """Usage per ``(chat_id, user_id, model, kind)`` with ``start <= ts < end``: calls, prompt +
        completion tokens, images, audio seconds, document pages (the quota counters of a day; one
        query, on the admission path). In no particular order."""
        await self.backend.sync()
        rows = await self._query(
            "SELECT chat_id, user_id, model, kind, count(*), coalesce(sum(prompt_tokens + completion_tokens), 0),"
            " coalesce(sum(images), 0), coalesce(sum(seconds), 0), coalesce(sum(pages), 0) FROM usage"
            " WHERE ts >= {ts} AND ts < {ts} GROUP BY 1, 2, 3, 4", [us(start), us(end)])
        return [UsageCount(int(c), int(u), m, k, int(n), int(t), int(i), float(sec), int(pg))
                for c, u, m, k, n, t, i, sec, pg in rows]

    async def recalls_for(self, chat_id: int, reply_message_id: int) -> list[tuple[int, float]]:
        """``(memory_message_id, score)`` of the memories injected into the bot's reply
        ``reply_message_id`` of ``chat_id``, best score first (ties: by message id); [] for none."""
        await self.backend.sync()
        rows = await self._query(
            "SELECT memory_message_id, score FROM recalls WHERE chat_id = ? AND reply_message_id = ?"
            " ORDER BY score DESC, memory_message_id", [chat_id, reply_message_id])
        return [(int(m), float(s)) for m, s in rows]
