"""The DuckDB store's commit of a write-behind batch: every queued row kind as one pyarrow table and
one ``INSERT … SELECT`` (``insert_batch``, in the caller's transaction), or row by row when a batch
failed on bad data (``insert_rows``: a row that can never be stored is dropped and logged).

DuckDB-only by nature (Arrow tables registered on the connection); PostgreSQL's commit is in
``memory.postgres_store``. The statements keep the store's idempotence: ``INSERT OR IGNORE`` on the
keys, the first write of a key in one batch wins, and a usage row an earlier run already stored is
not stored twice when the reserve is replayed (``usage_new``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from .batch import Batch
from .schema import to_us
from .sql_domain import DUCKDB
from .store_base import describe_row
from .types import StoredMessage, UsageRecord

__all__ = ["SYSTEMIC", "insert_batch", "insert_rows"]

log = logging.getLogger(__name__)

R = TypeVar("R")

# Errors of the database itself (not of one row): rows stay queued and are retried.
SYSTEMIC: tuple[type[BaseException], ...] = (
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



def insert_batch(con: duckdb.DuckDBPyConnection, batch: Batch, usage: str = "usage") -> None:
    """Insert every row of ``batch`` on ``con`` (inside the caller's transaction): one Arrow table and
    one statement per kind, then the per-domain statements. ``usage``: ``"usage"``, or ``"usage_new"``
    for rows of an earlier run. raises duckdb.Error (the caller rolls back)."""
    if batch.messages:
        _insert_arrow(con, "messages", _messages_table(batch.messages))
    if batch.usage:
        _insert_arrow(con, usage, _usage_table(batch.usage))
    if batch.recalls:
        _insert_arrow(con, "recalls", _recalls_table(batch.recalls))
    if batch.chats:
        _insert_arrow(con, "chats", _chats_table(batch.chats))
    if batch.deliveries:
        _insert_arrow(con, "deliveries", _deliveries_table(batch.deliveries))
    for sql, params in batch.sql:
        con.execute(sql, params)


def insert_rows(con: duckdb.DuckDBPyConnection, batch: Batch, usage: str = "usage") -> tuple[int, int]:
    """Insert ``batch`` one row per statement (autocommit), dropping (and logging at ERROR) each row
    that can never be stored; ``batch`` is trimmed to what is left when a systemic error (``SYSTEMIC``)
    stops it, which propagates. Returns ``(written, dropped)``."""
    written = dropped = 0
    for attr, sql, params in (
        ("messages", _INSERT_ROW["messages"], _message_params),
        ("usage", _INSERT_ROW[usage], _usage_params),
        ("recalls", _INSERT_ROW["recalls"], lambda r: list(r)),
        ("chats", _INSERT_ROW["chats"], lambda r: list(r)),
        ("deliveries", _INSERT_ROW["deliveries"], lambda r: list(r)),
        ("sql", None, lambda r: r[1]),
    ):
        rows = getattr(batch, attr)
        i = 0
        try:
            while i < len(rows):
                row = rows[i]
                try:
                    con.execute(sql or row[0], params(row))
                    written += 1
                except SYSTEMIC:
                    raise
                except Exception as exc:
                    dropped += 1
                    log.error("dialogue store: dropped an unstorable %s row %s: %s", attr, describe_row(row), exc)
                i += 1
        finally:
            setattr(batch, attr, rows[i:])
    return written, dropped


def _insert_arrow(con: duckdb.DuckDBPyConnection, table: str, tbl: pa.Table) -> None:
    name = f"_kith_{table}_batch"
    con.register(name, tbl)
    try:
        con.execute(_INSERT_SELECT[table].format(src=name))
    finally:
        con.unregister(name)


_USAGE_IS_NEW = (
    " WHERE NOT EXISTS (SELECT 1 FROM usage u WHERE u.ts = s.ts AND u.chat_id = s.chat_id AND u.user_id = s.user_id"
    " AND u.kind = s.kind AND u.model = s.model AND u.prompt_tokens = s.prompt_tokens"
    " AND u.completion_tokens = s.completion_tokens AND u.latency_ms = s.latency_ms)"
)

_INSERT_SELECT = {
    "messages": (
        "INSERT OR IGNORE INTO messages (chat_id, message_id, thread_id, user_id, user_name, role, text, reply_to, date, imported)"
        " SELECT chat_id, message_id, thread_id, user_id, user_name, role, text, reply_to, "
        + DUCKDB.ts_of("date_us")
        + ", imported FROM {src}"
    ),
    "usage": (
        "INSERT INTO usage (ts, chat_id, user_id, kind, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,"
        " seconds, images, pages)"
        " SELECT " + DUCKDB.ts_of("ts_us") + ", chat_id, user_id, kind, model, prompt_tokens, completion_tokens,"
        " cost_usd, latency_ms, seconds, images, pages FROM {src}"
    ),
    "usage_new": (  # rows of an earlier run: one stored already (committed just before a crash) is skipped
        "INSERT INTO usage (ts, chat_id, user_id, kind, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,"
        " seconds, images, pages)"
        " SELECT * FROM (SELECT " + DUCKDB.ts_of("ts_us") + " AS ts, chat_id, user_id, kind, model, prompt_tokens,"
        " completion_tokens, cost_usd, latency_ms, seconds, images, pages FROM {src}) s" + _USAGE_IS_NEW
    ),
    "recalls": (
        "INSERT OR IGNORE INTO recalls (chat_id, reply_message_id, memory_message_id, score)"
        " SELECT chat_id, reply_message_id, memory_message_id, score FROM {src}"
    ),
    "chats": (
        "INSERT INTO chats (chat_id, type, title, settings, created_at)"
        " SELECT chat_id, type, title, '{{}}', " + DUCKDB.ts_of("created_us") + " FROM {src}"
        " ON CONFLICT (chat_id) DO UPDATE SET type = excluded.type, title = coalesce(excluded.title, chats.title)"
    ),
    "deliveries": (
        "INSERT OR IGNORE INTO deliveries (chat_id, message_id, sent_at)"
        " SELECT chat_id, message_id, " + DUCKDB.ts_of("sent_us") + " FROM {src}"
    ),
}

_INSERT_ROW = {
    "messages": (
        "INSERT OR IGNORE INTO messages (chat_id, message_id, thread_id, user_id, user_name, role, text, reply_to, date, imported)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, " + DUCKDB.ts_of("?") + ", ?)"
    ),
    "usage": (
        "INSERT INTO usage (ts, chat_id, user_id, kind, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,"
        " seconds, images, pages) VALUES (" + DUCKDB.ts_of("?") + ", ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    "usage_new": (
        "INSERT INTO usage (ts, chat_id, user_id, kind, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,"
        " seconds, images, pages) SELECT * FROM (SELECT " + DUCKDB.ts_of("?") + " AS ts, ?::BIGINT AS chat_id,"
        " ?::BIGINT AS user_id, ?::VARCHAR AS kind, ?::VARCHAR AS model, ?::BIGINT AS prompt_tokens,"
        " ?::BIGINT AS completion_tokens, ?::DOUBLE AS cost_usd, ?::DOUBLE AS latency_ms, ?::DOUBLE AS seconds,"
        " ?::BIGINT AS images, ?::BIGINT AS pages) s" + _USAGE_IS_NEW
    ),
    "recalls": (
        "INSERT OR IGNORE INTO recalls (chat_id, reply_message_id, memory_message_id, score) VALUES (?, ?, ?, ?)"
    ),
    "chats": (
        "INSERT INTO chats (chat_id, type, title, settings, created_at) VALUES (?, ?, ?, '{}', " + DUCKDB.ts_of("?") + ")"
        " ON CONFLICT (chat_id) DO UPDATE SET type = excluded.type, title = coalesce(excluded.title, chats.title)"
    ),
    "deliveries": (
        "INSERT OR IGNORE INTO deliveries (chat_id, message_id, sent_at) VALUES (?, ?, " + DUCKDB.ts_of("?") + ")"
    ),
}

_I64 = pa.int64()
_STR = pa.string()
_F64 = pa.float64()


def _first_of_each(rows: Iterable[R], key: Callable[[R], Hashable]) -> list[R]:
    """``rows`` without repeats of a key (the first write of a key wins, as the store's contract says),
    in order: ``INSERT OR IGNORE`` of one statement would otherwise see a key twice."""
    seen: set[Hashable] = set()
    out: list[R] = []
    for r in rows:
        k = key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def _messages_table(msgs: list[StoredMessage]) -> pa.Table:
    rows = _first_of_each(msgs, lambda m: (m.chat_id, m.message_id))
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
            "imported": pa.array([m.imported for m in rows], pa.bool_()),
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
    uniq = _first_of_each(rows, lambda r: r[:3])
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


def _deliveries_table(rows: list[tuple[int, int, int]]) -> pa.Table:
    first = _first_of_each(rows, lambda r: r[:2])  # the first: when the reply began to be sent
    return pa.table(
        {
            "chat_id": pa.array([r[0] for r in first], _I64),
            "message_id": pa.array([r[1] for r in first], _I64),
            "sent_us": pa.array([r[2] for r in first], _I64),
        }
    )


def _message_params(m: StoredMessage) -> list[Any]:
    return [m.chat_id, m.message_id, m.thread_id, m.user_id, m.user_name, m.role, m.text, m.reply_to, to_us(m.date), m.imported]


def _usage_params(u: UsageRecord) -> list[Any]:
    return [to_us(u.ts), u.chat_id, u.user_id, u.kind, u.model, u.prompt_tokens, u.completion_tokens, u.cost_usd, u.latency_ms,
            u.seconds, u.images, u.pages]

