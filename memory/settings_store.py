"""Chats' and members' settings, and the list of chats: the ``settings`` JSON objects of the dialogue
store's ``chats`` and ``users`` tables (``/settings``, ``/model``, ``/role``, a group's name, its
plugins…), which ``actors.settings`` loads into frozen models.

One SQL text per statement for DuckDB and PostgreSQL (``memory.sql_domain``): a settings object is
written as JSON text through ``CAST(? AS <dialect.json>)`` (DuckDB's ``JSON``, PostgreSQL's
``JSONB``) and read back as a dict (DuckDB returns the text, psycopg the decoded object). Every
write commits before it returns. The tables come with the dialogue store's schema (version 1); a
chat's row is also written by the engines' queued ``upsert_chat`` (type and title, never settings)
and moved by their ``migrate_chat``.

Where this process is the database's only writer (a DuckDB file: the backend is not ``shared``)
the non-empty settings are kept in memory, loaded on first use and kept by every write (and dropped
by ``forget`` after an engine's ``migrate_chat`` moved some): a new chat's first turn then reads
nothing from the database. A read from DuckDB is a worker-thread round trip that waits behind the
write-behind commits and the indexer (``bench turn_overhead --quick``: a member's settings on their
first answer took p50 3.6 ms / p99 34 ms that way, half of an answered turn's overhead, against
0.004 ms from memory). A PostgreSQL store (``shared``: other bots and CLI calls write too) reads
every time.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from .sql_domain import SqlBackend, SqlDomainStore, no_nul, ts, us
from .types import ChatInfo

__all__ = ["SettingsStore", "settings_json"]


def _no_nul(value: Any) -> Any:
    """``value`` (decoded JSON) with U+0000 in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return no_nul(value)
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    return value


def settings_json(settings: dict[str, Any]) -> str:
    """``settings`` as JSON text for a ``settings`` column; U+0000 in a string (which Telegram never
    sends; PostgreSQL's ``jsonb`` cannot hold it) becomes U+FFFD on both engines. raises TypeError
    for a non-dict or a value JSON cannot hold."""
    if not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict, not {type(settings).__name__}")
    doc = json.dumps(settings, ensure_ascii=False)
    return json.dumps(_no_nul(settings), ensure_ascii=False) if "\\u0000" in doc else doc


def _settings(value: object) -> dict[str, Any]:
    """A ``settings`` column as read by the driver (DuckDB: JSON text; psycopg: the decoded object;
    NULL) as a dict ({} for NULL or a non-object)."""
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, dict) else {}


def _text(value: object) -> str:
    """A ``settings`` column as read by the driver as JSON text (kept in memory: each read decodes
    its own dict, so a caller's change of one never reaches another)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class SettingsStore(SqlDomainStore):
    """The settings objects of chats (by chat id) and members (by user id), and the list of chats.

    clock: the current tz-aware UTC time (``created_at`` of a row a write creates). on_chat_row:
    called with a chat id after a write that may have created its row (the engines' ``knows_chat``
    hint). cache: keep the settings in memory (see the module docstring); default: unless the
    backend says it is ``shared``. raises MemoryStoreError when the database fails or the store is
    not open."""

    DOMAIN = "settings"

    def __init__(self, backend: SqlBackend, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_chat_row: Callable[[int], None] = lambda chat_id: None, cache: bool | None = None) -> None:
        super().__init__(backend)
        self._clock = clock
        self._on_chat_row = on_chat_row
        self.cache = (not getattr(backend, "shared", False)) if cache is None else cache
        self._lock = anyio.Lock()  # a load and the writes, so a load never undoes a newer write
        # where ``cache``: chat_id / user_id -> the JSON text of their non-empty settings; None: not loaded
        self._chats: dict[int, str] | None = None
        self._users: dict[int, str] | None = None

    def forget(self) -> None:
        """Drop the settings kept in memory (the next read loads them again): for a write to the
        tables outside this store (an engine's ``migrate_chat``)."""
        self._chats = self._users = None

    async def _loaded(self) -> tuple[dict[int, str], dict[int, str]]:
        """The kept settings of chats and users, loaded once (two queries) where ``cache``."""
        if self._chats is None or self._users is None:
            async with self._lock:
                if self._chats is None or self._users is None:
                    non_empty = " WHERE CAST(settings AS VARCHAR) NOT IN ('{}', 'null')"
                    chats = await self._query("SELECT chat_id, settings FROM chats" + non_empty)
                    users = await self._query("SELECT user_id, settings FROM users" + non_empty)
                    self._chats = {k: _text(v) for k, v in chats}
                    self._users = {k: _text(v) for k, v in users}
        return self._chats, self._users

    async def _kept(self, which: int, key: int) -> dict[str, Any]:
        doc = (await self._loaded())[which].get(key)
        return json.loads(doc) if doc is not None else {}

    async def _write(self, which: int, key: int, doc: str | None, sql: str, params: list[Any]) -> None:
        """Run the write ``sql``, then keep ``doc`` (the JSON text of non-empty settings; None for
        empty ones) by ``key`` in the chats (0) or users (1) kept, when they are loaded."""
        if not self.cache:
            await self._query(sql, params)
            return
        async with self._lock:
            await self._query(sql, params)
            if self._chats is not None and self._users is not None:  # else the next read loads them
                kept = (self._chats, self._users)[which]
                if doc is not None:
                    kept[key] = doc
                else:
                    kept.pop(key, None)

    def _json(self) -> str:
        """A ``?`` parameter of JSON text as the engine's JSON type."""
        return f"CAST(? AS {self.backend.dialect.json})"

    async def chat(self, chat_id: int) -> dict[str, Any]:
        """The chat's settings object ({} when the chat or its settings are unknown)."""
        if self.cache:
            return await self._kept(0, chat_id)
        rows = await self._query("SELECT settings FROM chats WHERE chat_id = ?", [chat_id])
        return _settings(rows[0][0]) if rows else {}

    async def set_chat(self, chat_id: int, settings: dict[str, Any]) -> None:
        """Replace the chat's settings with ``settings`` (a JSON object; see ``settings_json``).
        Creates the chat's row (type ``unknown``, no title) when there is none; its type and title
        are kept. raises TypeError for a non-dict or non-JSON value."""
        doc = settings_json(settings)
        await self._write(0, chat_id, doc if settings else None,
            f"INSERT INTO chats (chat_id, type, title, settings, created_at) VALUES (?, 'unknown', NULL, {self._json()}, {{ts}})"
            " ON CONFLICT (chat_id) DO UPDATE SET settings = excluded.settings",
            [chat_id, doc, us(self._clock())])
        self._on_chat_row(chat_id)

    async def user(self, user_id: int) -> dict[str, Any]:
        """The member's settings object ({} when unknown), shared by all their chats."""
        if self.cache:
            return await self._kept(1, user_id)
        rows = await self._query("SELECT settings FROM users WHERE user_id = ?", [user_id])
        return _settings(rows[0][0]) if rows else {}

    async def set_user(self, user_id: int, settings: dict[str, Any], *, username: str | None = None,
                       name: str | None = None) -> None:
        """Replace the member's settings (a JSON object; see ``settings_json``); also their
        ``username``/``name`` when given (None keeps the stored one). Creates the user's row when
        there is none. raises TypeError for a non-dict or non-JSON value."""
        doc = settings_json(settings)
        await self._write(1, user_id, doc if settings else None,
            f"INSERT INTO users (user_id, username, name, settings, created_at) VALUES (?, ?, ?, {self._json()}, {{ts}})"
            " ON CONFLICT (user_id) DO UPDATE SET settings = excluded.settings,"
            " username = coalesce(excluded.username, users.username), name = coalesce(excluded.name, users.name)",
            [user_id, no_nul(username), no_nul(name), doc, us(self._clock())])

    async def chats(self) -> list[ChatInfo]:
        """Every chat with a chat row or stored messages (queued ones committed first), by chat id:
        its type (``unknown`` without a row), title, message count and first/last message dates."""
        await self.backend.sync()
        rows = await self._query(
            "WITH mc AS (SELECT chat_id, count(*) AS n, min(date) AS first_date, max(date) AS last_date"
            " FROM messages GROUP BY chat_id)"
            " SELECT coalesce(c.chat_id, mc.chat_id), coalesce(c.type, 'unknown'), c.title, coalesce(mc.n, 0),"
            f" {self._us('mc.first_date')}, {self._us('mc.last_date')}"
            " FROM chats c FULL OUTER JOIN mc ON c.chat_id = mc.chat_id ORDER BY 1")
        return [ChatInfo(r[0], r[1], r[2], int(r[3]), ts(r[4]), ts(r[5])) for r in rows]
