"""Memory entries: facts about a member or a chat (the ``memory_entries`` table, issue #27).

A memory entry is one fact — a ``key`` (a short subject: "birthday", "standup time") and a ``value``
("12 March", "10:00 on weekdays") — about a member of a chat (``user_id``) or about the chat itself
(``user_id`` None), with the messages it came from (``sources``), when it was learned, and, once it
stopped being true, when (``until``). A new value for the same ``(chat, user, key)`` **supersedes**
the old one: the old row gets ``until`` and ``superseded_by`` and stays as history; only entries
without ``until`` are current. ``forget`` removes an entry with its history (what a member asks to be
forgotten is gone, not hidden).

Entries belong to one chat, like every memory (docs/design.md §4): a fact a member stated in a group
is that group's, and never read in another chat or in their private chat.

Like ``memory.reminders`` and ``memory.ledger``, one SQL text runs on DuckDB and PostgreSQL
(``sql_transaction``), every write committed before the call returns, the table created at ``open``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from .schema import from_us, to_us
from .sql_domain import SqlBackend, SqlDomainStore

__all__ = ["MAX_KEY_CHARS", "MAX_VALUE_CHARS", "FactStore", "MemoryEntry", "Remembered", "normalize_key"]

MAX_KEY_CHARS = 80
MAX_VALUE_CHARS = 500

_DDL = (
    """
    CREATE TABLE IF NOT EXISTS memory_entries (
        id            BIGINT PRIMARY KEY,       -- per database, increasing
        chat_id       BIGINT NOT NULL,          -- the chat it belongs to (never read in another)
        user_id       BIGINT,                   -- the member it is about; NULL: about the chat
        user_name     VARCHAR,                  -- their name when it was learned
        key           VARCHAR NOT NULL,         -- the subject, normalised (normalize_key)
        label         VARCHAR NOT NULL,         -- the subject as written
        value         VARCHAR NOT NULL,
        sources       VARCHAR NOT NULL,         -- JSON list of the message ids it came from
        origin        VARCHAR NOT NULL,         -- manual (/remember) | extracted (memory_model)
        author_id     BIGINT,                   -- who stated it (/remember) or whose message it came from
        learned_us    BIGINT NOT NULL,          -- µs since the epoch, UTC
        until_us      BIGINT,                   -- when it stopped being true (superseded); NULL: current
        superseded_by BIGINT                    -- the entry that replaced it
    )
    """,
    "CREATE INDEX IF NOT EXISTS memory_entries_chat ON memory_entries (chat_id, user_id, key)",
    # where the background learning (features.fact_learning) stands in each chat: the last message id read
    "CREATE TABLE IF NOT EXISTS fact_cursors (chat_id BIGINT PRIMARY KEY, last_message_id BIGINT NOT NULL)",
)
_COLS = "id, chat_id, user_id, user_name, key, label, value, sources, origin, author_id, learned_us, until_us, superseded_by"
_SPACE = re.compile(r"\s+")


def normalize_key(key: str) -> str:
    """The key a fact is matched by: casefolded, inner whitespace single, trimmed punctuation
    (``"  My Birthday: "`` → ``"my birthday"``)."""
    return _SPACE.sub(" ", key.casefold()).strip(" \t:;,.!?-—\"'«»")[:MAX_KEY_CHARS]


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """One fact. user_id None: about the chat. sources: message ids of ``chat_id``. until: when it
    stopped being true (None: current); superseded_by: the entry that replaced it."""

    id: int
    chat_id: int
    user_id: int | None
    user_name: str | None
    key: str
    label: str
    value: str
    sources: tuple[int, ...]
    origin: str
    author_id: int | None
    learned: datetime
    until: datetime | None = None
    superseded_by: int | None = None

    @property
    def current(self) -> bool:
        return self.until is None


@dataclass(frozen=True, slots=True)
class Remembered:
    """What ``remember`` did: ``"added"`` (new), ``"superseded"`` (``replaced`` is the old entry, now
    history), ``"unchanged"`` (the current entry already says it; its sources were merged)."""

    status: Literal["added", "superseded", "unchanged"]
    entry: MemoryEntry
    replaced: MemoryEntry | None = None


def _row(r: Sequence[Any]) -> MemoryEntry:
    return MemoryEntry(id=int(r[0]), chat_id=int(r[1]), user_id=None if r[2] is None else int(r[2]), user_name=r[3],
                       key=r[4], label=r[5], value=r[6], sources=tuple(int(x) for x in json.loads(r[7] or "[]")), origin=r[8],
                       author_id=None if r[9] is None else int(r[9]), learned=from_us(r[10]),
                       until=None if r[11] is None else from_us(r[11]), superseded_by=None if r[12] is None else int(r[12]))


class FactStore(SqlDomainStore):
    """Memory entries over an open dialogue store's database (``SqlBackend``).

    ``await FactStore(store).open()`` creates the table when missing. clock: the current tz-aware
    UTC time. raises MemoryStoreError when the database fails; ValueError for an empty key or value.
    """

    DOMAIN = "memory entries"
    DDL = _DDL

    def __init__(self, backend: SqlBackend, clock: Any = None) -> None:
        super().__init__(backend)
        self.clock = clock or (lambda: datetime.now(UTC))
        # the chats that have (or had) entries, kept in memory where this process is the database's
        # only writer (DuckDB): a turn in a chat without facts — most of them — costs no query
        self.cache = not getattr(backend, "shared", False)
        self._chats: set[int] | None = None

    async def has_entries(self, chat_id: int) -> bool:
        """Whether ``chat_id`` may have entries (False: it has none; from memory after one read,
        where ``cache``)."""
        if not self.cache:
            return True
        if self._chats is None:
            await self.open()
            (rows,) = await self._tx(("SELECT DISTINCT chat_id FROM memory_entries", []))
            self._chats = {int(r[0]) for r in rows}
        return chat_id in self._chats

    def _note_chat(self, chat_id: int) -> None:
        if self._chats is not None:
            self._chats.add(chat_id)

    async def remember(self, chat_id: int, user_id: int | None, label: str, value: str, *, sources: Sequence[int] = (),
                       origin: str = "manual", author_id: int | None = None, user_name: str | None = None) -> Remembered:
        """Store that ``label`` of ``user_id`` (None: the chat) in ``chat_id`` is ``value``: a new entry,
        or a new value superseding the current one (kept as history), or nothing new when the
        current one says the same (case and spacing aside; its sources gain ``sources``).
        raises ValueError for an empty label or value."""
        label = _SPACE.sub(" ", label).strip()[:MAX_KEY_CHARS]
        value = _SPACE.sub(" ", value).strip()[:MAX_VALUE_CHARS]
        key = normalize_key(label)
        if not key or not value:
            raise ValueError("a memory entry needs a subject and a value")
        await self.open()
        now = to_us(self.clock())
        srcs = sorted({int(s) for s in sources})
        who = "user_id IS NULL" if user_id is None else "user_id = ?"
        who_params: list[Any] = [] if user_id is None else [user_id]
        (current,) = await self._tx((f"SELECT {_COLS} FROM memory_entries WHERE chat_id = ? AND {who} AND key = ?"
                                     " AND until_us IS NULL ORDER BY id DESC LIMIT 1", [chat_id, *who_params, key]))
        old = _row(current[0]) if current else None
        if old is not None and normalize_key(old.value) == normalize_key(value):
            merged = sorted({*old.sources, *srcs})
            if merged != list(old.sources):
                await self._tx(("UPDATE memory_entries SET sources = ? WHERE id = ?", [json.dumps(merged), old.id]))
            return Remembered("unchanged", replace(old, sources=tuple(merged)))
        statements: list[tuple[str, Sequence[Any]]] = [
            (f"INSERT INTO memory_entries ({_COLS}) SELECT COALESCE(MAX(id), 0) + 1, CAST(? AS BIGINT), CAST(? AS BIGINT),"
             " CAST(? AS VARCHAR), CAST(? AS VARCHAR), CAST(? AS VARCHAR), CAST(? AS VARCHAR), CAST(? AS VARCHAR),"
             " CAST(? AS VARCHAR), CAST(? AS BIGINT), CAST(? AS BIGINT), NULL, NULL FROM memory_entries RETURNING id",
             [chat_id, user_id, user_name, key, label, value, json.dumps(srcs), origin, author_id, now]),
        ]
        if old is not None:  # in the same transaction: the new entry supersedes the old one
            statements.append(("UPDATE memory_entries SET until_us = ?, superseded_by = (SELECT MAX(id) FROM memory_entries)"
                               " WHERE id = ? AND until_us IS NULL", [now, old.id]))
        results = await self._tx(*statements, lock="memory_entries")
        new_id = int(results[0][0][0])
        self._note_chat(chat_id)
        entry = MemoryEntry(new_id, chat_id, user_id, user_name, key, label, value, tuple(srcs), origin, author_id, from_us(now))
        if old is None:
            return Remembered("added", entry)
        return Remembered("superseded", entry, replace(old, until=from_us(now), superseded_by=new_id))

    async def current(self, chat_id: int, user_ids: Sequence[int] | None = None, *, chat: bool = True,
                      limit: int = 1000) -> list[MemoryEntry]:
        """The current entries of ``chat_id``: about the chat (``chat``) and about the members
        ``user_ids`` (None: every member), oldest first."""
        if not await self.has_entries(chat_id):
            return []
        await self.open()
        parts, params = [], []
        if chat:
            parts.append("user_id IS NULL")
        if user_ids is None:
            parts.append("user_id IS NOT NULL")
        elif user_ids:
            parts.append(f"user_id IN ({', '.join('?' for _ in user_ids)})")
            params += [int(u) for u in user_ids]
        if not parts:
            return []
        (rows,) = await self._tx((f"SELECT {_COLS} FROM memory_entries WHERE chat_id = ? AND until_us IS NULL"
                                  f" AND ({' OR '.join(parts)}) ORDER BY id LIMIT ?", [chat_id, *params, max(0, limit)]))
        return [_row(r) for r in rows]

    async def history(self, chat_id: int, user_id: int | None, key: str) -> list[MemoryEntry]:
        """Every value ``key`` of ``user_id`` (None: the chat) had in ``chat_id``, oldest first."""
        await self.open()
        who = "user_id IS NULL" if user_id is None else "user_id = ?"
        (rows,) = await self._tx((f"SELECT {_COLS} FROM memory_entries WHERE chat_id = ? AND {who} AND key = ? ORDER BY id",
                                  [chat_id, *([] if user_id is None else [user_id]), normalize_key(key)]))
        return [_row(r) for r in rows]

    async def get(self, chat_id: int, entry_id: int) -> MemoryEntry | None:
        """Entry ``entry_id`` when it belongs to ``chat_id`` (None otherwise: never another chat's)."""
        await self.open()
        (rows,) = await self._tx((f"SELECT {_COLS} FROM memory_entries WHERE chat_id = ? AND id = ?", [chat_id, entry_id]))
        return _row(rows[0]) if rows else None

    async def forget(self, chat_id: int, user_id: int | None, key: str) -> int:
        """Remove ``key`` of ``user_id`` (None: the chat) in ``chat_id``, its history too; how many
        rows went."""
        await self.open()
        who = "user_id IS NULL" if user_id is None else "user_id = ?"
        params = [chat_id, *([] if user_id is None else [user_id]), normalize_key(key)]
        (gone,) = await self._tx((f"DELETE FROM memory_entries WHERE chat_id = ? AND {who} AND key = ? RETURNING id", params))
        return len(gone)

    async def forget_user(self, chat_id: int, user_id: int) -> int:
        """Remove every entry about ``user_id`` in ``chat_id`` (``/forget``: their messages go too)."""
        await self.open()
        (gone,) = await self._tx(("DELETE FROM memory_entries WHERE chat_id = ? AND user_id = ? RETURNING id",
                                  [chat_id, user_id]))
        return len(gone)

    async def forget_chat(self, chat_id: int) -> int:
        """Remove every entry of ``chat_id`` (``/reset all``)."""
        await self.open()
        (gone,) = await self._tx(("DELETE FROM memory_entries WHERE chat_id = ? RETURNING id", [chat_id]))
        return len(gone)

    async def cursor(self, chat_id: int) -> int | None:
        """The last message id of ``chat_id`` the background learning read (None: never looked at)."""
        await self.open()
        (rows,) = await self._tx(("SELECT last_message_id FROM fact_cursors WHERE chat_id = ?", [chat_id]))
        return int(rows[0][0]) if rows else None

    async def set_cursor(self, chat_id: int, last_message_id: int) -> None:
        """Record that the background learning read ``chat_id`` up to ``last_message_id``."""
        await self.open()
        await self._tx(("DELETE FROM fact_cursors WHERE chat_id = ?", [chat_id]),
                       ("INSERT INTO fact_cursors (chat_id, last_message_id) VALUES (?, ?)", [chat_id, last_message_id]))

    async def move_chat(self, old: int, new: int) -> int:
        """Basic group ``old`` became supergroup ``new``: its entries move with it."""
        await self.open()
        (moved,) = await self._tx(("UPDATE memory_entries SET chat_id = ? WHERE chat_id = ? RETURNING id", [new, old]))
        if moved:
            self._note_chat(new)
        return len(moved)

    async def count(self, *, chat_id: int | None = None, user_id: int | None = None) -> int:
        """Current entries of ``chat_id`` (all its entries, the chat's and its members'), or about
        ``user_id`` over every chat (what the tiers' ``entry_limit`` counts)."""
        await self.open()
        if chat_id is not None:
            sql, params = "SELECT count(*) FROM memory_entries WHERE until_us IS NULL AND chat_id = ?", [int(chat_id)]
        else:
            sql, params = "SELECT count(*) FROM memory_entries WHERE until_us IS NULL AND user_id = ?", [int(user_id or 0)]
        (rows,) = await self._tx((sql, params))
        return int(rows[0][0])

    async def search(self, chat_id: int, terms: Sequence[str], limit: int = 10) -> list[MemoryEntry]:
        """Current entries of ``chat_id`` whose subject or value holds any of ``terms`` (casefolded
        words), the most terms first, then the newest."""
        words = [t.casefold() for t in terms if t and len(t) > 1][:16]
        if not words or not await self.has_entries(chat_id):
            return []
        await self.open()
        score = " + ".join("CASE WHEN strpos(lower(label || ' ' || value), ?) > 0 THEN 1 ELSE 0 END" for _ in words)
        (rows,) = await self._tx((f"SELECT {_COLS} FROM (SELECT *, ({score}) AS hits FROM memory_entries"
                                  " WHERE chat_id = ? AND until_us IS NULL) e WHERE hits > 0 ORDER BY hits DESC, id DESC LIMIT ?",
                                  [*words, chat_id, max(0, limit)]))
        return [_row(r) for r in rows]

